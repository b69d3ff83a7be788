"""The lifecycle proper: provisioning, launching Xvnc, websockify and the session in
dependency order, probing, and leaving (STOPPING, FAILED, UNHEALTHY) in reverse order."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from transitions import EventData

from whaletopd import certs, children, probes
from whaletopd.app_menu import AppsMixin
from whaletopd.events import (
    CertificateChanged,
    DisplayReady,
    EventQueue,
    Launched,
    Provisioned,
    ShutDown,
    StartupTimedOut,
)
from whaletopd.machine import EXIT_CODES
from whaletopd.model import DISPLAY, log
from whaletopd.tls_rotation import CertificateMixin

# Xvnc logs every connection (status, level 10), health probes included, a dozen lines
# each: keep only errors (level 0) of those modules.  websockify logs browser connections.
XVNC_LOG = ",".join(["*:stderr:30"] + [
    f"{module}:stderr:0"
    for module in ("Connections", "SConnection", "VNCSConnST", "EncodeManager",
                   "ComparingUpdateTracker")])


class LifecycleMixin(AppsMixin, CertificateMixin):
    # -- STARTING: provisioning, then the display -------------------------------------

    def provision(self, event: EventData) -> None:
        self._fail_on_error(self._provision)

    def _provision(self) -> None:
        from whaletopd import provision as p

        cfg = self.config
        if cfg.tls:
            # First: a bad certificate ends in FAILED before anything else is touched.
            with self._step("tls_validate") as out:
                self._certificate = certs.obtain(cfg.tls_certificate, self.paths.state_dir,
                                                 cfg.tls_key_password)
                out.update(self._certificate.describe())
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
        if self._certificate is not None:
            with self._step("tls_install"):
                self._websockify_pem = certs.publish(
                    self._certificate, self.paths.state_dir, self.paths.run_dir,
                    self.run_as.uid, self.run_as.gid)
            self._watch_certificate()
            self._check_certificate()
        if cfg.vnc_password is None:
            log.info("vnc_password", password=password, file=str(self.paths.vnc_passwd))
        elif len(cfg.vnc_password) > p.VNC_PASSWORD_LENGTH:
            log.warning("vnc_password_truncated", length=len(cfg.vnc_password),
                        reason="VNC authentication uses only the first 8 characters")
        self.events.post(Provisioned())

    def launch_display(self, event: EventData) -> None:
        self._fail_on_error(self._launch_display)

    def _launch_display(self) -> None:
        assert self.run_as is not None
        cfg = self.config
        env = self._env()
        self._startup_timer = self._post_later(cfg.startup_timeout,
                                               StartupTimedOut(seconds=cfg.startup_timeout))
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

    def launch_session(self, event: EventData) -> None:
        self._fail_on_error(self._launch_session)

    def _launch_session(self) -> None:
        assert self.run_as is not None
        with self._step("launch_session"):
            self.children.append(children.spawn(
                "session", ["dbus-run-session", "--", "startlxde"],
                self.run_as, self._env(), self.events))
        self.events.post(Launched())

    def start_probes(self, event: EventData) -> None:
        self._prober = probes.Prober(self._probes(), self.events,
                                     interval=self.config.probe_interval)
        self._prober.start()

    # -- leaving: STOPPING, FAILED, UNHEALTHY ------------------------------------------

    def on_enter_STOPPING(self, event: EventData) -> None:
        self.events.post(ShutDown())

    def on_enter_FAILED(self, event: EventData) -> None:
        log.error("failed", reason=self.reason)
        self.events.post(ShutDown())

    def on_enter_HEALTHY(self, event: EventData) -> None:
        if self._startup_timer is not None:
            self._startup_timer.cancel()
            self._startup_timer = None
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
