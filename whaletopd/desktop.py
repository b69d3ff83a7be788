"""The machine's model: what each transition does.

Methods named in machine.TRANSITIONS run inside the one loop's thread.  They never
raise for bad input or a failed step: they post an event (Failed, Provisioned, ...) and
the machine moves on from there.  Blocking work here is bounded: provisioning steps are
short, stopping children has a deadline.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transitions import EventData

if TYPE_CHECKING:
    from whaletopd.apps import AppMapper, AppsWatcher

from whaletopd import certs, children, logs, probes
from whaletopd.backoff import RestartBudget
from whaletopd.children import Child, RunAs
from whaletopd.config import Config
from whaletopd.events import (
    AppsChanged,
    CertificateChanged,
    CertificateCheckDue,
    CertificateExpired,
    ChildExited,
    DisplayReady,
    Event,
    EventQueue,
    Failed,
    Launched,
    Provisioned,
    RecoveryTimedOut,
    RestartDue,
    ShutDown,
    StartupTimedOut,
)
from whaletopd.machine import EXIT_CODES
from whaletopd.paths import Paths
from whaletopd.provision import ProvisionError
from whaletopd.status import StatusFile, now_iso
from whaletopd.tls import TLSError

log = logs.get("whaletopd")
DISPLAY = 1
# Children that hold no user state, so a restart repairs them without loss.
RESTARTABLE = frozenset({"websockify"})
# Xvnc logs every connection (status, level 10), health probes included, a dozen lines
# each: keep only errors (level 0) of those modules.  websockify logs browser connections.
XVNC_LOG = ",".join(["*:stderr:30"] + [
    f"{module}:stderr:0"
    for module in ("Connections", "VNCSConnST", "EncodeManager", "ComparingUpdateTracker")])


class Desktop:
    """Holds what the machine needs to know; its state attribute is set by transitions."""

    state: str

    def __init__(self, config: Config, events: EventQueue, paths: Paths | None = None) -> None:
        self.config = config
        self.events = events
        self.paths = paths or Paths()
        self.status = StatusFile(self.paths.status, self.paths.status_json)
        self.children: list[Child] = []
        self.run_as: RunAs | None = None
        self.reason = ""
        self.exit_code: int | None = None
        self._prober: probes.Prober | None = None
        self._timers: list[threading.Timer] = []
        self._t0 = time.monotonic()
        self._password = ""
        self._since = ""
        self._restarts = RestartBudget()
        self._recovery_deadline: threading.Timer | None = None
        self._certificate: certs.Certificate | None = None
        self._candidate: certs.Certificate | None = None
        self._certificate_pending = False
        self._cert_timer: threading.Timer | None = None
        self._cert_watcher: certs.DirectoryWatcher | None = None
        self._websockify_pem: Path | None = None
        self._apps: AppMapper | None = None
        self._apps_watcher: AppsWatcher | None = None

    # -- bookkeeping shared by every transition ---------------------------------------

    def note_reason(self, event: EventData) -> None:
        """Before the state changes, so on_enter_* callbacks already see the new reason."""
        ev = event.kwargs.get("event")
        self.reason = (ev.why if ev is not None else "") or self.reason

    def on_state_change(self, event: EventData) -> None:
        src = event.transition.source if event.transition else None
        if src != self.state or not self._since:
            self._since = now_iso()
        log.info("transition", trigger=event.event.name, source=src, dest=self.state,
                 reason=self.reason, elapsed_ms=self._elapsed_ms())
        self.write_status()

    def write_status(self) -> None:
        self.status.write(self.state, self.reason, since=self._since, detail={
            "username": self.config.username,
            "exit_on_failure": self.exit_on_failure,
            "web_port": self.config.web_port,
            "vnc_port": self.config.vnc_port,
            "children": {c.name: {"pid": c.pid, "running": c.returncode is None,
                                  "returncode": c.returncode} for c in self.children},
            "tls": self._certificate.describe() if self._certificate else None,
            "apps": self._apps.mapped() if self._apps else {},
            "apps_skipped": self._apps.skipped() if self._apps else {},
            "restarts": {"websockify": self._restarts.used(),
                         "allowed": self._restarts.attempts,
                         "window_s": self._restarts.window},
        })

    def _elapsed_ms(self) -> float:
        return round((time.monotonic() - self._t0) * 1000, 1)

    @contextmanager
    def _step(self, name: str, **fields: Any) -> Iterator[dict[str, Any]]:
        t0 = time.monotonic()
        extra: dict[str, Any] = {}
        yield extra
        log.info("step", step=name, duration_ms=round((time.monotonic() - t0) * 1000, 1),
                 **fields, **extra)

    def _fail_on_error(self, work: Callable[[], None]) -> None:
        try:
            work()
        except (ProvisionError, TLSError, OSError) as exc:
            self.events.post(Failed(reason=str(exc)))

    # -- STARTING: provisioning, then the display -------------------------------------

    def provision(self, event: EventData) -> None:
        self._fail_on_error(self._provision)

    def _provision(self) -> None:
        from whaletopd import provision as p

        cfg = self.config
        with self._step("prepare_dirs"):
            p.prepare_dirs(self.paths)
        with self._step("clear_stale_x_lock") as out:
            out["removed"] = p.clear_stale_x_lock(self.paths, DISPLAY)
        with self._step("ensure_user", username=cfg.username) as out:
            self.run_as, out["done"] = p.ensure_user(cfg, self.paths)
        with self._step("clear_session_leftovers") as out:
            out["removed"] = p.clear_session_leftovers(Path(self.run_as.home))
        with self._step("configure_sudo") as out:
            out["result"] = p.configure_sudo(cfg, self.paths)
        with self._step("vnc_password"):
            password = cfg.vnc_password or p.generate_password()
            p.write_password(password, self.paths, self.run_as)
        self._password = password
        with self._step("map_apps") as out:
            out.update(self._start_apps())
        if cfg.tls:
            with self._step("tls") as out:
                self._certificate = certs.obtain(cfg.tls_certificate, self.paths.state_dir,
                                                 cfg.tls_key_password)
                self._websockify_pem = certs.publish(
                    self._certificate, self.paths.state_dir, self.paths.run_dir,
                    self.run_as.uid, self.run_as.gid)
                out.update(self._certificate.describe())
            self._watch_certificate()
            self._check_certificate()
        if cfg.vnc_password is None:
            log.info("vnc_password", password=password, file=str(self.paths.vnc_passwd))
        elif len(cfg.vnc_password) > p.VNC_PASSWORD_LENGTH:
            log.warning("vnc_password_truncated", length=len(cfg.vnc_password),
                        reason="VNC authentication uses only the first 8 characters")
        self.events.post(Provisioned())

    def _env(self) -> dict[str, str]:
        from whaletopd import provision as p

        assert self.run_as is not None
        name = self.config.username
        return {
            "HOME": self.run_as.home, "USER": name, "LOGNAME": name, "SHELL": "/bin/bash",
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/games",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "DISPLAY": f":{DISPLAY}",
            "XDG_RUNTIME_DIR": p.runtime_dir(self.run_as),
            "APPIMAGE_EXTRACT_AND_RUN": "1",
        }

    def launch_display(self, event: EventData) -> None:
        self._fail_on_error(self._launch_display)

    def _launch_display(self) -> None:
        assert self.run_as is not None
        cfg = self.config
        env = self._env()
        self._post_later(cfg.startup_timeout, StartupTimedOut(seconds=cfg.startup_timeout))
        read_fd, write_fd = os.pipe()
        with self._step("launch_xvnc"):
            self.children.append(children.spawn("xvnc", [
                "Xvnc", f":{DISPLAY}",
                "-geometry", cfg.geometry, "-depth", str(cfg.depth),
                "-rfbport", str(cfg.vnc_port),
                "-localhost", "0" if cfg.expose_vnc else "1",
                "-SecurityTypes", "VncAuth", "-PasswordFile", str(self.paths.vnc_auth),
                "-AlwaysShared", "-AcceptSetDesktopSize", "-desktop", "whaletop",
                "-nolisten", "tcp", "-nolisten", "local", "-Log", XVNC_LOG,
                "-displayfd", str(write_fd),
            ], self.run_as, env, self.events, pass_fds=(write_fd,)))
        os.close(write_fd)
        threading.Thread(target=_await_display, args=(read_fd, self.events),
                         name="displayfd", daemon=True).start()
        # websockify needs only the port number, not a running Xvnc: start it alongside.
        with self._step("launch_websockify"):
            self.children.append(self._spawn_websockify(env))

    def _spawn_websockify(self, env: dict[str, str]) -> Child:
        assert self.run_as is not None
        cfg = self.config
        tls_args = ([] if self._websockify_pem is None
                    else ["--cert", str(self._websockify_pem), "--ssl-only"])
        return children.spawn("websockify", [
            "websockify", *tls_args, "--web", str(self.paths.novnc_dir),
            f"0.0.0.0:{cfg.web_port}", f"127.0.0.1:{cfg.vnc_port}",
        ], self.run_as, env, self.events)

    def _respawn_websockify(self, old: Child) -> Child | None:
        """Replace `old` in place (stop order stays reverse start order).  A spawn that
        fails is logged; the recovery deadline then ends the desktop UNHEALTHY."""
        try:
            new = self._spawn_websockify(self._env())
        except OSError as exc:
            log.error("restart_failed", child=old.name, reason=str(exc))
            return None
        self.children[self.children.index(old)] = new
        return new

    def _post_later(self, seconds: float, event: Event) -> threading.Timer:
        timer = threading.Timer(seconds, self.events.post, args=(event,))
        timer.daemon = True
        timer.start()
        self._timers.append(timer)
        return timer

    def launch_session(self, event: EventData) -> None:
        self._fail_on_error(self._launch_session)

    def _launch_session(self) -> None:
        assert self.run_as is not None
        with self._step("launch_session"):
            self.children.append(children.spawn(
                "session", ["dbus-run-session", "--", "startlxde"],
                self.run_as, self._env(), self.events))
        self.events.post(Launched())

    def _probes(self) -> list[probes.Probe]:
        cfg = self.config
        return probes.desktop_probes(
            cfg.vnc_port, cfg.web_port, str(self.paths.x11_socket_dir / f"X{DISPLAY}"),
            self._password, cfg.probe_timeout,
            pin=self._certificate.bundle.fingerprint if self._certificate else None)

    def start_probes(self, event: EventData) -> None:
        self._prober = probes.Prober(self._probes(), self.events,
                                     interval=self.config.probe_interval)
        self._prober.start()

    # -- RECOVERING: restart what holds no user state ------------------------------------

    def _child(self, name: str) -> Child | None:
        return next((c for c in self.children if c.name == name), None)

    @staticmethod
    def _part(event: EventData) -> str:
        ev = event.kwargs.get("event")
        if isinstance(ev, ChildExited):
            return ev.name
        return getattr(ev, "part", "")

    def restartable(self, event: EventData) -> bool:
        return self._part(event) in RESTARTABLE and self._restarts.allowed()

    def retryable(self, event: EventData) -> bool:
        return self._part(event) in RESTARTABLE and not self.exit_on_failure

    def stale(self, event: EventData) -> bool:
        """The exit of a child that was already replaced (or stopped on purpose)."""
        ev = event.kwargs.get("event")
        current = self._child(ev.name) if isinstance(ev, ChildExited) else None
        return isinstance(ev, ChildExited) and (
            current is None or current.pid != ev.pid or current.retired)

    def recover(self, event: EventData) -> None:
        name = self._part(event)
        child = self._child(name)
        if child is not None:
            child.retired = True  # whatever it does from now on is not news
            if child.returncode is None:
                children.stop([child], deadline=0.5)  # hung (its probe failed)
        delay = self._restarts.record()
        log.warning("restart_scheduled", child=name, delay_s=delay,
                    attempt=self._restarts.used(), of=self._restarts.attempts,
                    window_s=self._restarts.window, reason=self.reason)
        self._post_later(delay, RestartDue(name=name))
        self._arm_recovery_deadline()

    def _arm_recovery_deadline(self) -> None:
        if self._recovery_deadline is not None:
            self._recovery_deadline.cancel()
        seconds = self.config.startup_timeout
        self._recovery_deadline = self._post_later(seconds, RecoveryTimedOut(seconds=seconds))

    def retry_later(self, event: EventData) -> None:
        """--no-exit-on-failure: try again once the restart budget allows."""
        name = self._part(event)
        delay = max(self._restarts.refill_in(), 1.0)
        log.warning("restart_scheduled", child=name, delay_s=round(delay, 3),
                    reason="restart budget used up; retrying later")
        self._post_later(delay, RestartDue(name=name))

    def restart_child(self, event: EventData) -> None:
        ev = event.kwargs["event"]
        old = self._child(ev.name)
        if old is None or ev.name not in RESTARTABLE:
            return
        if old.returncode is None:
            old.retired = True
            children.stop([old], deadline=0.5)
        with self._step("restart_" + ev.name):
            new = self._respawn_websockify(old)
        if new is None:
            return
        if self._prober is not None:
            self._prober.reset()

    # -- /Apps: applications in the menu, live ---------------------------------------------

    def _start_apps(self) -> dict[str, Any]:
        from whaletopd import apps

        self._apps = apps.AppMapper(self.paths.apps_root, self.paths.applications_dir,
                                    self.paths.apps_manifest)
        # Watch first: a file written during the first sync still causes a second one.
        self._apps_watcher = apps.AppsWatcher(self.paths.apps_root,
                                              lambda: self.events.post(AppsChanged()))
        self._apps_watcher.start()
        changes = self._sync_apps()
        return {"mapped": len(self._apps.mapped()), "changes": changes}

    def map_apps(self, event: EventData) -> None:
        with self._step("map_apps") as out:
            out["changes"] = self._sync_apps()

    def _sync_apps(self) -> int:
        if self._apps is None:
            return 0
        try:
            changes = self._apps.sync()
        except OSError as exc:  # the manifest cannot be written: never fatal
            log.error("apps_sync_failed", reason=str(exc))
            return 0
        for change in changes:
            fields = {"name": change.name, "source": change.source}
            if change.kind == "skipped":
                log.warning("app_skipped", reason=change.reason, **fields)
            else:
                log.info(f"app_{change.kind}", **fields,
                         **({"reason": change.reason} if change.reason else {}))
        return len(changes)

    # -- TLS: rotation and expiry -----------------------------------------------------------

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

    # -- leaving: STOPPING, FAILED, UNHEALTHY ------------------------------------------

    def on_enter_STOPPING(self, event: EventData) -> None:
        self.events.post(ShutDown())

    def on_enter_FAILED(self, event: EventData) -> None:
        log.error("failed", reason=self.reason)
        self.events.post(ShutDown())

    def on_enter_HEALTHY(self, event: EventData) -> None:
        if self._recovery_deadline is not None:
            self._recovery_deadline.cancel()
            self._recovery_deadline = None
        if self._certificate_pending:
            self._certificate_pending = False
            self.events.post(CertificateChanged())

    def on_enter_UNHEALTHY(self, event: EventData) -> None:
        log.error("unhealthy", reason=self.reason, exit_on_failure=self.exit_on_failure)
        if self.exit_on_failure:
            self.events.post(ShutDown())

    @property
    def exit_on_failure(self) -> bool:
        return self.config.exit_on_failure

    def stop_children(self, event: EventData) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._prober is not None:
            self._prober.stop()
        for watcher in (self._cert_watcher, self._apps_watcher):
            if watcher is not None:
                watcher.stop()
        for child in self.children:
            child.retired = True
        with self._step("stop_children", children=[c.name for c in reversed(self.children)]):
            children.stop(self.children)

    def exit(self, event: EventData) -> None:
        self.exit_code = EXIT_CODES[self.state]


def _await_display(read_fd: int, events: EventQueue) -> None:
    """Xvnc writes its display number to -displayfd once it accepts clients."""
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.readline()
    if data.strip():
        events.post(DisplayReady(display=":" + data.decode().strip()))
