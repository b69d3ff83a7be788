"""What every part of the desktop's model shares: its state, the status it writes, the
events it posts later, and how its children are found and started.

The machine's callbacks live in mixins by concern (lifecycle.py, recovery.py,
tls_rotation.py, app_menu.py); desktop.py puts them together.  They run inside the one
loop's thread and never raise for bad input or a failed step: they post an event.
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

from whaletopd import certs, children, logs, probes
from whaletopd.backoff import RestartBudget
from whaletopd.children import Child, RunAs
from whaletopd.config import Config
from whaletopd.events import (
    ChildExited,
    Event,
    EventQueue,
    Failed,
    RecoveryTimedOut,
)
from whaletopd.paths import Paths
from whaletopd.provision import ProvisionError
from whaletopd.status import StatusFile, now_iso
from whaletopd.tls import TLSError

if TYPE_CHECKING:
    from whaletopd.apps import AppMapper, AppsWatcher

log = logs.get("whaletopd")
DISPLAY = 1
# Children that hold no user state, so a restart repairs them without loss.
RESTARTABLE = frozenset({"websockify"})


class DesktopBase:
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
        self._startup_timer: threading.Timer | None = None
        self._child_env: dict[str, str] | None = None
        self._certificate: certs.Certificate | None = None
        self._candidate: certs.Certificate | None = None
        self._certificate_pending = False
        self._cert_timer: threading.Timer | None = None
        self._cert_watcher: certs.DirectoryWatcher | None = None
        self._websockify_pem: Path | None = None
        self._apps: AppMapper | None = None
        self._apps_watcher: AppsWatcher | None = None

    def note_reason(self, event: EventData) -> None:
        """Before the state changes, so on_enter_* callbacks already see the new reason."""
        ev = event.kwargs.get("event")
        self.reason = (ev.why if ev is not None else "") or self.reason

    def on_state_change(self, event: EventData) -> None:
        """On entering any state (also re-entering it), before the transition's work."""
        src = event.transition.source if event.transition else None
        if src != self.state or not self._since:
            self._since = now_iso()
        self._log_transition(event)
        self.write_status()

    def on_transition_done(self, event: EventData) -> None:
        """After every transition's work: children may have changed (pids, exit codes).
        Internal transitions (no state entered) are logged here."""
        if event.transition is not None and event.transition.dest is None:
            self._log_transition(event)
        self.write_status()

    def _log_transition(self, event: EventData) -> None:
        src = event.transition.source if event.transition else None
        log.info("transition", trigger=event.event.name, source=src, dest=self.state,
                 reason=self.reason, elapsed_ms=self._elapsed_ms())

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

    @property
    def exit_on_failure(self) -> bool:
        return self.config.exit_on_failure

    def _post_later(self, seconds: float, event: Event) -> threading.Timer:
        timer = threading.Timer(seconds, self.events.post, args=(event,))
        timer.daemon = True
        timer.start()
        # Kept to be cancelled at shutdown; the ones that already fired are let go.
        self._timers = [t for t in self._timers if t.is_alive()]
        self._timers.append(timer)
        return timer

    def _arm_recovery_deadline(self) -> None:
        if self._recovery_deadline is not None:
            self._recovery_deadline.cancel()
        seconds = self.config.startup_timeout
        self._recovery_deadline = self._post_later(seconds, RecoveryTimedOut(seconds=seconds))

    def _child(self, name: str) -> Child | None:
        return next((c for c in self.children if c.name == name), None)

    @staticmethod
    def _part(event: EventData) -> str:
        ev = event.kwargs.get("event")
        if isinstance(ev, ChildExited):
            return ev.name
        return getattr(ev, "part", "")

    def _env(self) -> dict[str, str]:
        """The children's environment: made once, after provisioning created the user."""
        if self._child_env is None:
            from whaletopd import provision as p

            assert self.run_as is not None
            name = self.config.username
            self._child_env = {
                "HOME": self.run_as.home, "USER": name, "LOGNAME": name, "SHELL": "/bin/bash",
                "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/games",
                "LANG": os.environ.get("LANG", "C.UTF-8"),
                "DISPLAY": f":{DISPLAY}",
                "XDG_RUNTIME_DIR": p.runtime_dir(self.run_as),
                "APPIMAGE_EXTRACT_AND_RUN": "1",
            }
        return dict(self._child_env)

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

    def _probes(self) -> list[probes.Probe]:
        cfg = self.config
        return probes.desktop_probes(
            cfg.vnc_port, cfg.web_port, str(self.paths.x11_socket_dir / f"X{DISPLAY}"),
            self._password, cfg.probe_timeout,
            pin=self._certificate.bundle.fingerprint if self._certificate else None)
