"""TLS for the noVNC web port: check a user's certificate, or make and keep a self-signed one.

websockify reads one PEM file holding the certificate chain and an unencrypted key, and
fails late and vaguely on a bad one (a browser error, a traceback in its log).  So a
user's file is checked here, before anything starts, and every problem becomes one line
that names the file and what is wrong with it.  Without a user certificate a self-signed
one is made once and kept in the state directory, so the exception a browser was told to
make for it survives restarts; it is renewed well before it expires and when the hostname
changes.  Only `cryptography` is used: the image needs no openssl binary.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import stat
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from whaletopd.config import TLS_KEY_PASSWORD_ENV
from whaletopd.files import atomic_write

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

SELF_SIGNED_NAME = "self_signed.pem"
PUBLIC_CERT_NAME = "pub_ssl.pem"
# notBefore is set this far back, so a client whose clock is a little behind still accepts.
CLOCK_SKEW = timedelta(minutes=5)
# A certificate bundle is a few KiB; this bounds what a wrong path (a log, a disk image) costs.
MAX_FILE_SIZE = 1 << 20
# Debian's OpenSSL (security level 2) refuses to serve with a smaller RSA key.
MIN_RSA_BITS = 2048
# A common name longer than this is invalid X.509; browsers match the SANs anyway.
MAX_CN_LENGTH = 64

expiry_thresholds = (timedelta(days=30), timedelta(days=7), timedelta(days=1))

_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_DNS_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


class TLSError(ValueError):
    """A certificate file that cannot be served; the message is one line naming the file."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = " ".join(problem.split())
        super().__init__(f"{path}: {self.problem}")


@dataclass(frozen=True)
class Bundle:
    """A certificate, the intermediates served after it, and its (decrypted) private key."""

    cert: x509.Certificate
    key: PrivateKey
    source: Path | None = None
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex()

    @property
    def not_before(self) -> datetime:
        return self.cert.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.cert.not_valid_after_utc

    def cert_pem(self) -> bytes:
        """The certificate, then the rest of the chain; no key."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM)
                        for c in (self.cert, *self.chain))

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def combined_pem(self) -> bytes:
        """What websockify's --cert reads: the chain, then the unencrypted key."""
        return self.cert_pem() + self.key_pem()

    def subject_names(self) -> list[str]:
        """The DNS names and IP addresses of the subjectAltName, in certificate order."""
        try:
            san = self.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except (x509.ExtensionNotFound, ValueError):
            return []
        names: list[str] = []
        for name in san.value:
            if isinstance(name, x509.DNSName):
                names.append(name.value)
            elif isinstance(name, x509.IPAddress):
                names.append(str(name.value))
        return names


# -- times --------------------------------------------------------------------------------

def _utc(when: datetime | None) -> datetime:
    """`when` as an aware UTC datetime; None is now, and a naive one is taken as UTC."""
    if when is None:
        return datetime.now(UTC)
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _iso(when: datetime) -> str:
    return _utc(when).strftime("%Y-%m-%dT%H:%M:%SZ")


def due_warnings(not_after: datetime, now: datetime) -> list[timedelta]:
    """The thresholds of `expiry_thresholds` already crossed (largest first)."""
    end, at = _utc(not_after), _utc(now)
    return [t for t in expiry_thresholds if at >= end - t]


def next_check(not_after: datetime, now: datetime) -> datetime | None:
    """The first instant after `now` at which a threshold is crossed or the certificate
    expires; None once it has expired."""
    end, at = _utc(not_after), _utc(now)
    later = [moment for moment in (*(end - t for t in expiry_thresholds), end) if moment > at]
    return min(later) if later else None


# -- files --------------------------------------------------------------------------------

def install(bundle: Bundle, dest: Path, uid: int, gid: int) -> None:
    """Write the combined PEM for websockify: mode 0600, owned by uid:gid.  This is the only
    place the decrypted key is written."""
    atomic_write(dest, bundle.combined_pem(), 0o600, owner=(uid, gid))


# -- loading a user's file ----------------------------------------------------------------

def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_SIZE + 1)
    except FileNotFoundError:
        raise TLSError(path, "file not found") from None
    except IsADirectoryError:
        raise TLSError(path, "is a directory, not a PEM file") from None
    except PermissionError:
        raise TLSError(path, "cannot read the file (permission denied)") from None
    except OSError as exc:
        raise TLSError(path, f"cannot read the file ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_SIZE:
        raise TLSError(path, f"file is larger than {MAX_FILE_SIZE // 1024} KiB; "
                             "not a certificate and key")
    if not data.strip():
        raise TLSError(path, "file is empty")
    return data


def _not_pem(path: Path, data: bytes) -> str:
    """Why a file with no PEM block at all is not usable; DER gets a conversion hint."""
    with contextlib.suppress(ValueError):
        x509.load_der_x509_certificate(data)
        return (f"not PEM (looks like DER; convert with: openssl x509 -inform DER -in {path} "
                "-out cert.pem, then append the PEM private key)")
    der_key = True
    try:
        serialization.load_der_private_key(data, None)
    except TypeError:  # an encrypted DER key is still a DER key
        pass
    except (ValueError, UnsupportedAlgorithm):
        der_key = False
    if der_key:
        return (f"not PEM (looks like a DER private key; convert with: openssl pkey "
                f"-inform DER -in {path} -out key.pem, and put it after the PEM certificate)")
    return "not PEM (no -----BEGIN CERTIFICATE----- or -----BEGIN PRIVATE KEY----- block)"


def _first_sentence(exc: Exception) -> str:
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    return text.split(". ")[0].rstrip(".")


def _parse_key(path: Path, label: bytes, block: bytes, password: bytes | None) -> PrivateKey:
    encrypted = label == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in block
    if encrypted and password is None:
        raise TLSError(path, f"private key is encrypted and no password was given "
                             f"(set {TLS_KEY_PASSWORD_ENV})")
    try:
        key = serialization.load_pem_private_key(block, password if encrypted else None)
    except TypeError:  # cryptography disagrees with the PEM headers about encryption
        raise TLSError(path, f"private key is encrypted and no password was given "
                             f"(set {TLS_KEY_PASSWORD_ENV})") from None
    except ValueError as exc:
        if encrypted:
            raise TLSError(path, f"wrong password for the encrypted private key "
                                 f"(check {TLS_KEY_PASSWORD_ENV})") from None
        raise TLSError(path, f"private key cannot be read ({_first_sentence(exc)})") from None
    except UnsupportedAlgorithm as exc:
        raise TLSError(path, f"private key uses an unsupported algorithm "
                             f"({_first_sentence(exc)})") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
                      | ed25519.Ed25519PrivateKey):
        raise TLSError(path, f"unsupported private key type {type(key).__name__} "
                             "(use RSA, EC or Ed25519)")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise TLSError(path, f"RSA key has {key.key_size} bits; OpenSSL refuses keys under "
                             f"{MIN_RSA_BITS} bits")
    return key


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    """A public key's SubjectPublicKeyInfo, to compare keys of any type."""
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _cert_spki(cert: x509.Certificate) -> bytes | None:
    try:
        return _spki(cert.public_key())
    except (ValueError, UnsupportedAlgorithm):
        return None


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "empty subject"


def _order(path: Path, certs: list[x509.Certificate],
           key: PrivateKey) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """The certificate of `key` first, then its issuers as they chain, then the rest."""
    wanted = _spki(key.public_key())
    leaf = next((c for c in certs if _cert_spki(c) == wanted), None)
    if leaf is None:
        names = "; ".join(_subject(c) for c in certs)
        raise TLSError(path, f"the private key does not match the certificate ({names})")
    rest = [c for c in certs if c is not leaf]
    chain: list[x509.Certificate] = []
    current = leaf
    while current.issuer != current.subject:
        issuer = next((c for c in rest if c.subject == current.issuer), None)
        if issuer is None:
            break
        rest.remove(issuer)
        chain.append(issuer)
        current = issuer
    return leaf, chain + rest


def load(path: Path, password: bytes | None = None, *, now: datetime | None = None) -> Bundle:
    """A combined PEM file (certificate chain and private key, in any order), checked
    enough that websockify can serve it: raises TLSError naming the first problem."""
    at = _utc(now)
    data = _read(path)
    blocks = [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(data)]
    begins = _PEM_BEGIN.findall(data)
    if not begins:
        raise TLSError(path, _not_pem(path, data))
    unmatched = Counter(begins) - Counter(label for label, _ in blocks)
    if unmatched:
        label = next(iter(unmatched)).decode()
        raise TLSError(path, f"incomplete or malformed PEM block: -----BEGIN {label}----- "
                             f"has no matching -----END {label}----- line")
    found = ", ".join(dict.fromkeys(label.decode() for label, _ in blocks))
    cert_blocks = [block for label, block in blocks if label == b"CERTIFICATE"]
    key_blocks = [(label, block) for label, block in blocks if label.endswith(b"PRIVATE KEY")]
    if not cert_blocks:
        raise TLSError(path, f"no certificate in the file (found: {found})")
    if not key_blocks:
        raise TLSError(path, f"no private key in the file (found: {found}); the certificate "
                             "and its private key must be in the same file")
    if len(key_blocks) > 1:
        raise TLSError(path, f"more than one private key in the file ({len(key_blocks)}); "
                             "keep only the certificate's key")
    certs: list[x509.Certificate] = []
    for number, block in enumerate(cert_blocks, 1):
        try:
            certs.append(x509.load_pem_x509_certificate(block))
        except ValueError as exc:
            raise TLSError(path, f"certificate {number} of {len(cert_blocks)} is damaged "
                                 f"({_first_sentence(exc)})") from None
    key = _parse_key(path, *key_blocks[0], password)
    leaf, chain = _order(path, certs, key)
    if leaf.not_valid_after_utc < at:
        raise TLSError(path, f"certificate expired on {_iso(leaf.not_valid_after_utc)}")
    if leaf.not_valid_before_utc > at:
        raise TLSError(path, f"certificate is not yet valid: valid from "
                             f"{_iso(leaf.not_valid_before_utc)} (is the clock right?)")
    return Bundle(cert=leaf, key=key, source=path, chain=tuple(chain))


# -- the self-signed certificate ----------------------------------------------------------

def _normal_host(hostname: str) -> str:
    """The hostname as it appears in a SAN: an IP address in its short form, or a lower case
    A-label DNS name.  ValueError for anything else."""
    host = hostname.strip().rstrip(".").lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"hostname {hostname!r} is not a valid DNS name") from None
    if not _DNS_NAME.fullmatch(host):
        raise ValueError(f"hostname {hostname!r} is not a valid DNS name")
    return host


def _san_entry(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def generate_self_signed(hostname: str, *, days: int = 365,
                         now: datetime | None = None) -> Bundle:
    """A fresh EC P-256 server certificate for `hostname`, localhost, 127.0.0.1 and ::1."""
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    host = _normal_host(hostname)
    at = _utc(now)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(
        NameOID.COMMON_NAME, host if len(host) <= MAX_CN_LENGTH else "whaletop")])
    sans: list[x509.GeneralName] = []
    for entry in ("localhost", "127.0.0.1", "::1", host):
        general = _san_entry(entry)
        if general not in sans:
            sans.append(general)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(at - CLOCK_SKEW)
        .not_valid_after(at + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return Bundle(cert=cert, key=key)


def _reusable(bundle: Bundle, host: str, at: datetime, renew_before: timedelta) -> bool:
    return (bundle.not_after - renew_before > at
            and host in (n.lower() for n in bundle.subject_names()))


def load_or_create_self_signed(state_dir: Path, hostname: str, *, now: datetime | None = None,
                               renew_before: timedelta = timedelta(days=30),
                               ) -> tuple[Bundle, bool]:
    """The kept self-signed certificate if it is still good for `renew_before` and names
    `hostname`, else a new one (written 0600).  Returns (bundle, created_new); certs.publish
    writes pub_ssl.pem, the certificate alone for users to trust."""
    at = _utc(now)
    try:
        host = _normal_host(hostname)
    except ValueError:
        host = "localhost"  # a container named oddly (--hostname): serve the local names
    path = state_dir / SELF_SIGNED_NAME
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        kept: Bundle | None = load(path, now=at)
    except TLSError:
        kept = None
    if kept is not None and _reusable(kept, host, at, renew_before):
        bundle, created = kept, False
        if stat.S_IMODE(path.stat().st_mode) != 0o600:
            path.chmod(0o600)
    else:
        bundle, created = generate_self_signed(host, now=at), True
        atomic_write(path, bundle.combined_pem(), 0o600)
    return bundle, created
