"""The part that owns the web front's TLS: the certificate in service, the file nginx
reads, the watch on --tls-certificate's folder, a validated candidate waiting to replace
the certificate, and the expiry warnings and check deadline.

Making nginx reload a new certificate is the supervisor's work; the desktop puts the two
together.  Without TLS every method is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whaletopd import certs, logs, tls
from whaletopd.config import Config
from whaletopd.deadlines import Deadlines
from whaletopd.events import (
    CertificateChanged,
    CertificateCheckDue,
    CertificateExpired,
    EventQueue,
)
from whaletopd.files import file_digest
from whaletopd.logs import step
from whaletopd.paths import Paths

if TYPE_CHECKING:
    from whaletopd.watch import Watcher

log = logs.get("whaletopd")
CHECK = "certificate_check"  # the deadline of the next expiry warning or of expiry
# A deadline's clock (monotonic) stops while the host sleeps: look again at least hourly.
MAX_CHECK_DELAY = 3600.0


class WebFront:
    def __init__(self, config: Config, paths: Paths, events: EventQueue,
                 deadlines: Deadlines, now: Callable[[], datetime] | None = None) -> None:
        self._config = config
        self._now = now or (lambda: datetime.now(UTC))
        self._paths = paths
        self._events = events
        self._deadlines = deadlines
        self._certificate: certs.Certificate | None = None
        self._candidate: certs.Certificate | None = None
        self._deferred = False
        self._pem: Path | None = None
        self._watcher: Watcher | None = None

    @property
    def pem(self) -> Path | None:
        """nginx's certificate and key, once installed (None without TLS)."""
        return self._pem

    @property
    def pin(self) -> str | None:
        """The SHA-256 of the certificate nginx must serve (None without TLS)."""
        return self._certificate.bundle.fingerprint if self._certificate else None

    def describe(self) -> dict[str, Any] | None:
        return self._certificate.describe() if self._certificate else None

    def validate(self) -> None:
        """First of all provisioning: a bad certificate is FAILED before anything else is
        touched.  Raises TLSError."""
        if not self._config.tls:
            return
        with step("tls_validate") as out:
            self._certificate = certs.obtain(self._config.tls_certificate,
                                             self._paths.state_dir,
                                             self._config.tls_key_password)
            out.update(self._certificate.describe())

    def install(self) -> None:
        """Give nginx its file, watch the user's file for changes, check expiry."""
        cert = self._certificate
        if cert is None:
            return
        with step("tls_install"):
            self._pem = self._publish(cert)
        if cert.source is not None:
            from whaletopd.watch import Watcher  # watchdog: only when there is a file to watch

            self._watcher = Watcher(cert.source.parent,
                                    lambda: self._events.post(CertificateChanged()),
                                    tree=False, quiet=0.1)
            self._watcher.start()
        self.check_expiry()

    # -- rotation ----------------------------------------------------------------------

    def candidate_valid(self) -> bool:
        """The user's file changed and what it holds now can be served; kept as the
        candidate.  A bad one is refused once, logged, and the old one stays."""
        cert = self._certificate
        if cert is None or cert.source is None:
            return False
        if file_digest(cert.source) == cert.digest:
            return False  # a touch, or an event about another file in the folder
        try:
            self._candidate = certs.obtain(str(cert.source), self._paths.state_dir,
                                           self._config.tls_key_password)
        except tls.TLSError as exc:
            log.error("certificate_refused", reason=str(exc),
                      in_service=cert.bundle.fingerprint)
            cert.digest = file_digest(cert.source)
            return False
        return True

    def _publish(self, cert: certs.Certificate) -> Path:
        # nginx's master reads it: whaletopd's own user.
        return certs.publish(cert, self._paths.state_dir, self._paths.run_dir,
                             os.geteuid(), os.getegid())

    def put_candidate_in_service(self) -> bool:
        """Write the candidate's files, then serve it; False (logged, the old one stays)
        when they cannot be written."""
        assert self._candidate is not None, "candidate_valid() comes first"
        new, old = self._candidate, self._certificate
        self._candidate = None
        with step("reload_tls") as out:
            try:
                self._pem = self._publish(new)
            except OSError as exc:
                log.error("certificate_refused", reason=f"cannot install it: {exc}",
                          in_service=old.bundle.fingerprint if old else None)
                return False
            self._certificate = new
            out.update(new.describe())
            out["replaced"] = old.bundle.fingerprint if old else None
        self.check_expiry()
        return True

    def defer(self) -> None:
        """A change while the desktop is starting or repairing: applied once HEALTHY."""
        self._deferred = True

    def take_deferred(self) -> bool:
        deferred, self._deferred = self._deferred, False
        return deferred

    # -- expiry ------------------------------------------------------------------------

    def check_expiry(self) -> None:
        """Log the warnings now due, post expiry, or arm the next check."""
        cert = self._certificate
        if cert is None:
            return
        now = self._now()
        for threshold in cert.due_warnings(now):
            log.warning("certificate_expires_soon", within_days=threshold.days,
                        not_after=cert.describe()["not_after"],
                        fingerprint_sha256=cert.bundle.fingerprint)
        if cert.expired(now):
            self._deadlines.cancel(CHECK)
            self._events.post(CertificateExpired())
            return
        delay = cert.seconds_to_next_check(now)
        if delay is None:
            self._deadlines.cancel(CHECK)
        else:
            self._deadlines.arm(CHECK, min(delay, MAX_CHECK_DELAY) + 0.01,
                                CertificateCheckDue())

    def expired_now(self) -> bool:
        return self._certificate is not None and self._certificate.expired(self._now())

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
