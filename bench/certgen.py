"""Certificates for the tests and the benchmarks, made with cryptography alone.

Independent of whaletopd.tls on purpose: the daemon's own generator and validator are
what the tests check, so the certificates they are checked with must not come from them.

The tests import it (`from bench import certgen`).  The benchmark runs it inside the
container with the image's python3-cryptography, since the host may have none:

    python3 certgen.py OUT COUNT   # OUT/cert0.pem ... (certificate + key, 0600), and
                                   # prints {"cert0.pem": SHA-256 fingerprint, ...}
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
import ssl
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make(not_before: datetime | None = None, lifetime: timedelta = timedelta(days=90),
         key: ec.EllipticCurvePrivateKey | None = None, cn: str = "desktop.test",
         names: Sequence[str] = ()) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed EC P-256 certificate for `cn` and its key.  subjectAltName holds
    `names` (host names or IP addresses), or `cn` without them.  It starts a minute ago
    unless told, so a clock a little behind still accepts it."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    start = not_before or datetime.now(UTC) - timedelta(minutes=1)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    alt = x509.SubjectAlternativeName([_general_name(n) for n in (names or [cn])])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + lifetime)
            .add_extension(alt, critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password
        else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption)


def pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None,
        password: bytes | None = None) -> bytes:
    """The combined PEM whaletopd's --tls-certificate takes: certificate, then key."""
    out = cert.public_bytes(serialization.Encoding.PEM)
    return out + key_pem(key, password) if key is not None else out


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def write_atomically(path: Path, data: bytes) -> None:
    """As a deployment rotates a certificate: the watcher never sees half a file."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_bytes(data)
    tmp.replace(path)


def served_fingerprint(port: int = 8080) -> str:
    """SHA-256 of the certificate the server on 127.0.0.1:port presents."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw) as tls_sock:
        der = tls_sock.getpeercert(binary_form=True) or b""
    return hashlib.sha256(der).hexdigest()


def write_pool(out: Path, count: int) -> dict[str, str]:
    """The benchmark's certificates for 127.0.0.1: OUT/cert{i}.pem (0600); their
    fingerprints by file name."""
    now = datetime.now(UTC)
    prints = {}
    for i in range(count):
        cert, key = make(not_before=now - timedelta(minutes=5),
                         lifetime=timedelta(days=90, minutes=5),
                         cn=f"bench-{i}.localhost", names=("localhost", "127.0.0.1"))
        path = out / f"cert{i}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem(cert, key))
        os.chmod(path, 0o600)  # also when the file was there with another mode
        prints[path.name] = fingerprint(cert)
    return prints


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: certgen.py OUT COUNT", file=sys.stderr)
        return 2
    print(json.dumps(write_pool(Path(argv[0]), int(argv[1]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
