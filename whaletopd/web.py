"""The part that owns the web front's TLS: the certificate in service, the file nginx
reads, the watch on --tls-certificate's folder, a validated candidate waiting to replace
the certificate, the live renewal of the self-signed one, and the expiry warnings and
check deadline.

The file nginx reads holds the decrypted key: it lives in a private folder (0700) on a
tmpfs (/dev/shm, one in every container; the run directory only when there is none),
so it never reaches the container's writable layer, and stop() removes it.

The self-signed certificate is renewed as a user's file is rotated: once it is within
`renew_before` of its end a check posts CertificateChanged, and the machine's rotation
validates the new one (the candidate), puts it in service and has nginx reload.  Expiry
warnings are for certificates a person must replace: the self-signed one gets them only
if its renewal failed.

Making nginx reload a new certificate is the supervisor's work; the desktop puts the two
together.  Without TLS every method is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whaletopd import logs
from whaletopd.config import Config
from whaletopd.deadlines import Deadlines
from whaletopd.events import (
    CertificateChanged,
    CertificateCheckDue,
    CertificateExpired,
    EventQueue,
)
from whaletopd.logs import step
from whaletopd.paths import Paths

if TYPE_CHECKING:
    from whaletopd import certs
    from whaletopd.watch import Watcher

# certs and tls (cryptography's x509, ~7 MiB of the daemon's memory) are imported only
# by the methods that run with TLS on: a desktop without TLS never loads them.
SELF_SIGNED_DAYS = 365  # tls.SELF_SIGNED_DAYS (a test checks they agree)
RENEW_BEFORE = timedelta(days=30)  # tls.RENEW_BEFORE

log = logs.get("whaletopd")
CHECK = "certificate_check"  # the deadline of the next expiry warning or of expiry
# A deadline's clock (monotonic) stops while the host sleeps: look again at least hourly.
MAX_CHECK_DELAY = 3600.0


class WebFront:
    def __init__(self, config: Config, paths: Paths, events: EventQueue,
                 deadlines: Deadlines, now: Callable[[], datetime] | None = None, *,
                 self_signed_days: int = SELF_SIGNED_DAYS,
                 renew_before: timedelta = RENEW_BEFORE) -> None:
        self._config = config
        self._now = now or (lambda: datetime.now(UTC))
        self._self_signed_days = self_signed_days
        self._renew_before = renew_before
        self._renewal_failed = False
        self._paths = paths
        self._events = events
        self._deadlines = deadlines
        self._certificate: certs.Certificate | None = None
        self._candidate: certs.Certificate | None = None
        self._deferred = False
        self._pem: Path | None = None
        self._pem_dir: Path | None = None  # the private folder on tmpfs, when there is one
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
        from whaletopd import certs

        with step("tls_validate") as out:
            self._certificate = certs.obtain(self._config.tls_certificate,
                                             self._paths.state_dir,
                                             self._config.tls_key_password,
                                             now=self._now(), days=self._self_signed_days,
                                             renew_before=self._renew_before)
            out.update(self._certificate.describe())

    def install(self) -> None:
        """Give nginx its file, watch the user's file for changes, check expiry."""
        cert = self._certificate
        if cert is None:
            return
        with step("tls_install") as out:
            self._pem = self._served_pem()
            self._publish(cert)
            out["served_from"] = str(self._pem)
        if cert.source is not None:
            from whaletopd.watch import Watcher  # watchdog: only when there is a file to watch

            self._watcher = Watcher(cert.source.parent,
                                    lambda: self._events.post(CertificateChanged()),
                                    tree=False, quiet=0.1)
            self._watcher.start()
        self.check_expiry()

    # -- rotation ----------------------------------------------------------------------

    def candidate_valid(self) -> bool:
        """The user's file changed and what it holds now can be served, or the self-signed
        certificate is due for renewal and a new one was made; kept as the candidate.  A
        bad one is refused once, logged, and the old one stays."""
        from whaletopd import certs, tls
        cert = self._certificate
        if cert is None:
            return False
        if cert.source is None:
            return self._renewal_candidate(cert)
        try:
            data: bytes | None = tls.read(cert.source)
            problem: tls.TLSError | None = None
        except tls.TLSError as exc:
            data, problem = None, exc
        digest = None if data is None else certs.digest(data)
        if digest == cert.digest:
            return False  # a touch, or an event about another file in the folder
        try:
            if problem is not None:
                raise problem
            assert data is not None
            self._candidate = certs.from_file(cert.source, data,
                                              self._config.tls_key_password, self._now())
        except tls.TLSError as exc:
            log.error("certificate_refused", reason=str(exc),
                      in_service=cert.bundle.fingerprint)
            cert.digest = digest
            return False
        return True

    def _renews(self, cert: certs.Certificate) -> bool:
        """The self-signed certificate is renewed here, unless that failed once."""
        return cert.source is None and not self._renewal_failed

    def _renew_at(self, cert: certs.Certificate) -> datetime:
        return cert.bundle.not_after - self._renew_before

    def _renewal_candidate(self, cert: certs.Certificate) -> bool:
        from whaletopd import certs, tls
        now = self._now()
        if not self._renews(cert) or now < self._renew_at(cert):
            return False
        try:
            self._candidate = certs.renew_self_signed(self._paths.state_dir, now=now,
                                                      days=self._self_signed_days)
        except (tls.TLSError, ValueError) as exc:
            self._renewal_failed = True
            log.error("certificate_renewal_failed", reason=str(exc),
                      in_service=cert.bundle.fingerprint, not_after=cert.describe()["not_after"])
            return False
        return True

    def _served_pem(self) -> Path:
        """Where nginx reads the certificate and key: paths.tls_pem, in a private folder
        (0700, whaletopd's own) on the tmpfs; a new private folder there if that name is
        taken by anything else; the run directory only when there is no tmpfs."""
        from whaletopd import certs
        folder = self._paths.tls_pem.parent
        try:
            with contextlib.suppress(FileExistsError):
                folder.mkdir(mode=0o700)
            st = folder.lstat()
            if not (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()):
                folder = Path(tempfile.mkdtemp(prefix="whaletop-tls.", dir=folder.parent))
            folder.chmod(0o700)
        except OSError:  # no /dev/shm (docker run --ipc=none)
            return self._paths.run_dir / certs.SERVED_PEM
        self._pem_dir = folder
        return folder / certs.SERVED_PEM

    def _publish(self, cert: certs.Certificate) -> None:
        from whaletopd import certs, tls
        # nginx's master reads it: whaletopd's own user.
        assert self._pem is not None, "install() chooses where first"
        if cert.source is None and cert is not self._certificate:
            tls.keep_self_signed(self._paths.state_dir, cert.bundle)  # a renewal
        certs.publish(cert, self._paths.state_dir, self._pem, os.geteuid(), os.getegid())

    def put_candidate_in_service(self) -> bool:
        """Write the candidate's files, then serve it; False (logged, the old one stays)
        when they cannot be written."""
        assert self._candidate is not None, "candidate_valid() comes first"
        new, old = self._candidate, self._certificate
        self._candidate = None
        with step("reload_tls") as out:
            try:
                self._publish(new)
            except OSError as exc:
                if new.source is None:
                    self._renewal_failed = True
                log.error("certificate_refused", reason=f"cannot install it: {exc}",
                          in_service=old.bundle.fingerprint if old else None)
                return False
            self._certificate = new
            out.update(new.describe())
            out["replaced"] = old.bundle.fingerprint if old else None
            if new.source is None:
                out["renewed"] = True
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
        """Renew the self-signed certificate when due, log the warnings now due, post
        expiry, or arm the next check."""
        cert = self._certificate
        if cert is None:
            return
        now = self._now()
        renews = self._renews(cert)
        if renews and now >= self._renew_at(cert):
            # Again at each check until it is in service (a change while the desktop
            # starts or repairs is deferred; once HEALTHY, a renewed one is not due).
            self._events.post(CertificateChanged())
        for threshold in ([] if renews else cert.due_warnings(now)):
            log.warning("certificate_expires_soon", within_days=threshold.days,
                        not_after=cert.describe()["not_after"],
                        fingerprint_sha256=cert.bundle.fingerprint)
        if cert.expired(now):
            self._deadlines.cancel(CHECK)
            self._events.post(CertificateExpired())
            return
        delay = cert.seconds_to_next_check(now)
        if renews and self._renew_at(cert) > now:
            until = (self._renew_at(cert) - now).total_seconds()
            delay = until if delay is None else min(delay, until)
        if delay is None:
            self._deadlines.cancel(CHECK)
        else:
            self._deadlines.arm(CHECK, min(delay, MAX_CHECK_DELAY) + 0.01,
                                CertificateCheckDue())

    def expired_now(self) -> bool:
        return self._certificate is not None and self._certificate.expired(self._now())

    def stop(self) -> None:
        """End the watch; remove nginx's copy of the key (nginx holds what it loaded)."""
        if self._watcher is not None:
            self._watcher.stop()
        if self._pem is not None:
            with contextlib.suppress(OSError):  # stopping goes on whatever happened to it
                self._pem.unlink()
        if self._pem_dir is not None:
            shutil.rmtree(self._pem_dir, ignore_errors=True)
