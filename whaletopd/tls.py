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
import errno
import ipaddress
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

from whaletopd.config import TLS_KEY_PASSWORD_ENV
from whaletopd.files import ReadRefused, atomic_write, read_regular
from whaletopd.tls_error import TLSError as TLSError  # re-exported: tls.TLSError

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

SELF_SIGNED_NAME = "self_signed.pem"
PUBLIC_CERT_NAME = "pub_ssl.pem"
# notBefore is set this far back, so a client whose clock is a little behind still accepts.
CLOCK_SKEW = timedelta(minutes=5)
# A certificate bundle is a few KiB; this bounds what a wrong path (a log, a disk image) costs.
MAX_FILE_SIZE = 1 << 20
# Debian's OpenSSL (security level 2, 112-bit security) refuses to serve with a smaller
# RSA or DSA key, or an EC key under 224 bits, anywhere in the chain.
MIN_RSA_BITS = 2048
MIN_EC_BITS = 224
# What browsers verify a server's certificate with: EC P-256 or P-384 (P-521 too for a CA;
# Chrome offers no P-521 signature in the handshake, so not for the server's own key) or
# RSA, signed with SHA-2 (256, 384 or 512).  SHA-1 and MD5 are refused, and so are
# SHA-224, DSA, Ed25519 and Ed448 (no browser verifies them).
SERVER_CURVES = ("secp256r1", "secp384r1")
CA_CURVES = (*SERVER_CURVES, "secp521r1")
SIGNATURES = frozenset({
    SignatureAlgorithmOID.RSA_WITH_SHA256, SignatureAlgorithmOID.RSA_WITH_SHA384,
    SignatureAlgorithmOID.RSA_WITH_SHA512, SignatureAlgorithmOID.ECDSA_WITH_SHA256,
    SignatureAlgorithmOID.ECDSA_WITH_SHA384, SignatureAlgorithmOID.ECDSA_WITH_SHA512,
    SignatureAlgorithmOID.RSASSA_PSS})
PSS_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
# The self-signed certificate: its lifetime, and how long before its end a new one is made
# (at start, and live: web.WebFront renews it as it rotates a user's file).
SELF_SIGNED_DAYS = 365
RENEW_BEFORE = timedelta(days=30)
# A common name longer than this is invalid X.509; browsers match the SANs anyway.
MAX_CN_LENGTH = 64

expiry_thresholds = (timedelta(days=30), timedelta(days=7), timedelta(days=1))

# One marker; the file is scanned once, left to right (linear in its size, whatever it
# holds: no search for an END that restarts at every BEGIN).
_PEM_MARKER = re.compile(rb"-----(BEGIN|END) ([A-Z0-9 ]+)-----")
_DNS_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


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

_NOT_REGULAR = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
                stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def _refusal(e: ReadRefused) -> str:
    if e.step == "open":
        if isinstance(e.error, FileNotFoundError):
            return "file not found"
        if isinstance(e.error, PermissionError):
            return "cannot read the file (permission denied)"
        if e.error is not None and e.error.errno == errno.ENXIO:  # a socket: not opened
            return "is a socket, not a regular file"
    if e.step in ("open", "read"):
        return f"cannot read the file ({e.strerror})"
    if e.step == "size":
        return f"file is larger than {MAX_FILE_SIZE // 1024} KiB; not a certificate and key"
    if stat.S_ISDIR(e.mode):
        return "is a directory, not a PEM file"
    kind = _NOT_REGULAR.get(stat.S_IFMT(e.mode), "not a regular file")
    return f"is {kind}, not a regular file"


def read(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_SIZE; TLSError for anything else.
    Opened without blocking and checked with fstat before a byte is read: a FIFO (which
    would wait for a writer forever) or a device is refused, never read."""
    try:
        data = read_regular(path, MAX_FILE_SIZE)
    except ReadRefused as e:
        raise TLSError(path, _refusal(e)) from None
    if not data.strip():
        raise TLSError(path, "file is empty")
    return data


def _pem_blocks(path: Path, data: bytes) -> list[tuple[bytes, bytes]]:
    """(label, block) of each PEM block, in file order, in one pass over the file.  A
    BEGIN line must end its line and be closed by its END before the next BEGIN."""
    blocks: list[tuple[bytes, bytes]] = []
    opened: re.Match[bytes] | None = None
    seen = False

    def unmatched(label: bytes) -> TLSError:
        text = label.decode()
        return TLSError(path, f"incomplete or malformed PEM block: -----BEGIN {text}----- "
                              f"has no matching -----END {text}----- line")

    for marker in _PEM_MARKER.finditer(data):
        kind, label = marker.group(1), marker.group(2)
        if kind == b"BEGIN":
            seen = True
            if opened is not None:
                raise unmatched(opened.group(2))
            if not data.startswith((b"\n", b"\r\n"), marker.end()):
                raise unmatched(label)
            opened = marker
        elif opened is not None and label == opened.group(2):
            blocks.append((label, data[opened.start():marker.end()]))
            opened = None
    if opened is not None:
        raise unmatched(opened.group(2))
    if not seen:
        raise TLSError(path, _not_pem(path, data))
    return blocks


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
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raise TLSError(path, "private key is Ed25519, which browsers do not accept for "
                             "HTTPS (use EC P-256 or RSA)")
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise TLSError(path, f"unsupported private key type {type(key).__name__} "
                             "(use EC P-256 or RSA)")
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


def _oid_name(oid: x509.ObjectIdentifier) -> str:
    name = getattr(oid, "_name", "Unknown OID")
    return oid.dotted_string if name == "Unknown OID" else str(name)


def _parse_cert(path: Path, number: int, total: int, block: bytes) -> x509.Certificate:
    """One certificate, every part a server or a browser reads readable: cryptography
    parses extensions lazily, and a duplicated one raises at first use (describing the
    certificate, a rotation) instead of here."""
    which = f"certificate {number} of {total}"
    try:
        cert = x509.load_pem_x509_certificate(block)
        _ = cert.subject, cert.issuer, cert.extensions
    except x509.DuplicateExtension as exc:
        raise TLSError(path, f"{which} has the {_oid_name(exc.oid)} extension twice; "
                             "OpenSSL and browsers refuse it") from None
    except ValueError as exc:
        raise TLSError(path, f"{which} is damaged ({_first_sentence(exc)})") from None
    return cert


def _key_problem(cert: x509.Certificate, server: bool) -> str | None:
    """Why OpenSSL's security level 2 or browsers refuse the certificate's public key."""
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        return f"has a public key that cannot be read ({_first_sentence(exc)})"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return (f"has a {key.key_size}-bit RSA key; OpenSSL refuses keys under "
                    f"{MIN_RSA_BITS} bits")
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.key_size < MIN_EC_BITS:
            return (f"has an EC key on {key.curve.name} ({key.key_size} bits); OpenSSL "
                    f"refuses curves under {MIN_EC_BITS} bits")
        if key.curve.name not in (SERVER_CURVES if server else CA_CURVES):
            return (f"has an EC key on {key.curve.name}; browsers accept only P-256 and "
                    f"P-384{'' if server else ' (and P-521 for a CA)'}")
        return None
    if isinstance(key, dsa.DSAPublicKey):
        return f"has a {key.key_size}-bit DSA key; browsers do not accept DSA"
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        kind = "Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else "Ed448"
        return f"has an {kind} key; browsers do not accept {kind} certificates"
    return f"has a {type(key).__name__} key, which cannot sign for HTTPS"


def _signature_problem(cert: x509.Certificate) -> str | None:
    """Why browsers refuse the certificate's signature (SHA-1, MD5, ...)."""
    oid = cert.signature_algorithm_oid
    if oid == SignatureAlgorithmOID.RSASSA_PSS:
        try:
            digest = cert.signature_hash_algorithm
        except UnsupportedAlgorithm:
            digest = None
        if isinstance(digest, PSS_HASHES):
            return None
        name = f"RSA-PSS with {digest.name if digest else 'an unknown hash'}"
    elif oid in SIGNATURES:
        return None
    else:
        name = _oid_name(oid)
    return (f"is signed with {name}, which browsers refuse (they verify RSA or ECDSA "
            "signatures with SHA-256, SHA-384 or SHA-512)")


def _check_strength(path: Path, leaf: x509.Certificate,
                    chain: list[x509.Certificate]) -> None:
    """Every certificate served: keys OpenSSL's security level accepts, then signatures
    browsers verify (a weak CA key first: it is why its signatures are refused).  A
    self-signed CA's own signature is nobody's concern (OpenSSL skips it too); the
    server's certificate's is, even when self-signed."""
    served = [(cert, cert is leaf) for cert in (leaf, *chain)]
    problems = [(cert, server, _key_problem(cert, server)) for cert, server in served]
    problems += [(cert, server, _signature_problem(cert)) for cert, server in served
                 if server or cert.issuer != cert.subject]
    for cert, server, problem in problems:
        if problem is not None:
            what = "the server's certificate" if server else "the chain's certificate"
            raise TLSError(path, f"{what} {_subject(cert)} {problem}")


def load(path: Path, password: bytes | None = None, *, now: datetime | None = None) -> Bundle:
    """A combined PEM file (certificate chain and private key, in any order), checked
    enough that nginx can serve it and browsers accept it: raises TLSError naming the
    first problem."""
    return parse(path, read(path), password, now=now)


def parse(path: Path, data: bytes, password: bytes | None = None, *,
          now: datetime | None = None) -> Bundle:
    """load() for a file already read (by read()); `path` names it in messages."""
    at = _utc(now)
    blocks = _pem_blocks(path, data)
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
    certs = [_parse_cert(path, number, len(cert_blocks), block)
             for number, block in enumerate(cert_blocks, 1)]
    key = _parse_key(path, *key_blocks[0], password)
    leaf, chain = _order(path, certs, key)
    if leaf.not_valid_after_utc < at:
        raise TLSError(path, f"certificate expired on {_iso(leaf.not_valid_after_utc)}")
    if leaf.not_valid_before_utc > at:
        raise TLSError(path, f"certificate is not yet valid: valid from "
                             f"{_iso(leaf.not_valid_before_utc)} (is the clock right?)")
    _check_strength(path, leaf, chain)
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


def generate_self_signed(hostname: str, *, days: int = SELF_SIGNED_DAYS,
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


def self_signed_host(hostname: str) -> str:
    """The name a self-signed certificate is made for: `hostname` as a SAN has it, or
    localhost for a container named oddly (--hostname): the local names are served."""
    try:
        return _normal_host(hostname)
    except ValueError:
        return "localhost"


def new_self_signed(state_dir: Path, hostname: str, *, days: int = SELF_SIGNED_DAYS,
                    now: datetime | None = None) -> Bundle:
    """A fresh self-signed certificate, checked as a user's file is (parse() of what will
    be served), not yet written: a renewal's candidate."""
    at = _utc(now)
    bundle = generate_self_signed(self_signed_host(hostname), days=days, now=at)
    return parse(state_dir / SELF_SIGNED_NAME, bundle.combined_pem(), now=at)


def keep_self_signed(state_dir: Path, bundle: Bundle) -> None:
    """Keep it in the state directory (0600), for the next start to serve it again."""
    atomic_write(state_dir / SELF_SIGNED_NAME, bundle.combined_pem(), 0o600)


def load_or_create_self_signed(state_dir: Path, hostname: str, *, now: datetime | None = None,
                               renew_before: timedelta = RENEW_BEFORE,
                               days: int = SELF_SIGNED_DAYS) -> tuple[Bundle, bool]:
    """The kept self-signed certificate if it is still good for `renew_before` and names
    `hostname`, else a new one (written 0600).  Returns (bundle, created_new); certs.publish
    writes pub_ssl.pem, the certificate alone for users to trust."""
    at = _utc(now)
    host = self_signed_host(hostname)
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
        bundle, created = new_self_signed(state_dir, host, days=days, now=at), True
        keep_self_signed(state_dir, bundle)
    return bundle, created
