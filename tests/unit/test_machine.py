"""The lifecycle: the real transitions machine around the real Desktop, driven by events
through loop.dispatch, as the daemon's loop does.

Only the steps that need root and Xvnc (provisioning, launching Xvnc/websockify/LXDE,
the network probes) and the verdicts on certificate files are replaced; the e2e suite
and test_tls.py cover those.  Status files,
exit codes, conditions, recovery, stopping children (real `sleep` processes) and the
prober thread are real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

import psutil
import pytest
from structlog.testing import capture_logs
from transitions import EventData

from whaletopd import children, loop, machine, provision
from whaletopd.backoff import RestartBudget
from whaletopd.children import Child, RunAs
from whaletopd.config import Config
from whaletopd.desktop import Desktop
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
    ProbeFailed,
    ProbePassed,
    Provisioned,
    RecoveryTimedOut,
    RestartDue,
    ShutDown,
    Start,
    StartupTimedOut,
    StopRequested,
)
from whaletopd.machine import (
    FAILED,
    HEALTHY,
    INIT,
    RECOVERING,
    RELOADING_TLS,
    STARTED,
    STARTING,
    STATES,
    STOPPED,
    STOPPING,
    UNHEALTHY,
)
from whaletopd.paths import Paths
from whaletopd.probes import Probe, ProbeError, Prober

from .helpers import WAIT, wait_for

NO_EXIT = Config(no_exit_on_failure=True)
CHILD_NAMES = ("xvnc", "websockify", "session")

EventFactory = Callable[["RecordingDesktop"], Event]


def _exit_of(name: str, returncode: int = 1) -> EventFactory:
    """The exit of the desktop's current child called `name` (not a stale one)."""
    def make(desktop: RecordingDesktop) -> Event:
        child = next(c for c in desktop.children if c.name == name)
        return ChildExited(name=name, pid=child.pid, returncode=returncode)
    return make


# One sample event per trigger.
EVENTS: dict[str, EventFactory] = {
    "start": lambda d: Start(),
    "provisioned": lambda d: Provisioned(),
    "display_ready": lambda d: DisplayReady(display=":1"),
    "launched": lambda d: Launched(),
    "probe_passed": lambda d: ProbePassed(),
    "probe_failed": lambda d: ProbeFailed(reason="VNC port 5901: timed out", part="xvnc"),
    "restart_due": lambda d: RestartDue(name="websockify"),
    "certificate_changed": lambda d: CertificateChanged(),
    "apps_changed": lambda d: AppsChanged(),
    "certificate_check_due": lambda d: CertificateCheckDue(),
    "certificate_expired": lambda d: CertificateExpired(),
    "recovery_timed_out": lambda d: RecoveryTimedOut(seconds=60.0),
    "startup_timed_out": lambda d: StartupTimedOut(seconds=60.0),
    "child_exited": _exit_of("xvnc"),
    "fail": lambda d: Failed(reason="useradd -u 1000 failed (4): UID 1000 is not unique"),
    "stop": lambda d: StopRequested(reason="received SIGTERM"),
    "shut_down": lambda d: ShutDown(),
}
WS_PROBE_FAILED = ProbeFailed(reason="web port 8080: connection refused", part="websockify")

_TO_STARTED = [Start(), Provisioned(), DisplayReady(display=":1"), Launched()]
# UNHEALTHY because the certificate expired (with --no-exit-on-failure: waiting for a new one).
_EXPIRED = [*_TO_STARTED, ProbePassed(), CertificateExpired()]
# How to reach each state from INIT, one dispatched event after another.
ROUTES: dict[str, list[Event]] = {
    INIT: [],
    STARTING: [Start()],
    STARTED: _TO_STARTED,
    HEALTHY: [*_TO_STARTED, ProbePassed()],
    RECOVERING: [*_TO_STARTED, ProbePassed(), WS_PROBE_FAILED],
    RELOADING_TLS: [*_TO_STARTED, ProbePassed(), CertificateChanged()],
    UNHEALTHY: [*_TO_STARTED, ProbePassed(),
                ProbeFailed(reason="X display :1: refused", part="xvnc")],
    STOPPING: [Start(), StopRequested(reason="received SIGINT")],
    STOPPED: [Start(), StopRequested(reason="received SIGINT"), ShutDown()],
    FAILED: [Failed(reason="bad flag")],
}


@dataclass(frozen=True)
class Case:
    trigger: str
    source: str
    dest: str
    calls: tuple[str, ...] = ()
    internal: bool = False  # the state stays; on_enter_* does not run again
    exit_code: int | None = None
    posts_shut_down: bool = False
    config: Config = field(default_factory=Config)
    event: EventFactory | None = None
    route: tuple[Event, ...] | None = None  # instead of ROUTES[source]

    @property
    def key(self) -> tuple[str, str, str | None]:
        """(trigger, source, dest) as the row of machine.TRANSITIONS spells it."""
        return self.trigger, self.source, None if self.internal else self.dest

    def make_event(self, desktop: RecordingDesktop) -> Event:
        return (self.event or EVENTS[self.trigger])(desktop)

    def __str__(self) -> str:
        extra = "-no-exit" if self.config.no_exit_on_failure else ""
        return f"{self.trigger}:{self.source}->{self.dest}{extra}"


_WS_EXIT = _exit_of("websockify")

# Every transition the desktop has, written out by hand from the design, not from the table.
CASES = [
    Case("start", INIT, STARTING, calls=("provision",)),
    Case("provisioned", STARTING, STARTING, calls=("launch_display",), internal=True),
    Case("display_ready", STARTING, STARTING, calls=("launch_session",), internal=True),
    Case("launched", STARTING, STARTED, calls=("start_probes",)),
    Case("probe_passed", STARTED, HEALTHY),
    Case("probe_passed", RECOVERING, HEALTHY),
    Case("probe_passed", RELOADING_TLS, HEALTHY),
    Case("probe_passed", UNHEALTHY, HEALTHY, config=NO_EXIT),
    # websockify holds no user state: restart it.  Xvnc or the session: give up.
    Case("probe_failed", HEALTHY, RECOVERING, calls=("recover",),
         event=lambda d: WS_PROBE_FAILED),
    Case("probe_failed", HEALTHY, UNHEALTHY, posts_shut_down=True),
    Case("child_exited", STARTED, RECOVERING, calls=("recover",), event=_WS_EXIT),
    Case("child_exited", HEALTHY, RECOVERING, calls=("recover",), event=_WS_EXIT),
    Case("child_exited", RECOVERING, RECOVERING, calls=("recover",), event=_WS_EXIT),
    Case("child_exited", RELOADING_TLS, RECOVERING, calls=("recover",), event=_WS_EXIT),
    Case("child_exited", STARTING, UNHEALTHY, posts_shut_down=True),
    Case("child_exited", STARTED, UNHEALTHY, posts_shut_down=True),
    Case("child_exited", HEALTHY, UNHEALTHY, event=_exit_of("session", -9), posts_shut_down=True),
    Case("child_exited", RECOVERING, UNHEALTHY, posts_shut_down=True),
    Case("child_exited", RELOADING_TLS, UNHEALTHY, posts_shut_down=True),
    Case("child_exited", UNHEALTHY, UNHEALTHY, calls=("retry_later",), internal=True,
         config=NO_EXIT, event=_WS_EXIT),
    Case("restart_due", RECOVERING, RECOVERING, calls=("restart_child",), internal=True),
    Case("restart_due", UNHEALTHY, UNHEALTHY, calls=("restart_child",), internal=True,
         config=NO_EXIT),
    Case("recovery_timed_out", RECOVERING, UNHEALTHY, posts_shut_down=True),
    Case("recovery_timed_out", RELOADING_TLS, UNHEALTHY, posts_shut_down=True),
    Case("startup_timed_out", STARTING, UNHEALTHY, posts_shut_down=True),
    Case("startup_timed_out", STARTED, UNHEALTHY, posts_shut_down=True),
    Case("fail", INIT, FAILED, posts_shut_down=True),
    Case("fail", STARTING, FAILED, posts_shut_down=True),
    Case("stop", INIT, STOPPING, posts_shut_down=True),
    Case("stop", STARTING, STOPPING, posts_shut_down=True),
    Case("stop", STARTED, STOPPING, posts_shut_down=True),
    Case("stop", HEALTHY, STOPPING, posts_shut_down=True),
    Case("stop", RECOVERING, STOPPING, posts_shut_down=True),
    Case("stop", RELOADING_TLS, STOPPING, posts_shut_down=True),
    Case("stop", UNHEALTHY, STOPPING, posts_shut_down=True),
    # TLS rotation and expiry.
    Case("certificate_changed", HEALTHY, RELOADING_TLS, calls=("reload_certificate",)),
    Case("certificate_changed", UNHEALTHY, RELOADING_TLS, calls=("reload_certificate",),
         config=NO_EXIT, route=tuple(_EXPIRED)),
    *[Case("certificate_changed", state, state, calls=("defer_certificate",), internal=True)
      for state in (STARTING, STARTED, RECOVERING, RELOADING_TLS)],
    *[Case("certificate_check_due", state, state, calls=("check_certificate",), internal=True)
      for state in (STARTED, HEALTHY, RECOVERING, RELOADING_TLS)],
    Case("certificate_check_due", UNHEALTHY, UNHEALTHY, calls=("check_certificate",),
         internal=True, config=NO_EXIT),
    *[Case("certificate_expired", state, UNHEALTHY, posts_shut_down=True)
      for state in (STARTED, HEALTHY, RECOVERING, RELOADING_TLS)],
    # /Apps: mapped again in every state where the desktop lives.
    *[Case("apps_changed", state, state, calls=("map_apps",), internal=True)
      for state in (STARTING, STARTED, HEALTHY, RECOVERING, RELOADING_TLS)],
    Case("apps_changed", UNHEALTHY, UNHEALTHY, calls=("map_apps",), internal=True,
         config=NO_EXIT),
    Case("shut_down", STOPPING, STOPPED, calls=("stop_children", "exit"), exit_code=0),
    Case("shut_down", FAILED, FAILED, calls=("stop_children", "exit"), exit_code=2,
         internal=True),
    Case("shut_down", UNHEALTHY, UNHEALTHY, calls=("stop_children", "exit"), exit_code=3,
         internal=True),
]


def _table_rows() -> set[tuple[str, str, str | None]]:
    rows = set()
    for t in machine.TRANSITIONS:
        sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
        rows |= {(t["trigger"], s, t["dest"]) for s in sources}
    return rows


HANDLED = {(trigger, source) for trigger, source, _ in _table_rows()}
INVALID = sorted((trigger, state) for trigger in EVENTS for state in STATES
                 if (trigger, state) not in HANDLED)


def _finished_child(name: str) -> Child:
    """A real Child whose process already ended: the machine sees its pid, nothing runs."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return Child(name=name, proc=proc)


class RecordingDesktop(Desktop):
    """Desktop whose root-only or process-spawning steps only record that they ran; the
    test posts what the real ones would post next.  Conditions, status, logging,
    stop_children and exit are the real ones."""

    def __init__(self, config: Config, events: EventQueue, paths: Paths) -> None:
        super().__init__(config, events, paths)
        self.calls: list[str] = []
        self.children = [_finished_child(name) for name in CHILD_NAMES]
        self.cert_verdict_valid = True
        self.cert_verdict_expired = True

    def provision(self, event: EventData) -> None:
        self.calls.append("provision")

    def launch_display(self, event: EventData) -> None:
        self.calls.append("launch_display")

    def launch_session(self, event: EventData) -> None:
        self.calls.append("launch_session")

    def start_probes(self, event: EventData) -> None:
        self.calls.append("start_probes")

    def recover(self, event: EventData) -> None:
        self.calls.append("recover")

    def retry_later(self, event: EventData) -> None:
        self.calls.append("retry_later")

    def restart_child(self, event: EventData) -> None:
        self.calls.append("restart_child")

    def reload_certificate(self, event: EventData) -> None:
        self.calls.append("reload_certificate")

    def defer_certificate(self, event: EventData) -> None:
        self.calls.append("defer_certificate")
        super().defer_certificate(event)

    def check_certificate(self, event: EventData) -> None:
        self.calls.append("check_certificate")

    def map_apps(self, event: EventData) -> None:
        self.calls.append("map_apps")
        super().check_certificate(event)  # without a certificate: nothing to check

    # The certificate files themselves are tls.py's and certs.py's business: here the
    # verdicts on them are set by the test.
    def new_certificate_valid(self, event: EventData) -> bool:
        return self.cert_verdict_valid

    def certificate_expired_now(self, event: EventData) -> bool:
        return self.cert_verdict_expired

    def stop_children(self, event: EventData) -> None:
        self.calls.append("stop_children")
        super().stop_children(event)

    def exit(self, event: EventData) -> None:
        self.calls.append("exit")
        super().exit(event)


def _drain(q: EventQueue) -> list[Event]:
    out = []
    while (ev := q.get(timeout=0)) is not None:
        out.append(ev)
    return out


def _desktop_in(state: str, paths: Paths, config: Config | None = None,
                cls: type[RecordingDesktop] = RecordingDesktop,
                route: Sequence[Event] | None = None) -> RecordingDesktop:
    """A machine brought to `state` by dispatching ROUTES[state]; queue and calls cleared."""
    desktop = cls(config or Config(), EventQueue(), paths)
    machine.build(desktop)
    for ev in ROUTES[state] if route is None else route:
        loop.dispatch(desktop, ev)
    assert desktop.state == state
    _drain(desktop.events)
    desktop.calls.clear()
    return desktop


def _status(paths: Paths) -> tuple[str, dict[str, Any]]:
    return paths.status.read_text(), json.loads(paths.status_json.read_text())


# -- the table, transition by transition --------------------------------------------------

def test_cases_cover_exactly_the_transition_table() -> None:
    """A transition added to machine.TRANSITIONS without a case here fails this test."""
    assert {c.key for c in CASES} == _table_rows()
    assert len({c.key for c in CASES}) == len(CASES)


def test_every_state_has_a_route_and_every_trigger_an_event() -> None:
    assert set(ROUTES) == set(STATES)
    assert set(EVENTS) == {t["trigger"] for t in machine.TRANSITIONS}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_transition(case: Case, paths: Paths) -> None:
    desktop = _desktop_in(case.source, paths, case.config, route=case.route)
    reason_before = desktop.reason
    event = case.make_event(desktop)
    with capture_logs() as logs:
        loop.dispatch(desktop, event)

    assert desktop.state == case.dest
    assert tuple(desktop.calls) == case.calls
    assert desktop.exit_code == case.exit_code
    posted = _drain(desktop.events)
    assert posted == ([ShutDown()] if case.posts_shut_down else [])

    # What a user's script reads: exactly one word and a newline, and its detail.
    word, doc = _status(paths)
    assert word == case.dest + "\n"
    assert doc["state"] == case.dest
    assert doc["pid"] == os.getpid()
    assert doc["reason"] == (event.why or reason_before)
    assert doc["since"].endswith("Z")
    datetime.fromisoformat(doc["since"].replace("Z", "+00:00"))
    assert doc["username"] == case.config.username
    assert (doc["web_port"], doc["vnc_port"]) == (case.config.web_port, case.config.vnc_port)
    assert set(doc["children"]) == set(CHILD_NAMES)

    moves = [e for e in logs if e["event"] == "transition"]
    assert len(moves) == 1
    assert (moves[0]["trigger"], moves[0]["dest"]) == (case.trigger, case.dest)
    assert moves[0]["reason"] == doc["reason"]
    if case.exit_code is not None:
        assert case.exit_code == machine.EXIT_CODES[case.dest]


@pytest.mark.parametrize(("trigger", "state"), INVALID, ids=str)
def test_event_invalid_in_state_is_ignored(trigger: str, state: str, paths: Paths) -> None:
    """Late events (a child's exit while STOPPING, a probe result after FAILED) must not
    crash the loop or move the machine."""
    desktop = _desktop_in(state, paths)
    status_before = _status(paths) if state != INIT else None
    exit_before = desktop.exit_code
    with capture_logs() as logs:
        loop.dispatch(desktop, EVENTS[trigger](desktop))
    assert desktop.state == state
    assert desktop.exit_code == exit_before
    assert desktop.calls == []
    assert _drain(desktop.events) == []
    if status_before is None:
        assert not paths.status.exists()
    else:
        assert _status(paths) == status_before
    assert [(e["event"], e["trigger"], e["state"]) for e in logs] == [
        ("event_ignored", trigger, state)]


def _assert_unmoved(desktop: RecordingDesktop, paths: Paths, state: str,
                    before: tuple[str, dict[str, Any]]) -> None:
    assert desktop.state == state
    assert desktop.calls == []
    assert desktop.exit_code is None
    assert _drain(desktop.events) == []
    assert _status(paths) == before


def test_probe_pass_does_not_revive_unhealthy_when_exiting_on_failure(paths: Paths) -> None:
    desktop = _desktop_in(UNHEALTHY, paths)
    before = _status(paths)
    loop.dispatch(desktop, ProbePassed())
    _assert_unmoved(desktop, paths, UNHEALTHY, before)
    loop.dispatch(desktop, ShutDown())
    assert desktop.exit_code == 3


@pytest.mark.parametrize("state", [STARTING, STARTED, HEALTHY, RECOVERING, UNHEALTHY])
def test_exit_of_a_replaced_child_is_ignored(state: str, paths: Paths) -> None:
    """The old websockify's exit, arriving after its replacement started, is not news."""
    desktop = _desktop_in(state, paths, NO_EXIT)
    before = _status(paths)
    for name in CHILD_NAMES:
        loop.dispatch(desktop, ChildExited(name=name, pid=1, returncode=1))
    _assert_unmoved(desktop, paths, state, before)


@pytest.mark.parametrize("state", [STARTED, HEALTHY, RECOVERING])
def test_exit_of_a_retired_child_is_ignored(state: str, paths: Paths) -> None:
    desktop = _desktop_in(state, paths)
    before = _status(paths)
    for child in desktop.children:
        child.retired = True
        loop.dispatch(desktop, ChildExited(name=child.name, pid=child.pid, returncode=-15))
    _assert_unmoved(desktop, paths, state, before)


def test_websockify_is_not_restarted_once_the_budget_is_used_up(paths: Paths) -> None:
    desktop = _desktop_in(HEALTHY, paths)
    desktop._restarts = RestartBudget(attempts=0)
    loop.dispatch(desktop, _WS_EXIT(desktop))
    assert desktop.state == UNHEALTHY
    assert desktop.calls == []
    assert _drain(desktop.events) == [ShutDown()]


def test_websockify_probe_failure_without_budget_is_unhealthy(paths: Paths) -> None:
    desktop = _desktop_in(HEALTHY, paths)
    desktop._restarts = RestartBudget(attempts=0)
    loop.dispatch(desktop, WS_PROBE_FAILED)
    assert desktop.state == UNHEALTHY
    assert _status(paths)[1]["reason"] == WS_PROBE_FAILED.why


def test_xvnc_exit_while_unhealthy_is_not_retried(paths: Paths) -> None:
    """Only websockify is restartable; Xvnc's death in UNHEALTHY changes nothing."""
    desktop = _desktop_in(UNHEALTHY, paths, NO_EXIT)
    before = _status(paths)
    loop.dispatch(desktop, _exit_of("xvnc")(desktop))
    _assert_unmoved(desktop, paths, UNHEALTHY, before)


def test_websockify_exit_while_unhealthy_is_not_retried_when_exiting(paths: Paths) -> None:
    desktop = _desktop_in(UNHEALTHY, paths)
    before = _status(paths)
    loop.dispatch(desktop, _WS_EXIT(desktop))
    _assert_unmoved(desktop, paths, UNHEALTHY, before)


def test_invalid_new_certificate_keeps_the_old_one_in_service(paths: Paths) -> None:
    desktop = _desktop_in(HEALTHY, paths)
    desktop.cert_verdict_valid = False
    before = _status(paths)
    loop.dispatch(desktop, CertificateChanged())
    _assert_unmoved(desktop, paths, HEALTHY, before)


def test_certificate_change_is_deferred_until_healthy(paths: Paths) -> None:
    """A new certificate arriving mid-start is not lost: it is applied once HEALTHY."""
    desktop = _desktop_in(STARTED, paths)
    loop.dispatch(desktop, CertificateChanged())
    assert desktop.state == STARTED
    assert _drain(desktop.events) == []
    loop.dispatch(desktop, ProbePassed())
    assert desktop.state == HEALTHY
    replay = _drain(desktop.events)
    assert replay == [CertificateChanged()]
    loop.dispatch(desktop, replay[0])
    assert desktop.state == RELOADING_TLS
    assert desktop.calls == ["defer_certificate", "reload_certificate"]


def test_renewed_certificate_does_not_revive_other_failures(paths: Paths) -> None:
    """UNHEALTHY for another reason (Xvnc died): a new certificate does not hide that."""
    desktop = _desktop_in(UNHEALTHY, paths, NO_EXIT)
    before = _status(paths)
    loop.dispatch(desktop, CertificateChanged())
    _assert_unmoved(desktop, paths, UNHEALTHY, before)


def test_renewed_certificate_after_expiry_needs_no_exit_on_failure(paths: Paths) -> None:
    desktop = _desktop_in(UNHEALTHY, paths, route=_EXPIRED)
    before = _status(paths)
    assert before[1]["reason"] == CertificateExpired().why
    loop.dispatch(desktop, CertificateChanged())
    _assert_unmoved(desktop, paths, UNHEALTHY, before)


def test_expiry_of_an_already_renewed_certificate_is_ignored(paths: Paths) -> None:
    desktop = _desktop_in(HEALTHY, paths)
    desktop.cert_verdict_expired = False
    before = _status(paths)
    loop.dispatch(desktop, CertificateExpired())
    _assert_unmoved(desktop, paths, HEALTHY, before)


def test_certificate_reload_that_never_heals_ends_unhealthy(paths: Paths) -> None:
    """reload_certificate arms the recovery deadline (RecoveryTimedOut), as recover does:
    a websockify that never serves the new certificate must not leave the desktop in
    RELOADING_TLS for ever (the prober ignores failures until the next pass)."""
    desktop = _desktop_in(RELOADING_TLS, paths)
    loop.dispatch(desktop, RecoveryTimedOut(seconds=60.0))
    assert desktop.state == UNHEALTHY
    assert _drain(desktop.events) == [ShutDown()]


def test_internal_transitions_keep_the_reason(paths: Paths) -> None:
    desktop = _desktop_in(STARTING, paths)
    for ev in (Provisioned(), DisplayReady(display=":1")):
        loop.dispatch(desktop, ev)
        word, doc = _status(paths)
        assert word == "STARTING\n"
        assert doc["reason"] == Start().why


def test_failed_is_logged_with_its_reason(paths: Paths) -> None:
    """The error line an operator greps for must say why the desktop failed."""
    desktop = _desktop_in(STARTING, paths)
    with capture_logs() as logs:
        loop.dispatch(desktop, Failed(reason="useradd failed (4): UID 1000 is not unique"))
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [(e["event"], e["reason"]) for e in errors] == [
        ("failed", "useradd failed (4): UID 1000 is not unique")]


def test_unhealthy_is_logged_with_its_reason(paths: Paths) -> None:
    desktop = _desktop_in(HEALTHY, paths)
    with capture_logs() as logs:
        loop.dispatch(desktop, _exit_of("xvnc", -9)(desktop))
    errors = [e for e in logs if e["log_level"] == "error"]
    pid = desktop.children[0].pid
    assert [(e["event"], e["reason"]) for e in errors] == [
        ("unhealthy", f"xvnc (pid {pid}) was killed by signal 9")]
    assert errors[0]["exit_on_failure"] is True


def test_exit_codes() -> None:
    assert machine.EXIT_CODES == {STOPPED: 0, FAILED: 2, UNHEALTHY: 3}


class SpawnFails(RecordingDesktop):
    """The real restart_child, in an environment where websockify cannot be found."""

    def restart_child(self, event: EventData) -> None:
        Desktop.restart_child(self, event)

    def _env(self) -> dict[str, str]:
        return {"PATH": str(self.paths.state_dir / "no-such-bin")}


def test_failed_restart_does_not_crash_the_daemon(paths: Paths, run_as: RunAs) -> None:
    """Callbacks never raise (desktop.py's promise): a websockify that cannot be started
    again must end in UNHEALTHY, not in an exception out of the loop (exit 1, no status)."""
    desktop = _desktop_in(RECOVERING, paths, cls=SpawnFails)
    desktop.run_as = run_as
    loop.dispatch(desktop, RestartDue(name="websockify"))
    for _ in range(10):
        ev = desktop.events.get(timeout=0)
        if ev is None:
            break
        loop.dispatch(desktop, ev)
    assert desktop.state in (RECOVERING, UNHEALTHY)


# -- whole lifecycles: real children, real prober, the loop's dispatch ---------------------

class AutoDesktop(Desktop):
    """Desktop whose root-only steps are replaced by harmless real work that posts what
    the real steps post: `sleep` children stand in for Xvnc, websockify and the session,
    and a real Prober runs one probe per part that the test can break and mend.  Recovery
    (recover, restart_child, the restart budget and timers) is the real code."""

    given_run_as: ClassVar[RunAs]
    session_argv: ClassVar[list[str]] = ["sleep", "60"]

    def __init__(self, config: Config, events: EventQueue, paths: Paths | None = None) -> None:
        super().__init__(config, events, paths)
        self.broken: set[str] = set()

    def _check(self, part: str) -> Callable[[], None]:
        """Fails while the test says the part is broken."""
        def check() -> None:
            if part in self.broken:
                raise ProbeError(f"{part} does not answer")
        return check

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ["PATH"]}

    def provision(self, event: EventData) -> None:
        self._fail_on_error(self._fake_provision)

    def _fake_provision(self) -> None:
        provision.prepare_dirs(self.paths)
        self.run_as = type(self).given_run_as
        self.events.post(Provisioned())

    def _spawn(self, name: str, argv: list[str]) -> Child:
        assert self.run_as is not None
        return children.spawn(name, argv, self.run_as, self._env(), self.events)

    def _spawn_websockify(self, env: dict[str, str]) -> Child:
        return self._spawn("websockify", ["sleep", "60"])

    def launch_display(self, event: EventData) -> None:
        self.children.append(self._spawn("xvnc", ["sleep", "60"]))
        self.children.append(self._spawn_websockify(self._env()))
        self.events.post(DisplayReady(display=":1"))

    def launch_session(self, event: EventData) -> None:
        def launch() -> None:
            self.children.append(self._spawn("session", type(self).session_argv))
            self.events.post(Launched())
        self._fail_on_error(launch)

    def start_probes(self, event: EventData) -> None:
        self._prober = Prober([Probe("x", "xvnc", self._check("xvnc")),
                               Probe("ws", "websockify", self._check("websockify"))],
                              self.events, interval=0.005)
        self._prober.start()

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)


@pytest.fixture
def auto(run_as: RunAs) -> type[AutoDesktop]:
    class Bound(AutoDesktop):
        pass
    Bound.given_run_as = run_as
    return Bound


@dataclass
class Run:
    desktop: AutoDesktop
    paths: Paths
    words: list[str] = field(default_factory=list)

    def until(self, done: Callable[[], bool]) -> None:
        """The daemon's loop (loop.run) with a timeout per event, recording each status."""
        while not done():
            event = self.desktop.events.get(timeout=WAIT)
            if event is None:
                pytest.fail(f"stuck in {self.desktop.state} after {self.words}")
            loop.dispatch(self.desktop, event)
            if self.paths.status.exists():
                word = self.paths.status.read_text()
                assert word.endswith("\n")
                assert word.strip() in STATES
                if not self.words or self.words[-1] != word.strip():
                    self.words.append(word.strip())

    def until_state(self, state: str) -> None:
        self.until(lambda: self.desktop.state == state)

    def until_exit(self) -> int:
        self.until(lambda: self.desktop.exit_code is not None)
        assert self.desktop.exit_code is not None
        return self.desktop.exit_code


@pytest.fixture
def started() -> Iterator[list[Run]]:
    """Runs to clean up: whatever a failed test left running is stopped."""
    runs: list[Run] = []
    yield runs
    for run in runs:
        if run.desktop._prober is not None:
            run.desktop._prober.stop()
        children.stop(run.desktop.children, deadline=0.1)


@pytest.fixture
def start(auto: type[AutoDesktop], paths: Paths,
          started: list[Run]) -> Callable[..., Run]:
    def start(config: Config | None = None) -> Run:
        desktop = auto(config or Config(startup_timeout=WAIT), EventQueue(), paths)
        machine.build(desktop)
        desktop.events.post(Start())
        run = Run(desktop, paths)
        started.append(run)
        return run
    return start


def _gone(child: Child) -> bool:
    try:
        return psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _assert_all_stopped(kids: list[Child]) -> None:
    assert kids, "the test meant to start children"
    for child in kids:
        assert child.returncode is not None, child.name
        assert _gone(child), child.name


def _prober_threads_end() -> None:
    wait_for(lambda: not [t for t in threading.enumerate() if t.name == "prober"],
             "the prober thread to end")


def test_lifecycle_start_healthy_stop(start: Callable[..., Run], paths: Paths) -> None:
    run = start()
    run.until_state(HEALTHY)
    kids = list(run.desktop.children)
    assert [c.name for c in kids] == ["xvnc", "websockify", "session"]
    assert all(c.returncode is None for c in kids)
    _, doc = _status(paths)
    assert doc["children"] == {c.name: {"pid": c.pid, "running": True, "returncode": None}
                               for c in kids}

    run.desktop.events.post(StopRequested(reason="received SIGTERM"))
    assert run.until_exit() == 0
    assert run.words == [STARTING, STARTED, HEALTHY, STOPPING, STOPPED]
    _assert_all_stopped(kids)
    _prober_threads_end()
    word, doc = _status(paths)
    assert word == "STOPPED\n"
    assert doc["reason"] == "received SIGTERM"
    assert all(not c["running"] for c in doc["children"].values())


def test_lifecycle_xvnc_probe_failure_exits_3(start: Callable[..., Run], paths: Paths) -> None:
    run = start()
    run.until_state(HEALTHY)
    kids = list(run.desktop.children)
    run.desktop.broken.add("xvnc")
    assert run.until_exit() == machine.EXIT_CODES[UNHEALTHY] == 3
    assert run.words == [STARTING, STARTED, HEALTHY, UNHEALTHY]
    _assert_all_stopped(kids)
    _prober_threads_end()
    word, doc = _status(paths)
    assert word == "UNHEALTHY\n"
    assert doc["reason"] == "health check failed: xvnc does not answer"


@pytest.mark.parametrize("name", ["xvnc", "session"])
def test_lifecycle_death_of_a_stateful_child_exits_3(start: Callable[..., Run], paths: Paths,
                                                     name: str) -> None:
    """The user's windows are gone with Xvnc or the session: no restart, UNHEALTHY."""
    run = start()
    run.until_state(HEALTHY)
    dead = run.desktop.child(name)
    os.kill(dead.pid, signal.SIGKILL)
    assert run.until_exit() == 3
    assert run.words[-2:] == [HEALTHY, UNHEALTHY]
    _assert_all_stopped(run.desktop.children)
    _, doc = _status(paths)
    assert doc["reason"] == f"{name} (pid {dead.pid}) was killed by signal 9"
    assert doc["children"][name]["returncode"] == -signal.SIGKILL


def test_lifecycle_websockify_death_is_repaired(start: Callable[..., Run],
                                                paths: Paths) -> None:
    """websockify holds no user state: it is restarted and the desktop is HEALTHY again."""
    run = start()
    run.until_state(HEALTHY)
    old = run.desktop.child("websockify")
    xvnc, session = run.desktop.child("xvnc"), run.desktop.child("session")
    os.kill(old.pid, signal.SIGKILL)
    run.until_state(RECOVERING)
    assert _status(paths)[1]["reason"] == f"websockify (pid {old.pid}) was killed by signal 9"
    run.until_state(HEALTHY)
    new = run.desktop.child("websockify")
    assert new.pid != old.pid
    assert new.returncode is None
    # The user's windows were never touched.
    assert run.desktop.child("xvnc") is xvnc
    assert run.desktop.child("session") is session
    assert xvnc.returncode is None
    assert session.returncode is None
    assert run.words == [STARTING, STARTED, HEALTHY, RECOVERING, HEALTHY]
    _, doc = _status(paths)
    assert doc["children"]["websockify"] == {"pid": new.pid, "running": True,
                                             "returncode": None}
    run.desktop.events.post(StopRequested(reason="received SIGTERM"))
    assert run.until_exit() == 0
    _assert_all_stopped(run.desktop.children)


def test_lifecycle_hung_websockify_is_replaced(start: Callable[..., Run], paths: Paths) -> None:
    """Its probe fails while it still runs: the hung process is stopped, a new one runs."""
    run = start()
    run.until_state(HEALTHY)
    hung = run.desktop.child("websockify")
    run.desktop.broken.add("websockify")
    run.until_state(RECOVERING)
    assert _status(paths)[1]["reason"] == "health check failed: websockify does not answer"
    assert _gone(hung)
    run.until(lambda: run.desktop.child("websockify") is not hung)
    assert run.desktop.state == RECOVERING
    run.desktop.broken.clear()
    run.until_state(HEALTHY)
    new = run.desktop.child("websockify")
    assert new.pid != hung.pid
    assert new.returncode is None
    assert run.words == [STARTING, STARTED, HEALTHY, RECOVERING, HEALTHY]
    run.desktop.events.post(StopRequested(reason="received SIGTERM"))
    assert run.until_exit() == 0
    _assert_all_stopped(run.desktop.children)


def test_lifecycle_recovery_that_never_heals_exits_3(start: Callable[..., Run],
                                                     paths: Paths) -> None:
    run = start(Config(startup_timeout=0.3))
    run.until_state(HEALTHY)
    run.desktop.broken.add("websockify")
    assert run.until_exit() == 3
    assert run.words[-3:] == [HEALTHY, RECOVERING, UNHEALTHY]
    assert _status(paths)[1]["reason"] == "not HEALTHY again within 0.3 s of a restart"
    _assert_all_stopped(run.desktop.children)


def test_lifecycle_no_exit_on_failure_waits_and_recovers(start: Callable[..., Run],
                                                         paths: Paths) -> None:
    run = start(Config(no_exit_on_failure=True, startup_timeout=WAIT))
    run.until_state(HEALTHY)
    run.desktop.broken.add("xvnc")
    run.until_state(UNHEALTHY)
    # Stays up so files can be recovered: children running, no exit, no shutdown queued.
    assert run.desktop.exit_code is None
    assert all(c.returncode is None for c in run.desktop.children)
    run.desktop.broken.clear()
    run.until_state(HEALTHY)
    assert _status(paths)[0] == "HEALTHY\n"
    run.desktop.events.post(StopRequested(reason="received SIGTERM"))
    assert run.until_exit() == 0
    assert run.words == [STARTING, STARTED, HEALTHY, UNHEALTHY, HEALTHY, STOPPING, STOPPED]
    _assert_all_stopped(run.desktop.children)


def test_lifecycle_no_exit_on_failure_stop_from_unhealthy(start: Callable[..., Run]) -> None:
    run = start(Config(no_exit_on_failure=True, startup_timeout=WAIT))
    run.until_state(HEALTHY)
    run.desktop.broken.add("xvnc")
    run.until_state(UNHEALTHY)
    run.desktop.events.post(StopRequested(reason="received SIGTERM"))
    assert run.until_exit() == 0
    assert run.words[-3:] == [UNHEALTHY, STOPPING, STOPPED]
    _assert_all_stopped(run.desktop.children)


def test_lifecycle_launch_failure_exits_2_and_stops_what_started(
        auto: type[AutoDesktop], start: Callable[..., Run], paths: Paths) -> None:
    """A program missing from the image: FAILED, exit 2, and Xvnc is not left behind."""
    auto.session_argv = ["/nonexistent/startlxde"]
    run = start()
    assert run.until_exit() == machine.EXIT_CODES[FAILED] == 2
    assert run.words == [STARTING, FAILED]
    assert [c.name for c in run.desktop.children] == ["xvnc", "websockify"]
    _assert_all_stopped(run.desktop.children)
    _, doc = _status(paths)
    assert "/nonexistent/startlxde" in doc["reason"]


def test_lifecycle_child_exits_after_stop_are_ignored(start: Callable[..., Run],
                                                      paths: Paths) -> None:
    run = start()
    run.until_state(HEALTHY)
    run.desktop.events.post(StopRequested(reason="received SIGTERM"))
    assert run.until_exit() == 0
    # The children's watchers post their exits late, into STOPPED: nothing changes.
    late: list[Event] = []

    def all_three_exits() -> bool:
        late.extend(_drain(run.desktop.events))
        return sum(isinstance(e, ChildExited) for e in late) == 3

    wait_for(all_three_exits, "the three exits to be posted")
    for ev in late:
        loop.dispatch(run.desktop, ev)
    assert run.desktop.state == STOPPED
    assert run.desktop.exit_code == 0
    assert _status(paths)[0] == "STOPPED\n"


# -- loop.run itself --------------------------------------------------------------------

def test_run_with_a_config_error_fails_with_exit_2(paths: Paths, restore_signals: None) -> None:
    with capture_logs() as logs:
        code = loop.run(Config(), config_error="--depth: 8 is not one of 16, 24, 32",
                        paths=paths)
    assert code == 2
    word, doc = _status(paths)
    assert word == "FAILED\n"
    assert doc["reason"] == "--depth: 8 is not one of 16, 24, 32"
    exits = [e for e in logs if e["event"] == "daemon_exit"]
    assert [(e["code"], e["state"]) for e in exits] == [(2, FAILED)]


def test_run_stops_on_sigterm_with_exit_0(auto: type[AutoDesktop], paths: Paths,
                                          restore_signals: None,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`docker stop`: SIGTERM reaches the blocked loop, which stops the children."""
    monkeypatch.setattr(loop, "Desktop", auto)
    q = EventQueue()

    def terminate_when_healthy() -> None:
        try:
            wait_for(lambda: paths.status.exists() and paths.status.read_text() == "HEALTHY\n",
                     "HEALTHY")
            os.kill(os.getpid(), signal.SIGTERM)
        except BaseException:
            q.post(StopRequested(reason="test gave up waiting for HEALTHY"))

    threading.Thread(target=terminate_when_healthy, daemon=True).start()
    assert loop.run(Config(startup_timeout=WAIT), paths=paths, events=q) == 0
    word, doc = _status(paths)
    assert word == "STOPPED\n"
    assert doc["reason"] == "received SIGTERM"
    assert all(not c["running"] for c in doc["children"].values())
    assert set(doc["children"]) == {"xvnc", "websockify", "session"}
    for child in doc["children"].values():
        assert child["returncode"] == -signal.SIGTERM


class WordAtWork(RecordingDesktop):
    """Notes the status word the user reads while a transition's work runs."""

    def __init__(self, config: Config, events: EventQueue, paths: Paths) -> None:
        super().__init__(config, events, paths)
        self.words_at_work: dict[str, str] = {}

    def recover(self, event: EventData) -> None:
        self.words_at_work["recover"] = self.paths.status.read_text()
        super().recover(event)

    def reload_certificate(self, event: EventData) -> None:
        self.words_at_work["reload_certificate"] = self.paths.status.read_text()
        super().reload_certificate(event)

    def stop_children(self, event: EventData) -> None:
        self.words_at_work["stop_children"] = self.paths.status.read_text()
        super().stop_children(event)


@pytest.mark.parametrize(("event", "work", "word"), [
    (WS_PROBE_FAILED, "recover", "RECOVERING\n"),
    (CertificateChanged(), "reload_certificate", "RELOADING_TLS\n"),
    (ProbeFailed(reason="X display :1: refused", part="xvnc"), None, "UNHEALTHY\n"),
])
def test_the_new_word_is_written_before_the_work_starts(
        event: Event, work: str | None, word: str, paths: Paths) -> None:
    """A user (or a probe) reading the status while websockify restarts or the children
    stop sees the state that explains it, not the one before."""
    desktop = _desktop_in(HEALTHY, paths, cls=WordAtWork)
    loop.dispatch(desktop, event)
    if work is not None:
        assert desktop.words_at_work[work] == word
    else:
        loop.dispatch(desktop, ShutDown())
        assert desktop.words_at_work["stop_children"] == word
