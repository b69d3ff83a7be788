"""RECOVERING: websockify holds no user state, so when it dies or stops answering it is
restarted (with backoff, a bounded number of times in a window) instead of giving up
the desktop.  Exits of children replaced on purpose are stale and ignored."""

from __future__ import annotations

from transitions import EventData

from whaletopd import children
from whaletopd.events import ChildExited, RestartDue
from whaletopd.model import RESTARTABLE, DesktopBase, log


class RecoveryMixin(DesktopBase):
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
