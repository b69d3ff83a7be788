"""The TLS issue as a user meets it: HTTPS with the right certificate, plain HTTP sent on
to HTTPS, a certificate rotated under a live session (nginx reloads: the session stays),
expiry, and every bad file refused clearly."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench import certgen
from tests import tools
from tests.e2e import vnc
from tests.e2e.conftest import Container, docker
from tests.unit.test_tls import IAN_OID, RSA_SHA1, SAN_OID, _resigned

pytestmark = pytest.mark.e2e

# Where nginx reads the certificate and its decrypted key (paths.tls_pem).
SERVED_KEY = "/dev/shm/whaletop-tls/tls.pem"


def _https_page() -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen("https://127.0.0.1:8080/vnc.html", context=context,
                                timeout=10) as resp:
        return str(resp.read().decode())


def _plain_http_answer(path: str) -> tuple[int, str | None]:
    """Plain HTTP to the HTTPS port: the status and the Location nginx answers with."""
    conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Location")
    finally:
        conn.close()


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
    # A browser sent to http:// is sent on to https://, the same page and query; nothing
    # is served in plain text.
    assert _plain_http_answer("/vnc.html?autoconnect=true") == (
        301, "https://127.0.0.1:8080/vnc.html?autoconnect=true")
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
    before = c.status_json()["children"]
    # The decrypted key lives only where nginx's master reads it: on the tmpfs (never in
    # the container's writable layer), root's, mode 0600, in a folder of mode 0700; the
    # desktop user (who runs everything in the desktop) cannot read it.
    mode = c.exec("stat", "-c", "%a %U", SERVED_KEY, SERVED_KEY.rsplit("/", 1)[0]).stdout
    assert mode.split() == ["600", "root", "700", "root"]
    assert c.exec("cat", SERVED_KEY, user="user", check=False).returncode != 0
    assert c.exec("find", "/run", "-name", "*.pem").stdout.split() == []
    assert c.exec("stat", "-f", "-c", "%T", "/dev/shm").stdout.strip() == "tmpfs"
    # A browser's session, connected before the rotation.
    session = vnc.WebVNC(8080, c.password(), tls=True)
    assert session.certificate == certgen.fingerprint(first)

    second, key2 = certgen.make(cn="renewed.test")
    certgen.write_atomically(certdir / "tls.pem", certgen.pem(second, key2))
    _wait_served(certgen.fingerprint(second))
    c.wait_status("HEALTHY")
    transitions = c.transitions()
    assert transitions[transitions.index("RELOADING_TLS"):] == ["RELOADING_TLS", "HEALTHY"]
    assert c.status_json()["tls"]["fingerprint_sha256"] == certgen.fingerprint(second)
    # nginx reloaded in place (SIGHUP): no child replaced, the connected session still
    # works, and a new one gets the new certificate.
    after = c.status_json()["children"]
    assert {n: i["pid"] for n, i in after.items()} == {n: i["pid"] for n, i in before.items()}
    assert len(session.framebuffer_update()) == 4
    session.close()
    renewed = vnc.WebVNC(8080, c.password(), tls=True)
    assert renewed.certificate == certgen.fingerprint(second)
    renewed.close()
    assert c.status_json()["restarts"]["nginx"]["used"] == 0

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

    # Stopped: the key was removed, and nothing in the writable layer ever held it.
    docker("stop", "-t", "10", c.name)
    assert c.wait_exit() == 0
    changed = docker("diff", c.name).stdout.split()
    assert not [p for p in changed if p.endswith(".pem")], changed


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


def _rsa_pem(cert: x509.Certificate, key: rsa.RSAPrivateKey) -> bytes:
    return (cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))


def _rsa_cert(key: rsa.RSAPrivateKey, *extensions: x509.ExtensionType) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "desktop.test")])
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(days=1))
               .not_valid_after(now + timedelta(days=30)))
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, hashes.SHA256())


def _duplicated_extension_pem() -> bytes:
    """subjectAltName twice (an issuerAltName's OID changed, then signed again)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    names = [x509.DNSName("desktop.test")]
    two = _rsa_cert(key, x509.SubjectAlternativeName(names), x509.IssuerAlternativeName(names))
    body = two.tbs_certificate_bytes.replace(IAN_OID, SAN_OID)
    return _rsa_pem(_resigned(two, key, tbs=body), key)


def _sha1_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _resigned(_rsa_cert(key), key, algorithm=RSA_SHA1, digest=hashes.SHA1())
    return _rsa_pem(cert, key)


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
        # Both were served before: the first crashed the daemon (exit 1), the second was
        # HEALTHY although browsers refuse it.
        "twice.pem": _duplicated_extension_pem(),
        "sha1.pem": _sha1_pem(),
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
        "duplicated extension": ("/certs/twice.pem", "extension twice", {}),
        "SHA-1 signature": ("/certs/sha1.pem", "sha1WithRSAEncryption", {}),
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
        assert not any(e.get("source") in ("websockify", "nginx") for e in c.log_lines()), case
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


# What testssl.sh may find and still pass: BREACH names any page served compressed (it
# asks only "/", noVNC's static page, which holds no secret).
TESTSSL_ACCEPTED = {"BREACH"}
TESTSSL_FLAGS = {"LOW", "MEDIUM", "HIGH", "CRITICAL", "WARN"}


def test_testssl_flags_nothing_but_breach_on_static_files(desktop, tmp_path):
    """Debian's testssl.sh, as an auditor runs it: protocols, cipher categories and
    every vulnerability check, against 127.0.0.1 only (no DNS, no phoning out).  Only
    Mozilla's intermediate suites are offered: no CBC (LUCKY13), no RSA key exchange."""
    testssl = tools.TESTSSL.require()
    c = desktop("--enable-tls")
    c.wait_status("HEALTHY")
    report = tmp_path / "testssl.json"
    run = subprocess.run(
        [testssl, "--quiet", "--warnings", "off", "--color", "0", "--nodns", "none",
         "--protocols", "--standard", "--vulnerable", "--jsonfile", str(report),
         "127.0.0.1:8080"],
        capture_output=True, text=True, timeout=600, check=False)
    assert report.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    findings = [f for f in json.loads(report.read_text())
                if f.get("ip", "").startswith("127.0.0.1")]  # not testssl's own openssl
    by_id = {f["id"]: f for f in findings}
    for checked in ("TLS1_2", "TLS1_3", "cipherlist_AVERAGE", "LUCKY13", "BREACH"):
        assert checked in by_id, f"testssl.sh did not check {checked}: {run.stdout[-3000:]}"
    assert by_id["TLS1_1"]["finding"] == "not offered"
    flagged = [f"{f['severity']} {f['id']}: {f['finding']}" for f in findings
               if f.get("severity") in TESTSSL_FLAGS and f["id"] not in TESTSSL_ACCEPTED]
    assert flagged == [], "\n".join(flagged)
