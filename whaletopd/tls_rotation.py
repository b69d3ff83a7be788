"""TLS while running: a changed --tls-certificate is validated and, if good, put in
service with only websockify restarted (RELOADING_TLS); expiry warnings and expiry."""

from __future__ import annotations

from transitions import EventData

from whaletopd import certs, children
from whaletopd.events import CertificateChanged, CertificateCheckDue, CertificateExpired
from whaletopd.model import DesktopBase, log
from whaletopd.tls import TLSError


class CertificateMixin(DesktopBase):
    def _watch_certificate(self) -> None:
        cert = self._certificate
        if cert is None or cert.source is None:
            return
        self._cert_watcher = certs.DirectoryWatcher(
            cert.source.parent, lambda: self.events.post(CertificateChanged()))
        self._cert_watcher.start()

    def new_certificate_valid(self, event: EventData) -> bool:
        """Condition: the file changed and what it holds now can be served."""
        from whaletopd import tls

        cert = self._certificate
        if cert is None or cert.source is None:
            return False
        if tls.file_digest(cert.source) == cert.digest:
            return False  # a touch, or an event about another file in the folder
        try:
            self._candidate = certs.obtain(str(cert.source), self.paths.state_dir,
                                           self.config.tls_key_password)
        except TLSError as exc:
            log.error("certificate_refused", reason=str(exc),
                      in_service=cert.bundle.fingerprint)
            cert.digest = tls.file_digest(cert.source)  # refuse this content once
            return False
        return True

    def expiry_is_the_problem(self, event: EventData) -> bool:
        return self.reason == CertificateExpired.summary and not self.exit_on_failure

    def reload_certificate(self, event: EventData) -> None:
        assert self._candidate is not None
        assert self.run_as is not None
        old, self._certificate, self._candidate = self._certificate, self._candidate, None
        with self._step("reload_tls") as out:
            certs.publish(self._certificate, self.paths.state_dir, self.paths.run_dir,
                          self.run_as.uid, self.run_as.gid)
            out.update(self._certificate.describe())
            out["replaced"] = old.bundle.fingerprint if old else None
        self._check_certificate()
        web = self._child("websockify")
        if web is not None:
            web.retired = True
            children.stop([web], deadline=0.5)
            self._respawn_websockify(web)
        if self._prober is not None:
            self._prober.reset(self._probes())
        self._arm_recovery_deadline()

    def defer_certificate(self, event: EventData) -> None:
        self._certificate_pending = True

    def check_certificate(self, event: EventData) -> None:
        self._check_certificate()

    def _check_certificate(self) -> None:
        """Log the expiry warnings now due, post expiry, and arm the next check."""
        cert = self._certificate
        if cert is None:
            return
        for threshold in cert.due_warnings():
            log.warning("certificate_expires_soon", within_days=threshold.days,
                        not_after=cert.describe()["not_after"],
                        fingerprint_sha256=cert.bundle.fingerprint)
        if cert.expired():
            self.events.post(CertificateExpired())
            return
        if self._cert_timer is not None:
            self._cert_timer.cancel()
        delay = cert.seconds_to_next_check()
        if delay is not None:
            # A timer's clock stops while the host sleeps: never wait more than an hour.
            self._cert_timer = self._post_later(min(delay, 3600.0) + 0.01,
                                                CertificateCheckDue())

    def certificate_expired_now(self, event: EventData) -> bool:
        return self._certificate is not None and self._certificate.expired()
