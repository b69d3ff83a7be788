"""The certificate in service: where it comes from, where websockify reads it, when it
expires.

The user's file is watched (watch.Watcher, tree=False) through its directory, not the
file itself: certificates are replaced by rename, and Kubernetes swaps a `..data`
symlink; a watch on the old file would go silent.  Watcher events are debounced and
carry no judgement: the machine compares the content's digest and validates before
anything changes.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from whaletopd import tls
from whaletopd.files import atomic_write, file_digest

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


def obtain(source: str, state_dir: Path, password: bytes | None) -> Certificate:
    """The user's certificate, validated, or the kept/new self-signed one.  Raises TLSError."""
    if source:
        path = Path(source)
        # Digest first: if the file changes while it is loaded, the digest differs from
        # the next one and the watcher's event is acted on, never mistaken for a touch.
        digest = file_digest(path)
        return Certificate(bundle=tls.load(path, password), source=path, digest=digest)
    bundle, _created = tls.load_or_create_self_signed(state_dir, socket.gethostname())
    return Certificate(bundle=bundle, source=None, digest=None)


def publish(cert: Certificate, state_dir: Path, run_dir: Path, uid: int, gid: int) -> Path:
    """pub_ssl.pem (certificate only, for users to trust) and nginx's combined file (the
    only place a decrypted key is written, mode 0600, read by nginx's master: whaletopd's
    own user, never the desktop user)."""
    atomic_write(state_dir / tls.PUBLIC_CERT_NAME, cert.bundle.cert_pem(), 0o644)
    dest = run_dir / SERVED_PEM
    tls.install(cert.bundle, dest, uid, gid)
    return dest
