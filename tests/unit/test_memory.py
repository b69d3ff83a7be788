"""What the daemon loads is what it costs (RSS): cryptography (~7 MiB) only with TLS,
VNC authentication's DES through libcrypto, which the daemon has loaded already, and no
psutil (~1 MiB, for one pid_exists)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from whaletopd import rfbauth, tls, web

from .. import tools

DAEMON = ("from whaletopd import signals, config, logs, loop, desktop, cli; "
          "from whaletopd import rfbauth; rfbauth.vnc_des_response('s3cretpw', bytes(16)); "
          # what the daemon runs of the web front without TLS
          "from whaletopd.web import WebFront; from whaletopd.paths import Paths; "
          "from whaletopd.events import EventQueue; from whaletopd.deadlines import Deadlines; "
          "w = WebFront(config.Config(), Paths(), EventQueue(), Deadlines()); "
          "w.validate(); w.install(); ")


def _loaded(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + "import sys; print("
                          "' '.join(m for m in sys.modules if m.split('.')[0] in "
                          "('cryptography', 'bcrypt', 'psutil', 'whaletopd')))"],
                         capture_output=True, text=True, check=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    return out.stdout.split()


def test_the_daemon_without_tls_loads_no_cryptography() -> None:
    loaded = _loaded(DAEMON)
    assert "whaletopd.desktop" in loaded
    assert "whaletopd.tls" not in loaded
    assert not [m for m in loaded if m.split(".")[0] in ("cryptography", "bcrypt", "psutil")]


def test_tls_loads_it() -> None:
    assert "cryptography.x509" in _loaded("from whaletopd import web, tls; ")


@tools.LIBCRYPTO_DES.needed
@pytest.mark.parametrize("password", ["s3cretpw", "abc", "abcdefghIGNORED", "", "\xe9t\xe9"])
def test_des_through_libcrypto_is_cryptographys(password: str) -> None:
    challenge = os.urandom(16)
    assert rfbauth.vnc_des_response(password, challenge) == (
        rfbauth.vnc_des_response_cryptography(password, challenge))


def test_the_web_fronts_defaults_are_tls_own() -> None:
    assert web.SELF_SIGNED_DAYS == tls.SELF_SIGNED_DAYS
    assert web.RENEW_BEFORE == tls.RENEW_BEFORE
