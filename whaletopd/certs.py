"""The certificate in service: where it comes from, where nginx reads it, when it
expires.

The user's file is watched (watch.Watcher, tree=False) through its directory, not the
file itself: certificates are replaced by rename, and Kubernetes swaps a `..data`
symlink; a watch on the old file would go silent.  Watcher events are debounced and
carry no judgement: the machine compares the content's digest and validates before
anything changes.  The file is read once (tls.read: a regular file, size-capped) and
both digested and parsed from those bytes, so what is served is what was compared.
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from whaletopd import tls
from whaletopd.files import atomic_write

SERVED_PEM = "tls.pem"


@dataclass
class Certificate:
    """The bundle in service and what whaletopd knows about it."""

    bundle: tls.Bundle
    source: Path | None  # None: self-signed, kept in the state directory
    digest: str | None
    warned: set[timedelta] = field(default_factory=set)

    def describe(self) -> dict[str, Any]:
        return {
            "fingerprint_sha256": self.bundle.fingerprint,
            "not_after": self.bundle.not_after.isoformat().replace("+00:00", "Z"),
            "source": str(self.source) if self.source else "self-signed",
            "names": self.bundle.subject_names(),
        }

    def due_warnings(self, now: datetime | None = None) -> list[timedelta]:
        """Thresholds crossed and not yet warned about (each is logged once)."""
        at = now or datetime.now(UTC)
        new = [t for t in tls.due_warnings(self.bundle.not_after, at) if t not in self.warned]
        self.warned.update(new)
        return new

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.bundle.not_after

    def seconds_to_next_check(self, now: datetime | None = None) -> float | None:
        at = now or datetime.now(UTC)
        when = tls.next_check(self.bundle.not_after, at)
        return None if when is None else max(0.0, (when - at).total_seconds())


def digest(data: bytes) -> str:
    """What a watched file's change is told from a touch by."""
    return hashlib.sha256(data).hexdigest()


def from_file(path: Path, data: bytes, password: bytes | None,
              now: datetime | None = None) -> Certificate:
    """The user's certificate from the bytes tls.read() gave, validated.  Raises TLSError."""
    return Certificate(bundle=tls.parse(path, data, password, now=now), source=path,
                       digest=digest(data))


def obtain(source: str, state_dir: Path, password: bytes | None, *,
           now: datetime | None = None, days: int = tls.SELF_SIGNED_DAYS,
           renew_before: timedelta = tls.RENEW_BEFORE) -> Certificate:
    """The user's certificate, validated, or the kept/new self-signed one.  Raises TLSError."""
    if source:
        path = Path(source)
        return from_file(path, tls.read(path), password, now)
    bundle, _created = tls.load_or_create_self_signed(
        state_dir, socket.gethostname(), now=now, renew_before=renew_before, days=days)
    return Certificate(bundle=bundle, source=None, digest=None)


def renew_self_signed(state_dir: Path, *, now: datetime | None = None,
                      days: int = tls.SELF_SIGNED_DAYS) -> Certificate:
    """A new self-signed certificate, validated; kept (tls.keep_self_signed) only once it
    is put in service."""
    bundle = tls.new_self_signed(state_dir, socket.gethostname(), days=days, now=now)
    return Certificate(bundle=bundle, source=None, digest=None)


def publish(cert: Certificate, state_dir: Path, dest: Path, uid: int, gid: int) -> Path:
    """pub_ssl.pem (certificate only, for users to trust) and nginx's combined file at
    `dest` (the only place a decrypted key is written, mode 0600, read by nginx's master:
    whaletopd's own user, never the desktop user)."""
    atomic_write(state_dir / tls.PUBLIC_CERT_NAME, cert.bundle.cert_pem(), 0o644)
    tls.install(cert.bundle, dest, uid, gid)
    return dest
