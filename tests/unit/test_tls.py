"""TLS files: a user's certificate checked with one clear line per problem, the self-signed
certificate kept and renewed, the copy nginx serves, and the expiry warning schedule.

Every certificate is made here with cryptography, at a fixed `now`; nothing depends on the
clock or on how long anything takes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import stat
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from whaletopd import certs, files, tls
from whaletopd.tls import TLSError

from .helpers import WAIT

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
PASSWORD = b"correct horse"
Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PKCS8 = serialization.PrivateFormat.PKCS8
TRADITIONAL = serialization.PrivateFormat.TraditionalOpenSSL


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(key: Key, cn: str = "desk.example", *, not_before: datetime = NOW - DAY,
          not_after: datetime = NOW + 90 * DAY, issuer: tuple[str, Key] | None = None,
          ca: bool = False) -> x509.Certificate:
    issuer_cn, signer = issuer if issuer is not None else (cn, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(issuer_cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer, algorithm)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Key, fmt: serialization.PrivateFormat = PKCS8,
             password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption() if password is None
        else serialization.BestAvailableEncryption(password))
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption)


def _write(tmp_path: Path, *parts: bytes, name: str = "cert.pem") -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join(parts))
    return path


def _spki(key: Key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _fails(path: Path, fragment: str, password: bytes | None = None) -> str:
    """load() fails with one line that starts with the path and names the problem."""
    with pytest.raises(TLSError) as info:
        tls.load(path, password, now=NOW)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    assert fragment in message
    assert info.value.path == path
    return info.value.problem


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def other_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def good(ec_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return _cert(ec_key)


# -- loading a good file ------------------------------------------------------------------

def test_load_reads_certificate_and_key(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey,
                                        good: x509.Certificate) -> None:
    path = _write(tmp_path, _cert_pem(good), _key_pem(ec_key))
    bundle = tls.load(path, now=NOW)
    assert bundle.cert == good
    assert bundle.source == path
    assert bundle.chain == ()
    assert _spki(bundle.key) == _spki(ec_key)
    assert bundle.fingerprint == good.fingerprint(hashes.SHA256()).hex()
    assert len(bundle.fingerprint) == 64
    assert bundle.fingerprint == bundle.fingerprint.lower()
    assert ":" not in bundle.fingerprint
    assert bundle.not_before == NOW - DAY
    assert bundle.not_after == NOW + 90 * DAY
    assert bundle.not_after.tzinfo is not None
    assert bundle.subject_names() == ["desk.example"]


def test_load_accepts_the_key_before_the_certificate(
        tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey, good: x509.Certificate) -> None:
    path = _write(tmp_path, _key_pem(ec_key), b"\n", _cert_pem(good))
    assert tls.load(path, now=NOW).cert == good


def test_bundle_pems(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey,
                     good: x509.Certificate) -> None:
    bundle = tls.load(_write(tmp_path, _cert_pem(good), _key_pem(ec_key)), now=NOW)
    assert bundle.cert_pem() == _cert_pem(good)
    assert b"PRIVATE KEY" not in bundle.cert_pem()
    assert bundle.key_pem().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert bundle.combined_pem() == bundle.cert_pem() + bundle.key_pem()
    again = tls.load(_write(tmp_path, bundle.combined_pem(), name="again.pem"), now=NOW)
    assert again.fingerprint == bundle.fingerprint


@pytest.mark.parametrize(("kind", "fmt", "label"), [
    ("rsa", PKCS8, b"-----BEGIN PRIVATE KEY-----"),
    ("rsa", TRADITIONAL, b"-----BEGIN RSA PRIVATE KEY-----"),
    ("ec", PKCS8, b"-----BEGIN PRIVATE KEY-----"),
    ("ec", TRADITIONAL, b"-----BEGIN EC PRIVATE KEY-----"),
    ("p384", PKCS8, b"-----BEGIN PRIVATE KEY-----"),
])
def test_load_supports_key_types_and_formats(
        tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey,
        kind: str, fmt: serialization.PrivateFormat, label: bytes) -> None:
    keys: dict[str, Key] = {"rsa": rsa_key, "ec": ec_key,
                            "p384": ec.generate_private_key(ec.SECP384R1())}
    key = keys[kind]
    key_pem = _key_pem(key, fmt)
    assert key_pem.startswith(label)
    bundle = tls.load(_write(tmp_path, _cert_pem(_cert(key)), key_pem), now=NOW)
    assert _spki(bundle.key) == _spki(key)
    assert bundle.key_pem().startswith(b"-----BEGIN PRIVATE KEY-----")


@pytest.mark.parametrize(("fmt", "marker"), [
    (PKCS8, b"-----BEGIN ENCRYPTED PRIVATE KEY-----"),
    (TRADITIONAL, b"Proc-Type: 4,ENCRYPTED"),
])
def test_load_decrypts_an_encrypted_key(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey,
                                        good: x509.Certificate,
                                        fmt: serialization.PrivateFormat, marker: bytes) -> None:
    key_pem = _key_pem(ec_key, fmt, PASSWORD)
    assert marker in key_pem
    bundle = tls.load(_write(tmp_path, _cert_pem(good), key_pem), PASSWORD, now=NOW)
    assert _spki(bundle.key) == _spki(ec_key)
    assert b"ENCRYPTED" not in bundle.combined_pem()
    # What nginx gets loads without any password (it could not ask for one).
    plain = tls.load(_write(tmp_path, bundle.combined_pem(), name="plain.pem"), now=NOW)
    assert plain.fingerprint == bundle.fingerprint


def test_a_password_for_an_unencrypted_key_is_ignored(
        tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey, good: x509.Certificate) -> None:
    path = _write(tmp_path, _cert_pem(good), _key_pem(ec_key))
    assert tls.load(path, PASSWORD, now=NOW).cert == good


def test_load_puts_the_leaf_first_and_keeps_the_chain(
        tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey,
        other_key: ec.EllipticCurvePrivateKey) -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert(root_key, "Test Root", ca=True)
    intermediate = _cert(other_key, "Test Intermediate", ca=True,
                         issuer=("Test Root", root_key))
    leaf = _cert(ec_key, issuer=("Test Intermediate", other_key))
    # Shuffled: root, key, leaf, intermediate.
    path = _write(tmp_path, _cert_pem(root), _key_pem(ec_key), _cert_pem(leaf),
                  _cert_pem(intermediate))
    bundle = tls.load(path, now=NOW)
    assert bundle.cert == leaf
    assert bundle.chain == (intermediate, root)
    assert bundle.cert_pem() == _cert_pem(leaf) + _cert_pem(intermediate) + _cert_pem(root)
    assert x509.load_pem_x509_certificates(bundle.combined_pem()) == [leaf, intermediate, root]
    again = tls.load(_write(tmp_path, bundle.combined_pem(), name="again.pem"), now=NOW)
    assert (again.cert, again.chain) == (leaf, (intermediate, root))


def test_load_keeps_the_file_order_of_an_unrelated_extra_certificate(
        tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey, other_key: ec.EllipticCurvePrivateKey,
        good: x509.Certificate) -> None:
    stray = _cert(other_key, "stray.example")
    bundle = tls.load(_write(tmp_path, _cert_pem(stray), _cert_pem(good), _key_pem(ec_key)),
                      now=NOW)
    assert (bundle.cert, bundle.chain) == (good, (stray,))


def test_a_short_lived_certificate_loads_and_is_due_every_warning(
        tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    short = _cert(ec_key, not_before=NOW - timedelta(minutes=30),
                  not_after=NOW + timedelta(hours=1))
    bundle = tls.load(_write(tmp_path, _cert_pem(short), _key_pem(ec_key)), now=NOW)
    assert tls.due_warnings(bundle.not_after, NOW) == list(tls.expiry_thresholds)
    assert tls.next_check(bundle.not_after, NOW) == NOW + timedelta(hours=1)


def test_validity_bounds_are_inclusive(tmp_path: Path,
                                       ec_key: ec.EllipticCurvePrivateKey) -> None:
    cert = _cert(ec_key, not_before=NOW - DAY, not_after=NOW + DAY)
    path = _write(tmp_path, _cert_pem(cert), _key_pem(ec_key))
    assert tls.load(path, now=NOW - DAY).cert == cert
    assert tls.load(path, now=NOW + DAY).cert == cert


# -- every problem has its own message ----------------------------------------------------

def test_missing_file(tmp_path: Path) -> None:
    _fails(tmp_path / "nope.pem", "file not found")


def test_directory(tmp_path: Path) -> None:
    _fails(tmp_path, "is a directory")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         ec_key: ec.EllipticCurvePrivateKey, good: x509.Certificate) -> None:
    path = _write(tmp_path, _cert_pem(good), _key_pem(ec_key))
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make open() fail as it would for a user
        real_open = os.open

        def refuse(file: Path | str, *args: int, **kwargs: int) -> int:
            if Path(file) == path:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(os, "open", refuse)
    _fails(path, "cannot read the file (permission denied)")


@pytest.mark.parametrize("content", [b"", b"\n  \n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    _fails(_write(tmp_path, content), "file is empty")


def test_huge_file(tmp_path: Path) -> None:
    _fails(_write(tmp_path, b"x" * (tls.MAX_FILE_SIZE + 1)), "larger than 1024 KiB")


def test_garbage(tmp_path: Path) -> None:
    problem = _fails(_write(tmp_path, b"this is not a certificate\n"), "not PEM")
    assert "DER" not in problem


def test_der_certificate(tmp_path: Path, good: x509.Certificate) -> None:
    path = _write(tmp_path, good.public_bytes(serialization.Encoding.DER), name="cert.der")
    problem = _fails(path, "not PEM (looks like DER; convert with")
    assert f"-in {path}" in problem


def test_der_private_key(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    der = ec_key.private_bytes(serialization.Encoding.DER, PKCS8, serialization.NoEncryption())
    _fails(_write(tmp_path, der), "not PEM (looks like a DER private key")


def test_truncated_pem(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey,
                       good: x509.Certificate) -> None:
    key_pem = _key_pem(ec_key)
    path = _write(tmp_path, _cert_pem(good), key_pem[: len(key_pem) // 2])
    _fails(path, "incomplete or malformed PEM block: -----BEGIN PRIVATE KEY-----")


def test_damaged_certificate(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    damaged = b"-----BEGIN CERTIFICATE-----\nTm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    _fails(_write(tmp_path, damaged, _key_pem(ec_key)), "certificate 1 of 1 is damaged")


def test_damaged_key(tmp_path: Path, good: x509.Certificate) -> None:
    damaged = b"-----BEGIN PRIVATE KEY-----\nTm90IGEga2V5\n-----END PRIVATE KEY-----\n"
    _fails(_write(tmp_path, _cert_pem(good), damaged), "private key cannot be read")


def test_key_only(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    _fails(_write(tmp_path, _key_pem(ec_key)), "no certificate in the file (found: PRIVATE KEY)")


def test_certificate_only(tmp_path: Path, good: x509.Certificate) -> None:
    _fails(_write(tmp_path, _cert_pem(good)), "no private key in the file (found: CERTIFICATE)")


def test_two_keys(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey,
                  other_key: ec.EllipticCurvePrivateKey, good: x509.Certificate) -> None:
    path = _write(tmp_path, _cert_pem(good), _key_pem(ec_key), _key_pem(other_key, TRADITIONAL))
    _fails(path, "more than one private key in the file (2)")


def test_key_does_not_match(tmp_path: Path, other_key: ec.EllipticCurvePrivateKey,
                            good: x509.Certificate) -> None:
    path = _write(tmp_path, _cert_pem(good), _key_pem(other_key))
    _fails(path, "the private key does not match the certificate (CN=desk.example)")


def test_expired(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    expired = _cert(ec_key, not_before=datetime(2025, 1, 1, tzinfo=UTC),
                    not_after=datetime(2026, 1, 1, tzinfo=UTC))
    path = _write(tmp_path, _cert_pem(expired), _key_pem(ec_key))
    with pytest.raises(TLSError) as info:
        tls.load(path, now=NOW)
    assert str(info.value) == f"{path}: certificate expired on 2026-01-01T00:00:00Z"


def test_not_yet_valid(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    future = _cert(ec_key, not_before=NOW + DAY, not_after=NOW + 400 * DAY)
    path = _write(tmp_path, _cert_pem(future), _key_pem(ec_key))
    _fails(path, "certificate is not yet valid: valid from 2026-06-02T12:00:00Z")


@pytest.mark.parametrize("fmt", [PKCS8, TRADITIONAL])
def test_encrypted_key_without_password(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey,
                                        good: x509.Certificate,
                                        fmt: serialization.PrivateFormat) -> None:
    path = _write(tmp_path, _cert_pem(good), _key_pem(ec_key, fmt, PASSWORD))
    _fails(path, "private key is encrypted and no password was given (set TLS_KEY_PASSWORD)")


@pytest.mark.parametrize("fmt", [PKCS8, TRADITIONAL])
def test_wrong_password(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey,
                        good: x509.Certificate, fmt: serialization.PrivateFormat) -> None:
    path = _write(tmp_path, _cert_pem(good), _key_pem(ec_key, fmt, PASSWORD))
    _fails(path, "wrong password for the encrypted private key", password=b"battery staple")


def test_small_rsa_key(tmp_path: Path) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = _write(tmp_path, _cert_pem(_cert(small)), _key_pem(small))
    _fails(path, "RSA key has 1024 bits")


def test_unsupported_key_type(tmp_path: Path, good: x509.Certificate) -> None:
    dsa_key = dsa.generate_private_key(key_size=1024)
    dsa_pem = dsa_key.private_bytes(serialization.Encoding.PEM, PKCS8,
                                    serialization.NoEncryption())
    _fails(_write(tmp_path, _cert_pem(good), dsa_pem), "unsupported private key type")


# -- what OpenSSL or browsers would refuse later: refused here ---------------------------

# sha256WithRSAEncryption, sha1WithRSAEncryption and md5WithRSAEncryption: the same length,
# so one byte turns a certificate's signature algorithm into another.
RSA_SHA256 = bytes.fromhex("06092a864886f70d01010b")
RSA_SHA1 = bytes.fromhex("06092a864886f70d010105")
RSA_MD5 = bytes.fromhex("06092a864886f70d010104")
SAN_OID = bytes.fromhex("0603551d11")  # 2.5.29.17, subjectAltName
IAN_OID = bytes.fromhex("0603551d12")  # 2.5.29.18, issuerAltName: the same length


def _tlv(tag: int, content: bytes) -> bytes:
    """One DER element (definite length, short or long form)."""
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + content


def _resigned(cert: x509.Certificate, signer: rsa.RSAPrivateKey, *,
              tbs: bytes | None = None, algorithm: bytes = RSA_SHA256,
              digest: hashes.HashAlgorithm | None = None) -> x509.Certificate:
    """`cert` with its to-be-signed part replaced (cryptography builds no certificate with
    a duplicated extension, and signs none with SHA-1 or MD5) and a real signature by
    `signer` over it: what a careless or old CA would issue."""
    der = cert.public_bytes(serialization.Encoding.DER)
    body = cert.tbs_certificate_bytes
    start = der.index(body) + len(body)
    alg_id = der[start:start + 2 + der[start + 1]]
    body = (tbs if tbs is not None else body).replace(RSA_SHA256, algorithm)
    signature = signer.sign(body, padding.PKCS1v15(), digest or hashes.SHA256())
    outer = body + alg_id.replace(RSA_SHA256, algorithm) + _tlv(0x03, b"\0" + signature)
    return x509.load_der_x509_certificate(_tlv(0x30, outer))


def test_the_re_signing_helper_makes_a_certificate_openssl_verifies(
        rsa_key: rsa.RSAPrivateKey) -> None:
    """The helper's output is a real certificate: its signature verifies."""
    again = _resigned(_cert(rsa_key), rsa_key)
    again.verify_directly_issued_by(again)


def test_a_duplicated_extension_is_refused(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """cryptography raises only when the extensions are first used (describing the
    certificate, at start or after a rotation put it in service): refused here."""
    two = (x509.CertificateBuilder().subject_name(_name("desk.example"))
           .issuer_name(_name("desk.example")).public_key(rsa_key.public_key())
           .serial_number(x509.random_serial_number())
           .not_valid_before(NOW - DAY).not_valid_after(NOW + 90 * DAY)
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("desk.example")]), False)
           .add_extension(x509.IssuerAlternativeName([x509.DNSName("desk.example")]), False)
           .sign(rsa_key, hashes.SHA256()))
    body = two.tbs_certificate_bytes
    assert body.count(IAN_OID) == 1
    duplicated = _resigned(two, rsa_key, tbs=body.replace(IAN_OID, SAN_OID))
    with pytest.raises(x509.DuplicateExtension):
        _ = duplicated.extensions
    path = _write(tmp_path, _cert_pem(duplicated), _key_pem(rsa_key))
    problem = _fails(path, "certificate 1 of 1 has the subjectAltName extension twice")
    assert "refuse" in problem


@pytest.mark.parametrize(("algorithm", "digest", "name"), [
    (RSA_SHA1, hashes.SHA1(), "sha1WithRSAEncryption"),
    (RSA_MD5, hashes.MD5(), "md5WithRSAEncryption"),
])
def test_a_sha1_or_md5_signature_is_refused(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                                            algorithm: bytes, digest: hashes.HashAlgorithm,
                                            name: str) -> None:
    weak = _resigned(_cert(rsa_key), rsa_key, algorithm=algorithm, digest=digest)
    assert weak.signature_algorithm_oid.dotted_string.startswith("1.2.840.113549.1.1.")
    path = _write(tmp_path, _cert_pem(weak), _key_pem(rsa_key))
    _fails(path, f"the server's certificate CN=desk.example is signed with {name}, "
                 "which browsers refuse")


def test_a_sha1_signed_intermediate_is_refused_and_a_sha1_root_is_not(
        tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey) -> None:
    """A root's own signature is checked by nobody (a browser trusts the root itself, and
    OpenSSL skips self-signed certificates); any other certificate's is."""
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    root = _resigned(_cert(root_key, "Test Root", ca=True), root_key, algorithm=RSA_SHA1,
                     digest=hashes.SHA1())
    leaf = _cert(ec_key, issuer=("Test Root", root_key))
    bundle = tls.load(_write(tmp_path, _cert_pem(leaf), _cert_pem(root), _key_pem(ec_key)),
                      now=NOW)
    assert bundle.chain == (root,)
    sha1_ca = _resigned(_cert(rsa_key, "Test CA", ca=True, issuer=("Test Root", root_key)),
                        root_key, algorithm=RSA_SHA1, digest=hashes.SHA1())
    leaf = _cert(ec_key, issuer=("Test CA", rsa_key))
    path = _write(tmp_path, _cert_pem(leaf), _cert_pem(sha1_ca), _cert_pem(root),
                  _key_pem(ec_key), name="chain.pem")
    _fails(path, "the chain's certificate CN=Test CA is signed with sha1WithRSAEncryption")


def test_an_rsa_pss_signature_is_accepted(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey,
                                          rsa_key: rsa.RSAPrivateKey) -> None:
    ca = _cert(rsa_key, "Test CA", ca=True)
    leaf = (x509.CertificateBuilder().subject_name(_name("desk.example"))
            .issuer_name(_name("Test CA")).public_key(ec_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - DAY).not_valid_after(NOW + 90 * DAY)
            .sign(rsa_key, hashes.SHA256(), rsa_padding=padding.PSS(
                mgf=padding.MGF1(hashes.SHA256()), salt_length=32)))
    path = _write(tmp_path, _cert_pem(leaf), _cert_pem(ca), _key_pem(ec_key))
    assert tls.load(path, now=NOW).cert == leaf


@pytest.mark.parametrize(("curve", "fragment"), [
    (ec.SECP192R1(), "has an EC key on secp192r1 (192 bits); OpenSSL refuses curves under "
                     "224 bits"),
    (ec.SECP256K1(), "has an EC key on secp256k1; browsers accept only P-256 and P-384"),
    (ec.SECP521R1(), "has an EC key on secp521r1; browsers accept only P-256 and P-384"),
])
def test_a_server_key_on_a_curve_openssl_or_browsers_refuse(
        tmp_path: Path, curve: ec.EllipticCurve, fragment: str) -> None:
    key = ec.generate_private_key(curve)
    path = _write(tmp_path, _cert_pem(_cert(key)), _key_pem(key))
    _fails(path, f"the server's certificate CN=desk.example {fragment}")


def _chain_with_ca_key(tmp_path: Path, leaf_key: ec.EllipticCurvePrivateKey,
                       ca_key: Key | dsa.DSAPrivateKey) -> Path:
    ca = (x509.CertificateBuilder().subject_name(_name("Test CA"))
          .issuer_name(_name("Test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(NOW - DAY).not_valid_after(NOW + 90 * DAY)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, None if isinstance(ca_key, ed25519.Ed25519PrivateKey)
                else hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(_name("desk.example"))
            .issuer_name(_name("Test CA")).public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - DAY).not_valid_after(NOW + 90 * DAY)
            .sign(ca_key, None if isinstance(ca_key, ed25519.Ed25519PrivateKey)
                  else hashes.SHA256()))
    return _write(tmp_path, _cert_pem(leaf), _cert_pem(ca), _key_pem(leaf_key))


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
     "the chain's certificate CN=Test CA has a 1024-bit RSA key; OpenSSL refuses keys "
     "under 2048 bits"),
    (lambda: ec.generate_private_key(ec.SECP192R1()),
     "the chain's certificate CN=Test CA has an EC key on secp192r1 (192 bits)"),
    (lambda: dsa.generate_private_key(key_size=2048),
     "the chain's certificate CN=Test CA has a 2048-bit DSA key; browsers do not accept DSA"),
    (ed25519.Ed25519PrivateKey.generate,
     "the chain's certificate CN=Test CA has an Ed25519 key; browsers do not accept Ed25519"),
])
def test_a_weak_or_unsupported_key_anywhere_in_the_chain_is_refused(
        tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey,
        make: Callable[[], Key | dsa.DSAPrivateKey], fragment: str) -> None:
    _fails(_chain_with_ca_key(tmp_path, ec_key, make()), fragment)


def test_a_p521_or_p384_ca_is_accepted(tmp_path: Path,
                                       ec_key: ec.EllipticCurvePrivateKey) -> None:
    for curve in (ec.SECP521R1(), ec.SECP384R1()):
        path = _chain_with_ca_key(tmp_path, ec_key, ec.generate_private_key(curve))
        assert len(tls.load(path, now=NOW).chain) == 1


def test_an_ed25519_server_key_is_refused(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    path = _write(tmp_path, _cert_pem(_cert(key)), _key_pem(key))
    _fails(path, "private key is Ed25519, which browsers do not accept for HTTPS")


# -- what is not a small regular file: refused without reading it -------------------------

def _refused_within_wait(path: Path, fragment: str) -> None:
    """load() refuses, and returns (a FIFO read would block for ever; the bound is a
    generous WAIT, never asserted as a duration)."""
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            tls.load(path, now=NOW)
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)

    worker = threading.Thread(target=attempt, name="test-load", daemon=True)
    worker.start()
    worker.join(WAIT)
    assert not worker.is_alive(), f"load({path}) blocked"
    assert len(outcome) == 1, "load() returned instead of refusing"
    assert isinstance(outcome[0], TLSError), outcome
    assert fragment in str(outcome[0])
    assert str(outcome[0]).startswith(f"{path}: ")


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "cert.pem"
    os.mkfifo(fifo)
    _refused_within_wait(fifo, "is a FIFO (named pipe), not a regular file")


def test_a_device_is_refused_without_reading_it() -> None:
    _refused_within_wait(Path("/dev/zero"), "is a character device, not a regular file")


def test_a_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cert.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        _refused_within_wait(path, "is a socket, not a regular file")


def test_a_huge_sparse_file_is_refused_by_its_size(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    with path.open("wb") as f:
        f.truncate(1 << 40)  # a TiB of nothing: reading it would take hours
    _refused_within_wait(path, "file is larger than 1024 KiB")


@pytest.mark.parametrize("content", [
    # Every BEGIN without its END: a search for the END from every BEGIN is quadratic.
    b"-----BEGIN CERTIFICATE-----\n",
    b"-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\n",
    b"-----BEGIN X-----\n-----END X-----\n",
    b"-----BEGIN " + b"A" * 200 + b"\n",
    b"-",
])
def test_pem_parsing_is_linear_in_the_file_size(tmp_path: Path, content: bytes) -> None:
    """A file of MAX_FILE_SIZE made of one line again and again: refused at once (the
    regular expression this replaced took minutes on the first one)."""
    data = content * (tls.MAX_FILE_SIZE // len(content))
    assert len(data) <= tls.MAX_FILE_SIZE
    _refused_within_wait(_write(tmp_path, data), "")


def test_a_begin_line_must_end_its_line(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey,
                                        good: x509.Certificate) -> None:
    glued = _cert_pem(good).replace(b"-----\n", b"-----", 1)
    _fails(_write(tmp_path, glued, _key_pem(ec_key)),
           "incomplete or malformed PEM block: -----BEGIN CERTIFICATE-----")


def test_a_block_inside_another_is_refused(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey,
                                           good: x509.Certificate) -> None:
    cert = _cert_pem(good)
    nested = cert.replace(b"-----END", _key_pem(ec_key) + b"-----END")
    _fails(_write(tmp_path, nested), "-----BEGIN CERTIFICATE----- has no matching")


def test_text_around_and_between_blocks_is_ignored(
        tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey, good: x509.Certificate) -> None:
    path = _write(tmp_path, b"subject=CN = desk.example\r\n", _cert_pem(good),
                  b"-----END PRIVATE KEY-----\n# a stray END, then the key\n", _key_pem(ec_key))
    assert tls.load(path, now=NOW).cert == good


def test_every_problem_reads_differently(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey,
                                         other_key: ec.EllipticCurvePrivateKey,
                                         good: x509.Certificate) -> None:
    cert, key = _cert_pem(good), _key_pem(ec_key)
    encrypted = _key_pem(ec_key, PKCS8, PASSWORD)
    cases: list[tuple[tuple[bytes, ...] | None, bytes | None]] = [
        (None, None),  # missing
        ((b"",), None),
        ((b"garbage\n",), None),
        ((good.public_bytes(serialization.Encoding.DER),), None),
        ((key,), None),
        ((cert,), None),
        ((cert, key, _key_pem(other_key)), None),
        ((cert, _key_pem(other_key)), None),
        ((_cert_pem(_cert(ec_key, not_after=NOW - DAY, not_before=NOW - 9 * DAY)), key), None),
        ((_cert_pem(_cert(ec_key, not_before=NOW + DAY)), key), None),
        ((cert, encrypted), None),
        ((cert, encrypted), b"wrong"),
    ]
    openings = set()  # told apart at a glance: by the first words
    for number, (parts, password) in enumerate(cases):
        path = tmp_path / f"{number}.pem"
        if parts is not None:
            path.write_bytes(b"".join(parts))
        with pytest.raises(TLSError) as info:
            tls.load(path, password, now=NOW)
        openings.add(info.value.problem[:24])
    assert len(openings) == len(cases)


def test_tls_error_is_a_value_error() -> None:
    error = TLSError(Path("/data/cert.pem"), "certificate expired\non 2026-01-01T00:00:00Z")
    assert isinstance(error, ValueError)
    assert str(error) == "/data/cert.pem: certificate expired on 2026-01-01T00:00:00Z"


# -- the self-signed certificate ----------------------------------------------------------

def test_generate_self_signed(ec_key: ec.EllipticCurvePrivateKey) -> None:
    bundle = tls.generate_self_signed("Desk.Example", now=NOW)
    cert = bundle.cert
    assert bundle.source is None
    assert isinstance(bundle.key, ec.EllipticCurvePrivateKey)
    assert isinstance(bundle.key.curve, ec.SECP256R1)
    assert cert.subject == cert.issuer == _name("desk.example")
    assert bundle.subject_names() == ["localhost", "127.0.0.1", "::1", "desk.example"]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                       ipaddress.ip_address("::1")]
    assert bundle.not_before == NOW - timedelta(minutes=5)
    assert bundle.not_after == NOW + timedelta(days=365)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    cert.verify_directly_issued_by(cert)
    assert _spki(bundle.key) == cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_generate_self_signed_uses_a_random_serial_and_key() -> None:
    first = tls.generate_self_signed("desk.example", now=NOW)
    second = tls.generate_self_signed("desk.example", now=NOW)
    assert first.cert.serial_number != second.cert.serial_number
    assert _spki(first.key) != _spki(second.key)


@pytest.mark.parametrize(("hostname", "names"), [
    ("localhost", ["localhost", "127.0.0.1", "::1"]),
    ("127.0.0.1", ["localhost", "127.0.0.1", "::1"]),
    ("[::1]", ["localhost", "127.0.0.1", "::1"]),
    ("192.168.1.20", ["localhost", "127.0.0.1", "::1", "192.168.1.20"]),
    ("desk.example.", ["localhost", "127.0.0.1", "::1", "desk.example"]),
    ("bücher.example", ["localhost", "127.0.0.1", "::1", "xn--bcher-kva.example"]),
])
def test_generate_self_signed_dedupes_names(hostname: str, names: list[str]) -> None:
    assert tls.generate_self_signed(hostname, now=NOW).subject_names() == names


def test_generate_self_signed_with_a_long_hostname() -> None:
    hostname = ".".join(["a" * 40] * 3)
    bundle = tls.generate_self_signed(hostname, now=NOW)
    assert hostname in bundle.subject_names()
    assert bundle.cert.subject == _name("whaletop")


@pytest.mark.parametrize("hostname", ["", "  ", "two words", "a..b", "a/b", "x" * 64])
def test_generate_self_signed_refuses_a_bad_hostname(hostname: str) -> None:
    with pytest.raises(ValueError, match="not a valid DNS name"):
        tls.generate_self_signed(hostname, now=NOW)


def test_generate_self_signed_refuses_no_days() -> None:
    with pytest.raises(ValueError, match="days must be at least 1"):
        tls.generate_self_signed("desk.example", days=0, now=NOW)


def test_generate_self_signed_days() -> None:
    assert tls.generate_self_signed("d", days=2, now=NOW).not_after == NOW + 2 * DAY


def test_load_or_create_makes_then_reuses(tmp_path: Path) -> None:
    state = tmp_path / "state"
    bundle, created = tls.load_or_create_self_signed(state, "desk.example", now=NOW)
    assert created
    kept = state / "self_signed.pem"
    assert sorted(os.listdir(state)) == ["self_signed.pem"]  # pub_ssl.pem: certs.publish
    assert _mode(kept) == 0o600
    assert tls.load(kept, now=NOW).fingerprint == bundle.fingerprint
    assert "desk.example" in bundle.subject_names()

    again, created = tls.load_or_create_self_signed(state, "desk.example",
                                                    now=NOW + 100 * DAY)
    assert not created
    assert again.fingerprint == bundle.fingerprint
    assert again.source == kept
    assert sorted(os.listdir(state)) == ["self_signed.pem"]


def test_load_or_create_renews_within_renew_before(tmp_path: Path) -> None:
    first, _ = tls.load_or_create_self_signed(tmp_path, "desk.example", now=NOW)
    # 31 days left: kept.  29 days left: renewed.
    kept, created = tls.load_or_create_self_signed(tmp_path, "desk.example",
                                                   now=first.not_after - 31 * DAY)
    assert (kept.fingerprint, created) == (first.fingerprint, False)
    later = first.not_after - 29 * DAY
    renewed, created = tls.load_or_create_self_signed(tmp_path, "desk.example", now=later)
    assert created
    assert renewed.fingerprint != first.fingerprint
    assert renewed.not_after == later + 365 * DAY
    assert tls.load(tmp_path / "self_signed.pem", now=later).fingerprint == renewed.fingerprint


def test_load_or_create_honours_a_custom_renew_before(tmp_path: Path) -> None:
    tls.load_or_create_self_signed(tmp_path, "desk.example", now=NOW)
    _, created = tls.load_or_create_self_signed(tmp_path, "desk.example", now=NOW + DAY,
                                                renew_before=timedelta(days=400))
    assert created


def test_load_or_create_renews_an_expired_certificate(tmp_path: Path) -> None:
    tls.load_or_create_self_signed(tmp_path, "desk.example", now=NOW)
    renewed, created = tls.load_or_create_self_signed(tmp_path, "desk.example",
                                                      now=NOW + 400 * DAY)
    assert created
    assert renewed.not_after == NOW + 765 * DAY


def test_load_or_create_renews_when_the_hostname_changes(tmp_path: Path) -> None:
    first, _ = tls.load_or_create_self_signed(tmp_path, "desk.example", now=NOW)
    same, created = tls.load_or_create_self_signed(tmp_path, "DESK.example.", now=NOW)
    assert (same.fingerprint, created) == (first.fingerprint, False)
    other, created = tls.load_or_create_self_signed(tmp_path, "other.example", now=NOW)
    assert created
    assert "other.example" in other.subject_names()
    assert "desk.example" not in other.subject_names()


def test_load_or_create_replaces_a_damaged_file(tmp_path: Path) -> None:
    (tmp_path / "self_signed.pem").write_bytes(b"garbage")
    bundle, created = tls.load_or_create_self_signed(tmp_path, "desk.example", now=NOW)
    assert created
    assert tls.load(tmp_path / "self_signed.pem", now=NOW).fingerprint == bundle.fingerprint


def test_load_or_create_restores_the_key_file_mode(tmp_path: Path) -> None:
    first, _ = tls.load_or_create_self_signed(tmp_path, "desk.example", now=NOW)
    (tmp_path / "self_signed.pem").chmod(0o644)
    again, created = tls.load_or_create_self_signed(tmp_path, "desk.example", now=NOW)
    assert (again.fingerprint, created) == (first.fingerprint, False)
    assert _mode(tmp_path / "self_signed.pem") == 0o600


# -- the copy nginx reads -----------------------------------------------------------------

def test_install_writes_a_private_combined_file(tmp_path: Path) -> None:
    bundle = tls.generate_self_signed("desk.example", now=NOW)
    dest = tmp_path / certs.SERVED_PEM
    dest.write_bytes(b"old")
    dest.chmod(0o644)
    tls.install(bundle, dest, os.getuid(), os.getgid())
    assert _mode(dest) == 0o600
    assert (dest.stat().st_uid, dest.stat().st_gid) == (os.getuid(), os.getgid())
    assert dest.read_bytes() == bundle.combined_pem()
    loaded = tls.load(dest, now=NOW)
    assert loaded.fingerprint == bundle.fingerprint
    assert _spki(loaded.key) == _spki(bundle.key)
    assert os.listdir(tmp_path) == [certs.SERVED_PEM]


def test_install_decrypts_an_encrypted_key(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey,
                                           good: x509.Certificate) -> None:
    source = _write(tmp_path, _cert_pem(good), _key_pem(ec_key, TRADITIONAL, PASSWORD))
    dest = tmp_path / certs.SERVED_PEM
    tls.install(tls.load(source, PASSWORD, now=NOW), dest, os.getuid(), os.getgid())
    assert b"ENCRYPTED" not in dest.read_bytes()
    assert tls.load(dest, now=NOW).cert == good


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file away")
def test_install_gives_the_file_to_its_owner(tmp_path: Path) -> None:
    dest = tmp_path / certs.SERVED_PEM
    tls.install(tls.generate_self_signed("d", now=NOW), dest, 4321, 8765)
    assert (dest.stat().st_uid, dest.stat().st_gid) == (4321, 8765)
    assert _mode(dest) == 0o600


def test_install_into_a_missing_directory_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        tls.install(tls.generate_self_signed("d", now=NOW), tmp_path / "no" / "x.pem",
                    os.getuid(), os.getgid())
    assert os.listdir(tmp_path) == []


# -- expiry warnings ----------------------------------------------------------------------

END = datetime(2027, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("now", "due"), [
    (END - 60 * DAY, []),
    (END - 30 * DAY - timedelta(seconds=1), []),
    (END - 30 * DAY, [30]),
    (END - 8 * DAY, [30]),
    (END - 7 * DAY, [30, 7]),
    (END - 2 * DAY, [30, 7]),
    (END - DAY, [30, 7, 1]),
    (END - timedelta(minutes=1), [30, 7, 1]),
    (END, [30, 7, 1]),
    (END + 5 * DAY, [30, 7, 1]),
])
def test_due_warnings(now: datetime, due: list[int]) -> None:
    assert tls.due_warnings(END, now) == [timedelta(days=d) for d in due]


@pytest.mark.parametrize(("now", "when"), [
    (END - 365 * DAY, END - 30 * DAY),
    (END - 30 * DAY - timedelta(seconds=1), END - 30 * DAY),
    (END - 30 * DAY, END - 7 * DAY),
    (END - 10 * DAY, END - 7 * DAY),
    (END - 7 * DAY, END - DAY),
    (END - 3 * DAY, END - DAY),
    (END - DAY, END),
    (END - timedelta(seconds=1), END),
    (END, None),
    (END + DAY, None),
])
def test_next_check(now: datetime, when: datetime | None) -> None:
    assert tls.next_check(END, now) == when


def test_warnings_take_any_time_zone_and_naive_as_utc() -> None:
    # 00:30 on 1 January in UTC+1 is 23:30 on 31 December UTC: within the last day.
    local = datetime(2027, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    assert tls.due_warnings(END, local) == [timedelta(days=d) for d in (30, 7, 1)]
    assert tls.next_check(END, local) == END
    assert tls.next_check(END, datetime(2026, 12, 1, 23, 59)) == END - 30 * DAY


# -- file digests -------------------------------------------------------------------------

def test_file_digest(tmp_path: Path) -> None:
    path = _write(tmp_path, b"content")
    digest = files.file_digest(path)
    assert digest == hashlib.sha256(b"content").hexdigest()
    path.write_bytes(b"content")
    assert files.file_digest(path) == digest
    path.write_bytes(b"changed")
    assert files.file_digest(path) != digest


def test_file_digest_of_nothing(tmp_path: Path) -> None:
    assert files.file_digest(tmp_path / "missing") is None
    assert files.file_digest(tmp_path) is None
