"""Everything that can change the desktop's state, as values on one queue.

Producers (signal handlers, child watchers, the prober, file watchers) only `post()`;
deadlines (deadlines.py) hand the loop their events when due.  The loop in loop.py is
the only consumer; it turns each event into the machine trigger named by the event's
class attribute `trigger`.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Event:
    trigger: ClassVar[str]
    summary: ClassVar[str] = ""
    # Routine and frequent, changing nothing a reader sees: no log line, no status write.
    quiet: ClassVar[bool] = False

    @property
    def why(self) -> str:
        """Why the machine moved, for the log and status.json's `reason`."""
        return self.summary


@dataclass(frozen=True)
class Start(Event):
    trigger: ClassVar[str] = "start"
    summary: ClassVar[str] = "provisioning the user and launching the X server"


@dataclass(frozen=True)
class Provisioned(Event):
    trigger: ClassVar[str] = "provisioned"


@dataclass(frozen=True)
class ChildReady(Event):
    """A child said it is ready (Xvnc through -displayfd): what waits for it can start."""

    trigger: ClassVar[str] = "child_ready"
    name: str


@dataclass(frozen=True)
class Launched(Event):
    trigger: ClassVar[str] = "launched"
    summary: ClassVar[str] = "Xvnc, websockify, nginx and the LXDE session are launched"


@dataclass(frozen=True)
class ProbePassed(Event):
    trigger: ClassVar[str] = "probe_passed"
    summary: ClassVar[str] = "a VNC login through nginx's WebSocket, and noVNC's page, answer"
    generation: int = 0  # the prober's round of checks this verdict comes from


@dataclass(frozen=True)
class ProbeFailed(Event):
    trigger: ClassVar[str] = "probe_failed"
    reason: str
    part: str  # "xvnc" or "websockify": which child the failed check points at
    generation: int = 0

    @property
    def why(self) -> str:
        return f"health check failed: {self.reason}"


@dataclass(frozen=True)
class RestartDue(Event):
    """A restart's backoff delay is over."""

    trigger: ClassVar[str] = "restart_due"
    name: str

    @property
    def why(self) -> str:
        return f"restarting {self.name}"


@dataclass(frozen=True)
class RecoveryTimedOut(Event):
    trigger: ClassVar[str] = "recovery_timed_out"
    seconds: float

    @property
    def why(self) -> str:
        return f"not HEALTHY again within {self.seconds:g} s of a restart"


@dataclass(frozen=True)
class AppsChanged(Event):
    """Something changed under /Apps (debounced): map .desktop files again."""

    trigger: ClassVar[str] = "apps_changed"


@dataclass(frozen=True)
class AppsMapped(Event):
    """A mapping of /Apps (done off the loop's thread: a mount may hang) ended: the menu
    is the loop's to read again, and a change seen meanwhile is mapped next.  Its own
    step line says what changed: the transition is not logged."""

    trigger: ClassVar[str] = "apps_mapped"
    quiet: ClassVar[bool] = True


@dataclass(frozen=True)
class MenuCheckDue(Event):
    """Time to look whether LXDE's menu-cached watches the application folder yet."""

    trigger: ClassVar[str] = "menu_check_due"
    quiet: ClassVar[bool] = True


@dataclass(frozen=True)
class CertificateChanged(Event):
    """Something changed in the directory of --tls-certificate (debounced)."""

    trigger: ClassVar[str] = "certificate_changed"
    summary: ClassVar[str] = "a new certificate is in service; nginx reloads it gracefully"


@dataclass(frozen=True)
class WebUsersChanged(Event):
    """Something changed in the directory of --web-users (debounced)."""

    trigger: ClassVar[str] = "web_users_changed"


@dataclass(frozen=True)
class KeyboardAsked(Event):
    """A request appeared in the keyboard's requests folder (debounced; kbswitch.py).
    Quiet: the work logs what it did."""

    trigger: ClassVar[str] = "keyboard_asked"
    quiet: ClassVar[bool] = True


@dataclass(frozen=True)
class KeyboardSwitched(Event):
    """A worker took the keyboard's requests: `layout` is applied to the X server (None:
    nothing was, and the requests are gone).  Quiet: its own line says what changed."""

    trigger: ClassVar[str] = "keyboard_switched"
    quiet: ClassVar[bool] = True
    layout: str | None
    who: str = ""


@dataclass(frozen=True)
class CertificateCheckDue(Event):
    """Time to log an expiry warning, or to notice that the certificate expired."""

    trigger: ClassVar[str] = "certificate_check_due"


@dataclass(frozen=True)
class CertificateExpired(Event):
    trigger: ClassVar[str] = "certificate_expired"
    summary: ClassVar[str] = "certificate expired"


@dataclass(frozen=True)
class ClientsCheckDue(Event):
    """Time to count the VNC clients connected (clients.py)."""

    trigger: ClassVar[str] = "clients_check_due"
    quiet: ClassVar[bool] = True


@dataclass(frozen=True)
class ClientsChanged(Event):
    """The number of VNC clients connected changed (None: it cannot be told).  Quiet:
    status.json's `clients` says it; a client back in IDLE is a transition, logged."""

    trigger: ClassVar[str] = "clients_changed"
    quiet: ClassVar[bool] = True
    count: int | None


@dataclass(frozen=True)
class IdleSoon(Event):
    """--stop-when-idle: nobody connected for a while; the stop comes `minutes_left` later."""

    trigger: ClassVar[str] = "idle_soon"
    idle_minutes: float
    minutes_left: float

    @property
    def why(self) -> str:
        return (f"no client connected for {self.idle_minutes:g} minutes: stopping in "
                f"{self.minutes_left:g} minutes unless one connects")


@dataclass(frozen=True)
class IdleTimedOut(Event):
    trigger: ClassVar[str] = "idle_timed_out"
    minutes: float

    @property
    def why(self) -> str:
        return f"no client connected for {self.minutes:g} minutes"


@dataclass(frozen=True)
class StartupTimedOut(Event):
    trigger: ClassVar[str] = "startup_timed_out"
    seconds: float

    @property
    def why(self) -> str:
        return f"not HEALTHY within {self.seconds:g} s of start"


@dataclass(frozen=True)
class ChildExited(Event):
    trigger: ClassVar[str] = "child_exited"
    name: str
    pid: int
    returncode: int

    @property
    def why(self) -> str:
        if self.returncode < 0:
            return f"{self.name} (pid {self.pid}) was killed by signal {-self.returncode}"
        return f"{self.name} (pid {self.pid}) exited with code {self.returncode}"


@dataclass(frozen=True)
class Failed(Event):
    """Bad input or a provisioning step that cannot succeed: the desktop never starts."""

    trigger: ClassVar[str] = "fail"
    reason: str

    @property
    def why(self) -> str:
        return self.reason


@dataclass(frozen=True)
class StopRequested(Event):
    trigger: ClassVar[str] = "stop"
    reason: str

    @property
    def why(self) -> str:
        return self.reason


@dataclass(frozen=True)
class Crashed(Event):
    """A bug (an unexpected exception) in a worker thread: the loop raises it as its
    own, so it ends the daemon as a bug in the loop does (`crash`, exit 1)."""

    trigger: ClassVar[str] = "crash"
    error: BaseException


@dataclass(frozen=True)
class ShutDown(Event):
    """Posted on entering a state that ends the daemon: stop the children, then exit."""

    trigger: ClassVar[str] = "shut_down"


class EventQueue:
    """The one queue.  SimpleQueue.put is reentrant, so signal handlers may post too."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()

    def post(self, event: Event) -> None:
        self._queue.put(event)

    def get(self, timeout: float | None = None) -> Event | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
