"""The programs and files the tests use from the machine, each with the Debian package that
provides it.  scripts/test installs every one (tests/unit/test_tools.py checks that it names
each package); a test that needs one is marked with its `needed` marker or calls `require()`.
Either skips where the tool is missing, and in CI that skip is a failure (tests/conftest.py).
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from whaletopd import keyboard, rfbauth

# nginx and useradd live in sbin, which a user's PATH may lack.
_PATH = f"{os.environ.get('PATH', '')}:/usr/local/sbin:/usr/sbin:/sbin"
_LIBDIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib")


@dataclass(frozen=True)
class Tool:
    name: str
    package: str  # Debian's; "a|b": the first the machine's Debian has
    path: str | None  # where it is here; None: missing

    @property
    def reason(self) -> str:
        return (f"{self.name} is missing (Debian package {self.package}, which scripts/test "
                "installs)")

    @property
    def needed(self) -> pytest.MarkDecorator:
        """Marks a test (or a module, as pytestmark) that cannot run without it."""
        return pytest.mark.skipif(self.path is None, reason=self.reason)

    def require(self) -> str:
        """Its path, or the test skips here (fails in CI)."""
        if self.path is None:
            pytest.skip(self.reason)
        return self.path


def command(name: str, package: str) -> Tool:
    return Tool(name, package, shutil.which(name, path=_PATH))


def file(path: Path, package: str) -> Tool:
    return Tool(str(path), package, str(path) if path.exists() else None)


def shared_library(name: str, package: str) -> Tool:
    return Tool(f"lib{name}", package, ctypes.util.find_library(name))


def _first_file(name: str, package: str) -> Tool:
    found = [Path(d, name) for d in _LIBDIRS if Path(d, name).exists()]
    return Tool(name, package, str(found[0]) if found else None)


def _libcrypto_des() -> Tool:
    """VNC logins (probes, the relay) encrypt with OpenSSL's DES_* (in libcrypto.so.3)."""
    name = "libcrypto.so.3 with DES_*"
    return Tool(name, "libssl3t64|libssl3", name if rfbauth.libcrypto_des() else None)


NGINX = command("nginx", "nginx")
VNCPASSWD = command("vncpasswd", "tigervnc-tools")
PROMTOOL = command("promtool", "prometheus")
NODE = command("node", "nodejs")
# Debian 13's.  Debian 12 has only kubernetes-client 1.20, whose kustomize cannot render
# deploy/kubernetes: there, Kubernetes' own kubectl package.
KUBECTL = command("kubectl", "kubectl")
USERADD = command("useradd", "passwd")
GROUPADD = command("groupadd", "passwd")
XKB_DATA = file(keyboard.XKB_RULES, "xkb-data")
LIBOPUS = shared_library("opus", "libopus0")
NSS_WRAPPER = _first_file("libnss_wrapper.so", "libnss-wrapper")
LIBCRYPTO_DES = _libcrypto_des()
XAUTH = command("xauth", "xauth")
XVNC = command("Xvnc", "tigervnc-standalone-server")
XDPYINFO = command("xdpyinfo", "x11-utils")
HTPASSWD = command("htpasswd", "apache2-utils")
# e2e
CHROMIUM = command("chromium", "chromium")
SLOWHTTPTEST = command("slowhttptest", "slowhttptest")
TESTSSL = command("testssl", "testssl.sh")
SS = command("ss", "iproute2")

ALL = (NGINX, VNCPASSWD, PROMTOOL, NODE, KUBECTL, USERADD, GROUPADD, XKB_DATA, LIBOPUS,
       NSS_WRAPPER, LIBCRYPTO_DES, XAUTH, XVNC, XDPYINFO, HTPASSWD, CHROMIUM, SLOWHTTPTEST,
       TESTSSL, SS)
