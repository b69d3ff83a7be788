"""The TLS issue as a user meets it: HTTPS with the right certificate, plain HTTP refused,
a certificate rotated under a live session, expiry, and every bad file refused clearly."""

from __future__ import annotations

import os
import ssl
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bench import certgen
from tests.e2e.conftest import Container, docker

pytestmark = pytest.mark.e2e


def _https_page() -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen("https://127.0.0.1:8080/vnc.html", context=context,
                                timeout=10) as resp:
        return str(resp.read().decode())


def _plain_http_refused() -> bool:
    try:
        urllib.request.urlopen("http://127.0.0.1:8080/vnc.html", timeout=10)
    except (urllib.error.URLError, ConnectionError, OSError):
        return True
    return False


def _wait_served(fp: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if certgen.served_fingerprint() == fp:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"certificate {fp[:16]} never served")


@pytest.fixture
def certdir(tmp_path: Path) -> Path:
    path = tmp_path / "certs"
    path.mkdir()
    return path


def test_self_signed_is_served_kept_across_restart_and_published(desktop):
    c = desktop("--enable-tls")
    c.wait_status("HEALTHY")
    public = (c.state_dir / "pub_ssl.pem").read_bytes()
    assert b"PRIVATE KEY" not in public
    cert = x509.load_pem_x509_certificate(public)
    assert certgen.served_fingerprint() == certgen.fingerprint(cert)
    assert "noVNC" in _https_page()
    assert _plain_http_refused()
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=364) < lifetime < timedelta(days=367)
    docker("restart", "-t", "10", c.name)
    c.wait_status("HEALTHY")
    _wait_served(certgen.fingerprint(cert))  # the same certificate: browsers keep trusting it


def test_user_certificate_rotates_live_without_touching_the_session(desktop, certdir):
    first, key = certgen.make()
    (certdir / "tls.pem").write_bytes(certgen.pem(first, key))
    c = desktop("--tls-certificate=/certs/tls.pem", volumes=(f"{certdir}:/certs:ro",))
    c.wait_status("HEALTHY")
    assert certgen.served_fingerprint() == certgen.fingerprint(first)
    xvnc = c.status_json()["children"]["xvnc"]["pid"]
    # The decrypted key lives only where websockify reads it, for the desktop user only.
    mode = c.exec("stat", "-c", "%a %U", "/run/whaletop/websockify.pem").stdout.split()
    assert mode == ["600", "user"]

    second, key2 = certgen.make(cn="renewed.test")
    certgen.write_atomically(certdir / "tls.pem", certgen.pem(second, key2))
    _wait_served(certgen.fingerprint(second))
    c.wait_status("HEALTHY")
    assert c.status_json()["children"]["xvnc"]["pid"] == xvnc, "the X session was not touched"
    assert "RELOADING_TLS" in c.transitions()
    assert c.status_json()["tls"]["fingerprint_sha256"] == certgen.fingerprint(second)

    # A broken replacement is refused; the one in service stays.
    certgen.write_atomically(certdir / "tls.pem", b"not a certificate at all\n")
    deadline = time.monotonic() + 20
    refused = None
    while refused is None:
        assert time.monotonic() < deadline, "the broken file was not refused"
        time.sleep(0.05)
        refused = next((e for e in c.log_lines() if e.get("event") == "certificate_refused"),
                       None)
    assert "/certs/tls.pem" in refused["reason"]
    assert certgen.served_fingerprint() == certgen.fingerprint(second)
    assert c.status() == "HEALTHY\n"


def test_kubernetes_style_symlink_swap_is_seen(desktop, certdir):
    """The kubelet's update: files live in a timestamped folder behind `..data`."""
    first, key = certgen.make()
    (certdir / "..2026_01").mkdir()
    (certdir / "..2026_01" / "tls.pem").write_bytes(certgen.pem(first, key))
    os.symlink("..2026_01", certdir / "..data")
    os.symlink("..data/tls.pem", certdir / "tls.pem")
    c = desktop("--tls-certificate=/certs/tls.pem", volumes=(f"{certdir}:/certs",))
    c.wait_status("HEALTHY")
    assert certgen.served_fingerprint() == certgen.fingerprint(first)
    second, key2 = certgen.make(cn="rotated.test")
    (certdir / "..2026_02").mkdir()
    (certdir / "..2026_02" / "tls.pem").write_bytes(certgen.pem(second, key2))
    os.symlink("..2026_02", certdir / "..data_tmp")
    os.replace(certdir / "..data_tmp", certdir / "..data")
    _wait_served(certgen.fingerprint(second))
    c.wait_status("HEALTHY")


def test_short_lived_certificate_expires_into_unhealthy(desktop, certdir):
    cert, key = certgen.make(not_before=datetime.now(UTC) - timedelta(seconds=5),
                             lifetime=timedelta(seconds=20))
    (certdir / "tls.pem").write_bytes(certgen.pem(cert, key))
    c = desktop("--tls-certificate=/certs/tls.pem", volumes=(f"{certdir}:/certs:ro",))
    c.wait_status("HEALTHY")
    warned = sorted(e["within_days"] for e in c.log_lines()
                    if e.get("event") == "certificate_expires_soon")
    assert warned == [1, 7, 30], "already inside every warning window at start"
    assert c.wait_exit(timeout=60) == 3
    assert c.status() == "UNHEALTHY\n"
    assert c.status_json()["reason"] == "certificate expired"


def _bad_files(certdir: Path) -> dict[str, tuple[str, str, dict[str, str]]]:
    """name -> (file in /certs, expected message part, extra env)."""
    now = datetime.now(UTC)
    good, key = certgen.make()
    _, other_key = certgen.make()
    expired, ekey = certgen.make(not_before=now - timedelta(days=30), lifetime=timedelta(days=1))
    future, fkey = certgen.make(not_before=now + timedelta(days=2))
    files = {
        "garbage.pem": b"hello, this is not PEM\n",
        "der.pem": good.public_bytes(serialization.Encoding.DER),
        "nokey.pem": certgen.pem(good, None),
        "wrongkey.pem": certgen.pem(good, None) + certgen.key_pem(other_key),
        "expired.pem": certgen.pem(expired, ekey),
        "future.pem": certgen.pem(future, fkey),
        "encrypted.pem": certgen.pem(good, key, password=b"hunter22"),
    }
    for name, data in files.items():
        (certdir / name).write_bytes(data)
    return {
        "missing": ("/certs/absent.pem", "absent.pem", {}),
        "garbage": ("/certs/garbage.pem", "PEM", {}),
        "der": ("/certs/der.pem", "DER", {}),
        "no key": ("/certs/nokey.pem", "private key", {}),
        "wrong key": ("/certs/wrongkey.pem", "match", {}),
        "expired": ("/certs/expired.pem", "expired", {}),
        "not yet valid": ("/certs/future.pem", "not yet valid", {}),
        "encrypted, no password": ("/certs/encrypted.pem", "TLS_KEY_PASSWORD", {}),
        "encrypted, wrong password": ("/certs/encrypted.pem", "password",
                                      {"TLS_KEY_PASSWORD": "wrong"}),
    }


def test_each_bad_certificate_fails_with_its_message(desktop, certdir):
    for case, (path, message, env) in _bad_files(certdir).items():
        c: Container = desktop(f"--tls-certificate={path}", env=env,
                               volumes=(f"{certdir}:/certs:ro",))
        assert c.wait_exit() == 2, case
        assert c.status() == "FAILED\n", case
        errors = [e for e in c.log_lines() if e.get("level") == "error"]
        assert len(errors) == 1, (case, errors)
        assert path in errors[0]["reason"], (case, errors[0])
        assert message.lower() in errors[0]["reason"].lower(), (case, errors[0])
        assert not any(e.get("source") == "websockify" for e in c.log_lines()), case
        assert not (c.state_dir / "vnc_passwd").exists(), (case, "nothing else was touched")
        docker("rm", "-f", c.name)


def test_encrypted_key_with_password_is_served(desktop, certdir):
    cert, key = certgen.make()
    (certdir / "enc.pem").write_bytes(certgen.pem(cert, key, password=b"hunter22"))
    c = desktop("--tls-certificate=/certs/enc.pem", env={"TLS_KEY_PASSWORD": "hunter22"},
                volumes=(f"{certdir}:/certs:ro",))
    c.wait_status("HEALTHY")
    assert certgen.served_fingerprint() == certgen.fingerprint(cert)
    assert "hunter22" not in c.logs()
