"""The lifecycle: the real transitions machine around the real Desktop and its parts,
driven by events through loop.dispatch, as the daemon's loop does.

Two kinds of tests.  The table tests (one per transition) check the machine's wiring:
which callbacks run, the status word, reason and exit code; their actions only record
that they ran (each part is tested on its own in test_<part>.py).  The lifecycle tests
run everything for real through the Desktop's seams: a programs table of `sh`/`sleep`
children (the `xvnc` row signals readiness through its -displayfd pipe, the `nginx` row
notes the SIGHUPs it gets), a provisioner that needs no root, and health checks the test
can break and mend; supervisor, restart budget, deadlines, prober thread, TLS rotation,
the front door's files (checked by the real `nginx -t`) and status files are the real
ones.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from structlog.testing import capture_logs
from transitions import EventData

from whaletopd import frontdoor, loop, machine, nginx_conf, tls, webusers
from whaletopd.children import Child, RunAs
from whaletopd.config import Config
from whaletopd.deadlines import Deadlines
from whaletopd.desktop import Desktop, Provisioner, Seams
from whaletopd.events import (
    AppsChanged,
    AppsMapped,
    CertificateChanged,
    CertificateCheckDue,
    CertificateExpired,
    ChildExited,
    ChildReady,
    ClientsChanged,
    ClientsCheckDue,
    Event,
    EventQueue,
    Failed,
    IdleSoon,
    IdleTimedOut,
    KeyboardAsked,
    KeyboardSwitched,
    Launched,
    MenuCheckDue,
    ProbeFailed,
    ProbePassed,
    Provisioned,
    RecoveryTimedOut,
    RestartDue,
    ShutDown,
    Start,
    StartupTimedOut,
    StopRequested,
    WebUsersChanged,
)
from whaletopd.machine import (
    FAILED,
    HEALTHY,
    IDLE,
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
from whaletopd.probes import Probe, ProbeError, Prober, Target
from whaletopd.programs import PROGRAMS, Launch, Program, Restart
from whaletopd.provision import Account, prepare_dirs
from whaletopd.webusers import hash_password

from .helpers import WAIT, wait_for

NO_EXIT = Config(no_exit_on_failure=True)
CHILD_NAMES = ("xvnc", "websockify", "nginx", "session")


def _sleeper(launch: Launch) -> list[str]:
    return ["sleep", "60"]


def hups(paths: Paths) -> Path:
    """Where the `nginx` stand-in notes each SIGHUP it gets (a graceful reload)."""
    return paths.state_dir / "nginx-hups"


def _nginx_stand_in(launch: Launch) -> list[str]:
    return ["bash", "-c", f"trap 'echo hup >> {hups(launch.paths)}' HUP; "
            "while :; do sleep 60 & wait $!; done"]


def _xvnc_stand_in(launch: Launch) -> list[str]:
    """Says it is ready the way Xvnc does: a line on its -displayfd pipe."""
    return ["bash", "-c", f"echo 1 >&{launch.ready_fd}; exec sleep 60"]


def _sign_in(config: Config) -> bool:
    return config.sign_in


# What a logout looks like from the table's session row (dbus-run-session's codes).
LOGOUT_EXITS = next(p for p in PROGRAMS if p.name == "session").stop_exits


def programs(session: Callable[[Launch], list[str]] = _sleeper,
             restart: Restart | None = None) -> tuple[Program, ...]:
    """The real table's shape (readiness, order, restart policy, accounts, blame, the
    sign-in service only with sign-in), other commands."""
    return (
        Program("xvnc", _xvnc_stand_in, ready="displayfd", stop_order=4,
                probes=("x_display",)),
        Program("websockify", _sleeper, restart=restart or Restart(), stop_order=3,
                probes=("websockify_login",)),
        Program("nginx", _nginx_stand_in, restart=restart or Restart(), stop_order=0,
                account="root", probes=("web_login", "novnc_page"), json_lines=True),
        Program("webauth", _sleeper, restart=restart or Restart(), stop_order=1,
                account="web", probes=("sign_in_check",), wanted=_sign_in,
                json_lines=True),
        Program("session", session, after="xvnc", restart=restart or Restart(),
                stop_order=2, stop_exits=LOGOUT_EXITS),
    )


def provisioner(run_as: RunAs) -> Callable[[Config, Paths, int], Account]:
    """Provisioning without root: the test's own user, the test's PATH."""
    def provision(config: Config, paths: Paths, display: int) -> Account:
        prepare_dirs(paths)
        return Account(run_as, {"PATH": os.environ["PATH"]}, "password")
    return provision


class Checks:
    """Health checks the test breaks and mends, blaming as the real ones do: the X
    display; then the login through nginx, which on failure narrows down to the first
    broken hop behind it (Xvnc, websockify, the sign-in service), else nginx."""

    def __init__(self) -> None:
        self.broken: set[str] = set()
        self.targets: list[Target] = []

    def __call__(self, target: Target, blame: Mapping[str, str]) -> list[Probe]:
        self.targets.append(target)

        def x_display() -> None:
            if blame["x_display"] in self.broken:
                raise ProbeError(f"{blame['x_display']} does not answer")

        def web_login() -> None:
            for hop in ("x_display", "websockify_login", "sign_in_check", "web_login"):
                part = blame.get(hop)
                if part in self.broken:
                    raise ProbeError(f"{part} does not answer", part=part)

        return [Probe("x_display", blame["x_display"], x_display),
                Probe("web_login", blame["web_login"], web_login)]


def _exit_of(name: str, returncode: int = 1) -> Callable[[Desktop], Event]:
    """The exit of the desktop's current child called `name` (not a stale one)."""
    def make(desktop: Desktop) -> Event:
        child = desktop.children.child(name)
        assert child is not None
        return ChildExited(name=name, pid=child.pid, returncode=returncode)
    return make


EventFactory = Callable[[Desktop], Event]
# One sample event per trigger.
EVENTS: dict[str, EventFactory] = {
    "start": lambda d: Start(),
    "provisioned": lambda d: Provisioned(),
    "child_ready": lambda d: ChildReady(name="xvnc"),
    "launched": lambda d: Launched(),
    "probe_passed": lambda d: ProbePassed(),
    "probe_failed": lambda d: ProbeFailed(reason="VNC on /run/whaletop/desktop/vnc.sock: "
                                                 "timed out", part="xvnc"),
    "restart_due": lambda d: RestartDue(name="websockify"),
    "certificate_changed": lambda d: CertificateChanged(),
    "apps_changed": lambda d: AppsChanged(),
    "apps_mapped": lambda d: AppsMapped(),
    "web_users_changed": lambda d: WebUsersChanged(),
    "menu_check_due": lambda d: MenuCheckDue(),
    "certificate_check_due": lambda d: CertificateCheckDue(),
    "certificate_expired": lambda d: CertificateExpired(),
    "recovery_timed_out": lambda d: RecoveryTimedOut(seconds=60.0),
    "startup_timed_out": lambda d: StartupTimedOut(seconds=60.0),
    "child_exited": _exit_of("xvnc"),
    "fail": lambda d: Failed(reason="useradd -u 1000 failed (4): UID 1000 is not unique"),
    "stop": lambda d: StopRequested(reason="received SIGTERM"),
    "shut_down": lambda d: ShutDown(),
    "clients_check_due": lambda d: ClientsCheckDue(),
    "clients_changed": lambda d: ClientsChanged(count=1),
    "idle_soon": lambda d: IdleSoon(idle_minutes=4.0, minutes_left=1.0),
    "idle_timed_out": lambda d: IdleTimedOut(minutes=5.0),
    "keyboard_asked": lambda d: KeyboardAsked(),
    "keyboard_switched": lambda d: KeyboardSwitched(layout=None),
}
WS_PROBE_FAILED = ProbeFailed(
    reason="WebSocket on /run/whaletop/desktop/websockify.sock: connection refused",
    part="websockify")
NGINX_PROBE_FAILED = ProbeFailed(reason="WebSocket on port 8080: connection refused",
                                 part="nginx")

_TO_STARTED = [Start(), Provisioned(), ChildReady(name="xvnc"), Launched()]
# UNHEALTHY because the certificate expired (with --no-exit-on-failure: waiting for a new one).
_EXPIRED = [*_TO_STARTED, ProbePassed(), CertificateExpired()]
# How to reach each state from INIT, one dispatched event after another.
ROUTES: dict[str, list[Event]] = {
    INIT: [],
    STARTING: [Start()],
    STARTED: _TO_STARTED,
    HEALTHY: [*_TO_STARTED, ProbePassed()],
    IDLE: [*_TO_STARTED, ProbePassed(), IdleSoon(idle_minutes=4.0, minutes_left=1.0)],
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
    table: tuple[Program, ...] | None = None  # instead of programs()
    prepare: Callable[[Desktop], None] | None = None  # after reaching `source`

    @property
    def key(self) -> tuple[str, str, str | None, tuple[str, ...]]:
        """(trigger, source, dest, callbacks) as the row of machine.TRANSITIONS says."""
        return self.trigger, self.source, None if self.internal else self.dest, self.calls

    def make_event(self, desktop: Desktop) -> Event:
        return (self.event or EVENTS[self.trigger])(desktop)

    def __str__(self) -> str:
        extra = "-no-exit" if self.config.no_exit_on_failure else ""
        return f"{self.trigger}:{self.source}->{self.dest}{extra}"


_WS_EXIT = _exit_of("websockify")
_LOGOUT = _exit_of("session", 128 + signal.SIGTERM)
_NGINX_EXIT = _exit_of("nginx")
NO_BUDGET = programs(restart=Restart(attempts=0))
ONE_RESTART = programs(restart=Restart(attempts=1))


# An optional child (sound): its death never moves the desktop.
WITH_SOUND = (*programs(), Program("sound", _sleeper, restart=Restart(), stop_order=1,
                                   optional=True))
_SOUND_EXIT = _exit_of("sound")
LIVE_STATES = (STARTING, STARTED, HEALTHY, IDLE, RECOVERING, RELOADING_TLS)


def _use_the_one_restart(desktop: Desktop) -> None:
    """RECOVERING, and the one restart its budget allows already done."""
    desktop.children.schedule_restart("websockify", "the test's restart")
    assert desktop.children.restart("websockify", Launch(desktop.config, desktop.paths))

def _connecting(desktop: Desktop) -> None:
    """A connection to Xvnc too young to count as a client is open."""
    desktop.someone_connecting = lambda event: True  # type: ignore[method-assign]

# Every transition the desktop has, written out by hand from the design, not from the table.
CASES = [
    Case("start", INIT, STARTING, calls=("provision",)),
    Case("provisioned", STARTING, STARTING, calls=("launch", "start_menu"), internal=True),
    Case("child_ready", STARTING, STARTING, calls=("mark_ready", "launch"), internal=True),
    Case("launched", STARTING, STARTED, calls=("start_probes",)),
    Case("probe_passed", STARTED, HEALTHY),
    Case("probe_passed", RECOVERING, HEALTHY),
    Case("probe_passed", RELOADING_TLS, HEALTHY),
    Case("probe_passed", UNHEALTHY, HEALTHY, config=NO_EXIT),
    # websockify and nginx hold no user state: restart them.  Xvnc or the session: give up.
    # IDLE is HEALTHY with nobody connected: checks judge it alike.
    *[Case("probe_failed", state, RECOVERING, calls=("recover",),
           event=lambda d: WS_PROBE_FAILED) for state in (HEALTHY, IDLE)],
    *[Case("probe_failed", state, UNHEALTHY, posts_shut_down=True) for state in (HEALTHY, IDLE)],
    # Its budget used up, with --no-exit-on-failure: UNHEALTHY, and tried again later.
    *[Case("probe_failed", state, UNHEALTHY, calls=("retry_later",), config=NO_EXIT,
           event=lambda d: WS_PROBE_FAILED, table=NO_BUDGET) for state in (HEALTHY, IDLE)],
    *[Case("child_exited", state, UNHEALTHY, calls=("retry_later",), config=NO_EXIT,
           event=_WS_EXIT, table=NO_BUDGET)
      for state in (STARTED, HEALTHY, IDLE, RELOADING_TLS)],
    Case("child_exited", RECOVERING, UNHEALTHY, calls=("retry_later",), config=NO_EXIT,
         event=_WS_EXIT, table=ONE_RESTART, prepare=_use_the_one_restart),
    Case("child_exited", STARTED, RECOVERING, calls=("recover",), event=_WS_EXIT),
    Case("child_exited", HEALTHY, RECOVERING, calls=("recover",), event=_NGINX_EXIT),
    Case("child_exited", IDLE, RECOVERING, calls=("recover",), event=_WS_EXIT),
    Case("child_exited", RECOVERING, RECOVERING, calls=("recover",), event=_WS_EXIT),
    Case("child_exited", RELOADING_TLS, RECOVERING, calls=("recover",), event=_WS_EXIT),
    Case("child_exited", STARTING, UNHEALTHY, posts_shut_down=True),
    Case("child_exited", STARTED, UNHEALTHY, posts_shut_down=True),
    Case("child_exited", HEALTHY, UNHEALTHY, event=_exit_of("xvnc", -9), posts_shut_down=True),
    Case("child_exited", IDLE, UNHEALTHY, event=_exit_of("xvnc", -9), posts_shut_down=True),
    # Logout: the session ends as lxsession-logout ends it (SIGTERM to lxsession, 143).
    *[Case("child_exited", state, STOPPING, calls=("note_logout",), posts_shut_down=True,
           event=_LOGOUT)
      for state in (STARTING, STARTED, HEALTHY, IDLE, RECOVERING, RELOADING_TLS)],
    Case("child_exited", UNHEALTHY, STOPPING, calls=("note_logout",), posts_shut_down=True,
         config=NO_EXIT, event=_LOGOUT),
    Case("child_exited", RECOVERING, UNHEALTHY, posts_shut_down=True),
    Case("child_exited", RELOADING_TLS, UNHEALTHY, posts_shut_down=True),
    Case("child_exited", UNHEALTHY, UNHEALTHY, calls=("retry_later",), internal=True,
         config=NO_EXIT, event=_WS_EXIT),
    Case("restart_due", RECOVERING, RECOVERING, calls=("restart_child",), internal=True),
    Case("restart_due", UNHEALTHY, UNHEALTHY, calls=("restart_child",), internal=True,
         config=NO_EXIT),
    # Sound is optional: repaired in every state, which stays as it is.
    *[Case("child_exited", state, state, calls=("repair_optional",), internal=True,
           event=_SOUND_EXIT, table=WITH_SOUND) for state in LIVE_STATES],
    Case("child_exited", UNHEALTHY, UNHEALTHY, calls=("repair_optional",), internal=True,
         config=NO_EXIT, event=_SOUND_EXIT, table=WITH_SOUND),
    *[Case("restart_due", state, state, calls=("restart_optional",), internal=True,
           event=lambda d: RestartDue(name="sound"), table=WITH_SOUND)
      for state in LIVE_STATES],
    Case("restart_due", UNHEALTHY, UNHEALTHY, calls=("restart_optional",), internal=True,
         config=NO_EXIT, event=lambda d: RestartDue(name="sound"), table=WITH_SOUND),
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
    Case("stop", IDLE, STOPPING, posts_shut_down=True),
    Case("stop", RECOVERING, STOPPING, posts_shut_down=True),
    Case("stop", RELOADING_TLS, STOPPING, posts_shut_down=True),
    Case("stop", UNHEALTHY, STOPPING, posts_shut_down=True),
    # TLS rotation and expiry.
    Case("certificate_changed", HEALTHY, RELOADING_TLS, calls=("reload_certificate",)),
    Case("certificate_changed", IDLE, RELOADING_TLS, calls=("reload_certificate",)),
    Case("certificate_changed", UNHEALTHY, RELOADING_TLS, calls=("reload_certificate",),
         config=NO_EXIT, route=tuple(_EXPIRED)),
    *[Case("certificate_changed", state, state, calls=("defer_certificate",), internal=True)
      for state in (STARTING, STARTED, RECOVERING, RELOADING_TLS)],
    *[Case("certificate_check_due", state, state, calls=("check_certificate",), internal=True)
      for state in (STARTED, HEALTHY, IDLE, RECOVERING, RELOADING_TLS)],
    Case("certificate_check_due", UNHEALTHY, UNHEALTHY, calls=("check_certificate",),
         internal=True, config=NO_EXIT),
    *[Case("certificate_expired", state, UNHEALTHY, posts_shut_down=True)
      for state in (STARTED, HEALTHY, IDLE, RECOVERING, RELOADING_TLS)],
    # /Apps: mapped at start by a worker; from then on the loop's.
    *[Case("apps_mapped", state, state, calls=("menu_mapped",), internal=True)
      for state in (STARTING, STARTED, HEALTHY, IDLE, RECOVERING, RELOADING_TLS)],
    Case("apps_mapped", UNHEALTHY, UNHEALTHY, calls=("menu_mapped",), internal=True,
         config=NO_EXIT),
    # /Apps: mapped again in every state where the desktop lives.
    *[Case("apps_changed", state, state, calls=("map_apps",), internal=True)
      for state in (STARTING, STARTED, HEALTHY, IDLE, RECOVERING, RELOADING_TLS)],
    Case("apps_changed", UNHEALTHY, UNHEALTHY, calls=("map_apps",), internal=True,
         config=NO_EXIT),
    # --web-users: a changed file is checked and in service at once; nothing moves.
    *[Case("web_users_changed", state, state, calls=("reload_web_users",), internal=True)
      for state in (STARTING, STARTED, HEALTHY, IDLE, RECOVERING, RELOADING_TLS)],
    Case("web_users_changed", UNHEALTHY, UNHEALTHY, calls=("reload_web_users",),
         internal=True, config=NO_EXIT),
    # Keyboard: the page's request is taken while the X server runs; refused before it
    # is up or when UNHEALTHY; a worker's result is the loop's in every living state.
    *[Case("keyboard_asked", state, state, calls=("switch_keyboard",), internal=True)
      for state in (STARTED, HEALTHY, IDLE, RECOVERING, RELOADING_TLS)],
    Case("keyboard_asked", STARTING, STARTING, calls=("refuse_keyboard",), internal=True),
    Case("keyboard_asked", UNHEALTHY, UNHEALTHY, calls=("refuse_keyboard",), internal=True,
         config=NO_EXIT),
    *[Case("keyboard_switched", state, state, calls=("keyboard_switched_done",),
           internal=True)
      for state in (STARTING, STARTED, HEALTHY, IDLE, RECOVERING, RELOADING_TLS)],
    Case("keyboard_switched", UNHEALTHY, UNHEALTHY, calls=("keyboard_switched_done",),
         internal=True, config=NO_EXIT),
    # menu-cached: looked at until it watches the menu folder.
    *[Case("menu_check_due", state, state, calls=("check_menu",), internal=True)
      for state in (STARTED, HEALTHY, IDLE, RECOVERING, RELOADING_TLS)],
    Case("menu_check_due", UNHEALTHY, UNHEALTHY, calls=("check_menu",), internal=True,
         config=NO_EXIT),
    # Clients, counted from the first HEALTHY on; a change is noted, quietly.
    *[Case("clients_check_due", state, state, calls=("count_clients",), internal=True)
      for state in (STARTED, HEALTHY, IDLE, RECOVERING, RELOADING_TLS)],
    Case("clients_check_due", UNHEALTHY, UNHEALTHY, calls=("count_clients",), internal=True,
         config=NO_EXIT),
    *[Case("clients_changed", state, state, calls=("note_clients",), internal=True)
      for state in (STARTED, HEALTHY, RECOVERING, RELOADING_TLS)],
    Case("clients_changed", IDLE, IDLE, calls=("note_clients",), internal=True,
         event=lambda d: ClientsChanged(count=0)),
    Case("clients_changed", UNHEALTHY, UNHEALTHY, calls=("note_clients",), internal=True,
         config=NO_EXIT),
    # --stop-when-idle: a client back in IDLE keeps the desktop; nobody, it stops.
    Case("clients_changed", IDLE, HEALTHY, calls=("note_client_back",)),
    Case("idle_soon", HEALTHY, IDLE),
    *[Case("idle_timed_out", state, STOPPING, posts_shut_down=True)
      for state in (HEALTHY, IDLE, RECOVERING, RELOADING_TLS)],
    # ... unless a connection too young to count is open: the stop looks again later.
    *[Case("idle_timed_out", state, state, calls=("look_again",), internal=True,
           prepare=_connecting) for state in (HEALTHY, IDLE, RECOVERING, RELOADING_TLS)],
    Case("idle_timed_out", UNHEALTHY, UNHEALTHY, calls=("look_again",), internal=True,
         config=NO_EXIT, prepare=_connecting),
    Case("idle_timed_out", UNHEALTHY, STOPPING, posts_shut_down=True, config=NO_EXIT),
    Case("shut_down", STOPPING, STOPPED, calls=("stop_children", "exit"), exit_code=0),
    Case("shut_down", FAILED, FAILED, calls=("stop_children", "exit"), exit_code=2,
         internal=True),
    Case("shut_down", UNHEALTHY, UNHEALTHY, calls=("stop_children", "exit"), exit_code=3,
         internal=True),
]


def _names(value: str | list[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _table_rows() -> set[tuple[str, str, str | None, tuple[str, ...]]]:
    rows = set()
    for t in machine.TRANSITIONS:
        calls = _names(t.get("before", [])) + _names(t.get("after", []))
        rows |= {(t["trigger"], s, t["dest"], calls) for s in _names(t["source"])}
    return rows


HANDLED = {(trigger, source) for trigger, source, _, _ in _table_rows()}
INVALID = sorted((trigger, state) for trigger in EVENTS for state in STATES
                 if (trigger, state) not in HANDLED)

# The machine's actions.  In the table tests most only record that they ran; these run
# for real too (they only change the desktop's own bookkeeping, or end it).
CALLED_THROUGH = frozenset({"defer_certificate", "note_logout", "note_client_back",
                            "stop_children", "exit"})


def _actions() -> set[str]:
    names: set[str] = set()
    for t in machine.TRANSITIONS:
        for key in ("before", "after"):
            value = t.get(key, [])
            names.update([value] if isinstance(value, str) else value)
    return names


@dataclass
class Table:
    """A desktop for one table test: real children running, a prober that never probes,
    actions recorded (with the status word a reader sees while each one runs)."""

    desktop: Desktop
    paths: Paths
    calls: list[str] = field(default_factory=list)
    words: dict[str, str] = field(default_factory=dict)
    # Verdicts on certificate files (test_web.py tests the real ones).
    certificate_valid: bool = True
    certificate_expired: bool = True
    # Whether nobody connected since an idle deadline was armed (the lifecycle tests
    # count real clients).
    nobody_connected: bool = True

    def record(self, name: str) -> None:
        real = getattr(self.desktop, name)

        def action(event: EventData) -> None:
            self.calls.append(name)
            self.words[name] = self.paths.status.read_text()
            if name in CALLED_THROUGH:
                real(event)
        setattr(self.desktop, name, action)

    def dispatch(self, event: Event) -> None:
        loop.dispatch(self.desktop, event)

    def posted(self) -> list[Event]:
        """What the machine posted; the late exits of children it stopped are not news."""
        out = []
        while (ev := self.desktop.events.get(timeout=0)) is not None:
            if not (isinstance(ev, ChildExited) and self.desktop.children.stale(ev.name, ev.pid)):
                out.append(ev)
        return out


@pytest.fixture
def tables() -> Iterator[list[Table]]:
    made: list[Table] = []
    yield made
    for table in made:
        table.desktop.children.stop_all()


@pytest.fixture
def table_in(tables: list[Table], paths: Paths,
             run_as: RunAs) -> Callable[..., Table]:
    def make(state: str, config: Config | None = None,
             route: Sequence[Event] | None = None,
             table: Sequence[Program] | None = None) -> Table:
        """A desktop brought to `state` by dispatching ROUTES[state]; queue and calls
        cleared."""
        cfg = config or Config()
        desktop = Desktop(cfg, EventQueue(), Deadlines(), paths,
                          Seams(table or programs(), provisioner(run_as), Checks()))
        machine.build(desktop)
        t = Table(desktop, paths)
        tables.append(t)
        # The children run (so exits and conditions are about real pids) ...
        for account in ("desktop", "web", "root"):
            desktop.children.use(run_as, {"PATH": os.environ["PATH"]}, account)
        launch = Launch(cfg, paths)
        assert not desktop.children.launch(launch)
        assert desktop.events.get(timeout=WAIT) == ChildReady(name="xvnc")
        desktop.children.mark_ready("xvnc")
        assert desktop.children.launch(launch)
        # ... and the prober is at generation 0 without ever probing.
        desktop.prober = Prober([], desktop.events, interval=3600)
        for name in _actions():
            t.record(name)
        desktop.new_certificate_valid = lambda event: t.certificate_valid  # type: ignore[method-assign]
        desktop.certificate_expired_now = lambda event: t.certificate_expired  # type: ignore[method-assign]
        desktop.nobody_connected = lambda event: t.nobody_connected  # type: ignore[method-assign]
        desktop.someone_connecting = lambda event: False  # type: ignore[method-assign]
        for ev in ROUTES[state] if route is None else route:
            t.dispatch(ev)
        assert desktop.state == state
        t.posted()
        t.calls.clear()
        return t
    return make


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
def test_transition(case: Case, paths: Paths, table_in: Callable[..., Table]) -> None:
    t = table_in(case.source, case.config, route=case.route, table=case.table)
    desktop = t.desktop
    if case.prepare is not None:
        case.prepare(desktop)
    reason_before = desktop.reason
    status_before = _status(paths) if case.source != INIT else None
    event = case.make_event(desktop)
    with capture_logs() as logs:
        t.dispatch(event)

    assert desktop.state == case.dest
    assert tuple(t.calls) == case.calls
    assert desktop.exit_code == case.exit_code
    assert t.posted() == ([ShutDown()] if case.posts_shut_down else [])
    if event.quiet and case.internal:  # routine: neither a log line nor a status write
        assert [e for e in logs if e["event"] == "transition"] == []
        assert _status(paths) == status_before
        return

    # What a user's script reads: exactly one word and a newline, and its detail.
    word, doc = _status(paths)
    assert word == case.dest + "\n"
    assert doc["state"] == case.dest
    assert doc["pid"] == os.getpid()
    if "note_logout" in case.calls:
        assert doc["reason"] == f"the desktop user logged out ({event.why})"
    elif "note_client_back" in case.calls:
        assert doc["reason"].startswith("a client connected (1 connected)")
    else:
        assert doc["reason"] == (event.why or reason_before)
    assert doc["since"].endswith("Z")
    datetime.fromisoformat(doc["since"].replace("Z", "+00:00"))
    assert doc["username"] == case.config.username
    assert doc["web_port"] == case.config.web_port
    assert doc["vnc_port"] is None, "raw VNC is on no TCP port without --expose-vnc"
    assert doc["listening"] == [f"tcp {case.config.web_port} (nginx)"]
    assert doc["sign_in"] is None
    assert set(doc["children"]) == set(CHILD_NAMES) | (
        {"sound"} if case.table is WITH_SOUND else set())

    moves = [e for e in logs if e["event"] == "transition"]
    assert len(moves) == 1
    assert (moves[0]["trigger"], moves[0]["dest"]) == (case.trigger, case.dest)
    assert moves[0]["reason"] == doc["reason"]


@pytest.mark.parametrize(("trigger", "state"), INVALID, ids=str)
def test_event_invalid_in_state_is_ignored(trigger: str, state: str, paths: Paths,
                                           table_in: Callable[..., Table]) -> None:
    """Late events (a child's exit while STOPPING, a probe result after FAILED) must not
    crash the loop or move the machine."""
    t = table_in(state)
    status_before = _status(paths) if state != INIT else None
    exit_before = t.desktop.exit_code
    with capture_logs() as logs:
        t.dispatch(EVENTS[trigger](t.desktop))
    assert t.desktop.state == state
    assert t.desktop.exit_code == exit_before
    assert t.calls == []
    assert t.posted() == []
    if status_before is None:
        assert not paths.status.exists()
    else:
        assert _status(paths) == status_before
    assert [(e["event"], e["trigger"], e["state"]) for e in logs] == [
        ("event_ignored", trigger, state)]


def _assert_unmoved(t: Table, state: str, before: tuple[str, dict[str, Any]]) -> None:
    assert t.desktop.state == state
    assert t.calls == []
    assert t.desktop.exit_code is None
    assert t.posted() == []
    assert _status(t.paths) == before


def test_exit_codes_end_the_loop_with_each_final_state(table_in: Callable[..., Table]) -> None:
    """What `docker run` returns: 0 after a stop, 2 for FAILED, 3 for UNHEALTHY."""
    codes = {}
    for state, route in ((STOPPED, ROUTES[STOPPED]), (FAILED, [*ROUTES[FAILED], ShutDown()]),
                         (UNHEALTHY, [*ROUTES[UNHEALTHY], ShutDown()])):
        t = table_in(state, route=route)
        codes[state] = t.desktop.exit_code
    assert codes == {STOPPED: 0, FAILED: 2, UNHEALTHY: 3}


def test_status_names_the_vnc_port_only_when_it_listens(
        table_in: Callable[..., Table]) -> None:
    """Without --expose-vnc, Xvnc is on a UNIX socket: no VNC port to tell anyone."""
    t = table_in(HEALTHY, Config(expose_vnc=True, vnc_port=5999, web_port=8443,
                                 enable_tls=True))
    _, doc = _status(t.paths)
    assert (doc["web_port"], doc["vnc_port"]) == (8443, 5999)
    assert doc["listening"] == ["tcp 8443 (nginx, TLS)", "tcp 5999 (Xvnc)"]


def test_probe_pass_does_not_revive_unhealthy_when_exiting_on_failure(
        table_in: Callable[..., Table]) -> None:
    t = table_in(UNHEALTHY)
    before = _status(t.paths)
    t.dispatch(ProbePassed())
    _assert_unmoved(t, UNHEALTHY, before)
    t.dispatch(ShutDown())
    assert t.desktop.exit_code == 3


@pytest.mark.parametrize("state", [STARTED, HEALTHY, RECOVERING, RELOADING_TLS, UNHEALTHY])
def test_verdicts_of_checks_older_than_a_restart_are_ignored(
        state: str, table_in: Callable[..., Table]) -> None:
    """After a restart the prober starts a new generation: a late pass from before must not
    declare the new websockify HEALTHY, nor a late failure blame it."""
    t = table_in(state, NO_EXIT)
    assert t.desktop.prober is not None
    t.desktop.prober.reset()
    before = _status(t.paths)
    t.dispatch(ProbePassed(generation=0))
    t.dispatch(ProbeFailed(reason="gone", part="websockify", generation=0))
    _assert_unmoved(t, state, before)
    t.dispatch(ProbePassed(generation=1))
    assert t.desktop.state == HEALTHY


@pytest.mark.parametrize("state", [STARTING, STARTED, HEALTHY, RECOVERING, UNHEALTHY])
def test_exit_of_a_replaced_child_is_ignored(state: str,
                                             table_in: Callable[..., Table]) -> None:
    """The old websockify's exit, arriving after its replacement started, is not news."""
    t = table_in(state, NO_EXIT)
    before = _status(t.paths)
    for name in CHILD_NAMES:
        t.dispatch(ChildExited(name=name, pid=1, returncode=1))
    _assert_unmoved(t, state, before)


@pytest.mark.parametrize("state", [STARTED, HEALTHY, RECOVERING])
def test_exit_of_a_retired_child_is_ignored(state: str,
                                            table_in: Callable[..., Table]) -> None:
    t = table_in(state)
    before = _status(t.paths)
    for child in t.desktop.children.children():
        child.retired = True
        t.dispatch(ChildExited(name=child.name, pid=child.pid, returncode=-15))
    _assert_unmoved(t, state, before)


def test_websockify_is_not_restarted_once_the_budget_is_used_up(
        table_in: Callable[..., Table]) -> None:
    t = table_in(HEALTHY, table=programs(restart=Restart(attempts=0)))
    t.dispatch(_WS_EXIT(t.desktop))
    assert t.desktop.state == UNHEALTHY
    assert t.calls == []
    assert t.posted() == [ShutDown()]


def test_websockify_probe_failure_without_budget_is_unhealthy(
        table_in: Callable[..., Table]) -> None:
    t = table_in(HEALTHY, table=programs(restart=Restart(attempts=0)))
    t.dispatch(WS_PROBE_FAILED)
    assert t.desktop.state == UNHEALTHY
    assert _status(t.paths)[1]["reason"] == WS_PROBE_FAILED.why


def test_xvnc_exit_while_unhealthy_is_not_retried(table_in: Callable[..., Table]) -> None:
    """Only websockify is restartable; Xvnc's death in UNHEALTHY changes nothing."""
    t = table_in(UNHEALTHY, NO_EXIT)
    before = _status(t.paths)
    t.dispatch(_exit_of("xvnc")(t.desktop))
    _assert_unmoved(t, UNHEALTHY, before)


def test_websockify_exit_while_unhealthy_is_not_retried_when_exiting(
        table_in: Callable[..., Table]) -> None:
    t = table_in(UNHEALTHY)
    before = _status(t.paths)
    t.dispatch(_WS_EXIT(t.desktop))
    _assert_unmoved(t, UNHEALTHY, before)


def test_invalid_new_certificate_keeps_the_old_one_in_service(
        table_in: Callable[..., Table]) -> None:
    t = table_in(HEALTHY)
    t.certificate_valid = False
    before = _status(t.paths)
    t.dispatch(CertificateChanged())
    _assert_unmoved(t, HEALTHY, before)


def test_certificate_change_is_deferred_until_healthy(table_in: Callable[..., Table]) -> None:
    """A new certificate arriving mid-start is not lost: it is applied once HEALTHY."""
    t = table_in(STARTED)
    t.dispatch(CertificateChanged())
    assert t.desktop.state == STARTED
    assert t.posted() == []
    t.dispatch(ProbePassed())
    assert t.desktop.state == HEALTHY
    replay = t.posted()
    assert replay == [CertificateChanged()]
    t.dispatch(replay[0])
    assert t.desktop.state == RELOADING_TLS
    assert t.calls == ["defer_certificate", "reload_certificate"]


def test_renewed_certificate_does_not_revive_other_failures(
        table_in: Callable[..., Table]) -> None:
    """UNHEALTHY for another reason (Xvnc died): a new certificate does not hide that."""
    t = table_in(UNHEALTHY, NO_EXIT)
    before = _status(t.paths)
    t.dispatch(CertificateChanged())
    _assert_unmoved(t, UNHEALTHY, before)


def test_renewed_certificate_revives_an_expired_desktop_whatever_came_after(
        table_in: Callable[..., Table]) -> None:
    """UNHEALTHY because of expiry, waiting (--no-exit-on-failure): the reason it is
    UNHEALTHY is the event that made it so, not the text of the last reason."""
    t = table_in(UNHEALTHY, NO_EXIT, route=_EXPIRED)
    t.dispatch(_WS_EXIT(t.desktop))  # retried later: the reason text changes
    assert t.desktop.reason != CertificateExpired().why
    t.calls.clear()
    t.dispatch(CertificateChanged())
    assert t.desktop.state == RELOADING_TLS
    assert t.calls == ["reload_certificate"]


def test_renewed_certificate_after_expiry_needs_no_exit_on_failure(
        table_in: Callable[..., Table]) -> None:
    t = table_in(UNHEALTHY, route=_EXPIRED)
    before = _status(t.paths)
    assert before[1]["reason"] == CertificateExpired().why
    t.dispatch(CertificateChanged())
    _assert_unmoved(t, UNHEALTHY, before)


def test_expiry_of_an_already_renewed_certificate_is_ignored(
        table_in: Callable[..., Table]) -> None:
    t = table_in(HEALTHY)
    t.certificate_expired = False
    before = _status(t.paths)
    t.dispatch(CertificateExpired())
    _assert_unmoved(t, HEALTHY, before)


def test_internal_transitions_keep_the_reason(paths: Paths,
                                              table_in: Callable[..., Table]) -> None:
    t = table_in(STARTING)
    for ev in (Provisioned(), ChildReady(name="xvnc")):
        t.dispatch(ev)
        word, doc = _status(paths)
        assert word == "STARTING\n"
        assert doc["reason"] == Start().why


def test_failed_is_logged_with_its_reason(table_in: Callable[..., Table]) -> None:
    """The error line an operator greps for must say why the desktop failed."""
    t = table_in(STARTING)
    with capture_logs() as logs:
        t.dispatch(Failed(reason="useradd failed (4): UID 1000 is not unique"))
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [(e["event"], e["reason"]) for e in errors] == [
        ("failed", "useradd failed (4): UID 1000 is not unique")]


def test_unhealthy_is_logged_with_its_reason(table_in: Callable[..., Table]) -> None:
    t = table_in(HEALTHY)
    event = _exit_of("xvnc", -9)(t.desktop)
    with capture_logs() as logs:
        t.dispatch(event)
    errors = [e for e in logs if e["log_level"] == "error"]
    assert isinstance(event, ChildExited)
    assert [(e["event"], e["reason"]) for e in errors] == [
        ("unhealthy", f"xvnc (pid {event.pid}) was killed by signal 9")]
    assert errors[0]["exit_on_failure"] is True


@pytest.mark.parametrize(("event", "work", "word"), [
    (WS_PROBE_FAILED, "recover", "RECOVERING\n"),
    (CertificateChanged(), "reload_certificate", "RELOADING_TLS\n"),
    (ProbeFailed(reason="X display :1: refused", part="xvnc"), "stop_children",
     "UNHEALTHY\n"),
])
def test_the_new_word_is_written_before_the_work_starts(
        event: Event, work: str, word: str, table_in: Callable[..., Table]) -> None:
    """A user (or a probe) reading the status while websockify restarts or the children
    stop sees the state that explains it, not the one before."""
    t = table_in(HEALTHY)
    t.dispatch(event)
    if work == "stop_children":
        t.dispatch(ShutDown())
    assert t.words[work] == word



def test_failed_restart_does_not_crash_the_daemon(table_in: Callable[..., Table],
                                                  run_as: RunAs) -> None:
    """Callbacks never raise: a websockify that cannot be started again (the real
    restart_child, the program not found) leaves the desktop RECOVERING, logged, for the
    recovery deadline to end; not an exception out of the loop (exit 1, no status)."""
    t = table_in(RECOVERING)
    t.desktop.restart_child = Desktop.restart_child.__get__(t.desktop)  # type: ignore[method-assign]
    t.desktop.children.use(run_as, {"PATH": str(t.paths.state_dir / "no-such-bin")})
    with capture_logs() as logs:
        t.dispatch(RestartDue(name="websockify"))
    assert t.desktop.state == RECOVERING
    assert [e["child"] for e in logs if e["event"] == "restart_failed"] == ["websockify"]


# -- whole lifecycles: real parts, `sleep` children, checks the test breaks ----------------

@dataclass
class Run:
    desktop: Desktop
    paths: Paths
    checks: Checks
    words: list[str] = field(default_factory=list)

    def until(self, done: Callable[[], bool]) -> None:
        """The daemon's loop (loop.next_event: due deadlines and queued events), with a
        limit per event, recording each status word."""
        limit = time.monotonic() + WAIT
        while not done():
            event = loop.next_event(self.desktop.events, self.desktop.deadlines, limit=0.2)
            if event is None:
                if time.monotonic() > limit:
                    pytest.fail(f"stuck in {self.desktop.state} after {self.words}")
                continue
            limit = time.monotonic() + WAIT
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

    def child(self, name: str) -> Child:
        child = self.desktop.children.child(name)
        assert child is not None
        return child

    def stop(self) -> int:
        self.desktop.events.post(StopRequested(reason="received SIGTERM"))
        return self.until_exit()


def _desktop(paths: Paths, run_as: RunAs, config: Config,
             table: Sequence[Program] | None = None,
             provision: Provisioner | None = None) -> tuple[Desktop, Checks]:
    checks = Checks()
    desktop = Desktop(config, EventQueue(), Deadlines(), paths,
                      Seams(table or programs(), provision or provisioner(run_as), checks))
    return desktop, checks


@pytest.fixture
def started() -> Iterator[list[Run]]:
    """Runs to clean up: whatever a failed test left running is stopped."""
    runs: list[Run] = []
    yield runs
    for run in runs:
        if run.desktop.prober is not None:
            run.desktop.prober.stop()
        run.desktop.web.stop()
        run.desktop.menu.stop()
        run.desktop.children.stop_all()


@pytest.fixture
def start(paths: Paths, run_as: RunAs, started: list[Run]) -> Callable[..., Run]:
    def start(config: Config | None = None, table: Sequence[Program] | None = None,
              provision: Provisioner | None = None) -> Run:
        cfg = config or Config(startup_timeout=WAIT, probe_interval=0.005)
        desktop, checks = _desktop(paths, run_as, cfg, table, provision)
        machine.build(desktop)
        desktop.events.post(Start())
        run = Run(desktop, paths, checks)
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
    kids = run.desktop.children.children()
    # No sign-in: the sign-in service is not in the table.
    assert [c.name for c in kids] == ["xvnc", "websockify", "nginx", "session"]
    assert all(c.returncode is None for c in kids)
    _, doc = _status(paths)
    assert doc["children"] == {c.name: {"pid": c.pid, "running": True, "returncode": None}
                               for c in kids}
    assert doc["listening"] == ["tcp 8080 (nginx)"]
    assert doc["vnc_port"] is None
    assert doc["sign_in"] is None
    assert not run.desktop.deadlines.armed("startup"), "startup deadline left armed"
    # The front door's configuration, written and accepted by `nginx -t` before launch.
    assert paths.nginx_conf.stat().st_mode & 0o777 == 0o600
    assert "listen 8080;" in paths.nginx_conf.read_text()
    assert run.checks.targets[-1].probe_token in paths.nginx_conf.read_text()

    with capture_logs() as logs:
        assert run.stop() == 0
    assert run.words == [STARTING, STARTED, HEALTHY, STOPPING, STOPPED]
    # Stopped in the table's stop order: no new connections first, then the session
    # before the display it draws on.
    assert [e["child"] for e in logs if e["event"] == "child_stopped"] == [
        "nginx", "session", "websockify", "xvnc"]
    _assert_all_stopped(kids)
    _prober_threads_end()
    word, doc = _status(paths)
    assert word == "STOPPED\n"
    assert doc["reason"] == "received SIGTERM"
    assert all(not c["running"] for c in doc["children"].values())


def test_lifecycle_session_waits_for_the_display(start: Callable[..., Run]) -> None:
    """The session starts only once Xvnc said it is ready through its -displayfd pipe."""
    run = start()
    run.until(lambda: run.desktop.children.child("xvnc") is not None)
    assert run.desktop.children.child("session") is None
    run.until_state(STARTED)
    assert run.child("session").returncode is None
    assert run.stop() == 0


def test_lifecycle_xvnc_probe_failure_exits_3(start: Callable[..., Run], paths: Paths) -> None:
    run = start()
    run.until_state(HEALTHY)
    kids = run.desktop.children.children()
    run.checks.broken.add("xvnc")
    assert run.until_exit() == machine.EXIT_CODES[UNHEALTHY] == 3
    assert run.words == [STARTING, STARTED, HEALTHY, UNHEALTHY]
    _assert_all_stopped(kids)
    _prober_threads_end()
    word, doc = _status(paths)
    assert word == "UNHEALTHY\n"
    assert doc["reason"] == "health check failed: xvnc does not answer"


@pytest.mark.parametrize("name", ["xvnc"])
def test_lifecycle_death_of_a_stateful_child_exits_3(start: Callable[..., Run], paths: Paths,
                                                     name: str) -> None:
    """The user's windows are gone with Xvnc: no restart, UNHEALTHY."""
    run = start()
    run.until_state(HEALTHY)
    dead = run.child(name)
    os.kill(dead.pid, signal.SIGKILL)
    assert run.until_exit() == 3
    assert run.words[-2:] == [HEALTHY, UNHEALTHY]
    _assert_all_stopped(run.desktop.children.children())
    _, doc = _status(paths)
    assert doc["reason"] == f"{name} (pid {dead.pid}) was killed by signal 9"
    assert doc["children"][name]["returncode"] == -signal.SIGKILL


@pytest.mark.parametrize("name", ["websockify", "nginx"])
def test_lifecycle_death_of_a_web_child_is_repaired(start: Callable[..., Run],
                                                    paths: Paths, name: str) -> None:
    """websockify and nginx hold no user state: the dead one is restarted and the
    desktop is HEALTHY again."""
    run = start()
    run.until_state(HEALTHY)
    old = run.child(name)
    xvnc, session = run.child("xvnc"), run.child("session")
    os.kill(old.pid, signal.SIGKILL)
    run.until_state(RECOVERING)
    assert _status(paths)[1]["reason"] == f"{name} (pid {old.pid}) was killed by signal 9"
    assert run.desktop.deadlines.armed("recovery")
    run.until_state(HEALTHY)
    new = run.child(name)
    assert new.pid != old.pid
    assert new.returncode is None
    # The user's windows were never touched.
    assert run.child("xvnc") is xvnc
    assert run.child("session") is session
    assert xvnc.returncode is None
    assert session.returncode is None
    assert run.words == [STARTING, STARTED, HEALTHY, RECOVERING, HEALTHY]
    _, doc = _status(paths)
    assert doc["children"][name] == {"pid": new.pid, "running": True, "returncode": None}
    assert doc["restarts"][name]["used"] == 1
    assert not run.desktop.deadlines.armed("recovery"), "recovery deadline left armed"
    assert run.stop() == 0
    _assert_all_stopped(run.desktop.children.children())


@pytest.mark.parametrize("name", ["websockify", "nginx"])
def test_lifecycle_hung_web_child_is_replaced(start: Callable[..., Run], paths: Paths,
                                              name: str) -> None:
    """Its probe fails while it still runs: the hung process is stopped, a new one runs."""
    run = start()
    run.until_state(HEALTHY)
    hung = run.child(name)
    others = {c.name: c for c in run.desktop.children.children() if c.name != name}
    run.checks.broken.add(name)
    run.until_state(RECOVERING)
    assert _status(paths)[1]["reason"] == f"health check failed: {name} does not answer"
    assert _gone(hung)
    run.until(lambda: run.child(name) is not hung)
    assert run.desktop.state == RECOVERING
    run.checks.broken.clear()
    run.until_state(HEALTHY)
    assert {c.name: c for c in run.desktop.children.children() if c.name != name} == others
    new = run.child(name)
    assert new.pid != hung.pid
    assert new.returncode is None
    assert run.words == [STARTING, STARTED, HEALTHY, RECOVERING, HEALTHY]
    assert run.stop() == 0
    _assert_all_stopped(run.desktop.children.children())


def test_lifecycle_recovery_that_never_heals_exits_3(start: Callable[..., Run],
                                                     paths: Paths) -> None:
    # Long enough to become HEALTHY first (nginx -t included) on a busy machine.
    run = start(Config(startup_timeout=1.0, probe_interval=0.005))
    run.until_state(HEALTHY)
    run.checks.broken.add("websockify")
    assert run.until_exit() == 3
    assert run.words[-3:] == [HEALTHY, RECOVERING, UNHEALTHY]
    assert _status(paths)[1]["reason"] == "not HEALTHY again within 1 s of a restart"
    _assert_all_stopped(run.desktop.children.children())


def test_lifecycle_startup_that_never_becomes_healthy_exits_3(start: Callable[..., Run],
                                                              paths: Paths) -> None:
    """The startup deadline is armed at start and ends a desktop that never passes,
    whether it comes while the children launch (a busy host) or after (STARTED)."""
    run = start(Config(startup_timeout=0.3, probe_interval=0.005))
    run.checks.broken.add("xvnc")
    assert run.until_exit() == 3
    assert run.words in ([STARTING, STARTED, UNHEALTHY], [STARTING, UNHEALTHY])
    assert _status(paths)[1]["reason"] == "not HEALTHY within 0.3 s of start"


def test_lifecycle_no_exit_on_failure_waits_and_recovers(start: Callable[..., Run],
                                                         paths: Paths) -> None:
    run = start(Config(no_exit_on_failure=True, startup_timeout=WAIT, probe_interval=0.005))
    run.until_state(HEALTHY)
    run.checks.broken.add("xvnc")
    run.until_state(UNHEALTHY)
    # Stays up so files can be recovered: children running, no exit, no shutdown queued.
    assert run.desktop.exit_code is None
    assert all(c.returncode is None for c in run.desktop.children.children())
    run.checks.broken.clear()
    run.until_state(HEALTHY)
    assert _status(paths)[0] == "HEALTHY\n"
    assert run.stop() == 0
    assert run.words == [STARTING, STARTED, HEALTHY, UNHEALTHY, HEALTHY, STOPPING, STOPPED]
    _assert_all_stopped(run.desktop.children.children())


def test_lifecycle_no_exit_on_failure_retries_websockify_when_the_budget_refills(
        start: Callable[..., Run]) -> None:
    """Budget used up with --no-exit-on-failure: UNHEALTHY, and websockify is tried
    again later (a restart deadline), which repairs the desktop."""
    budget = Restart(attempts=1, window=0.5, first_delay=0.01, max_delay=0.01)
    run = start(Config(no_exit_on_failure=True, startup_timeout=WAIT, probe_interval=0.005),
                table=programs(restart=budget))
    run.until_state(HEALTHY)
    os.kill(run.child("websockify").pid, signal.SIGKILL)
    run.until_state(RECOVERING)
    run.until_state(HEALTHY)
    second = run.child("websockify")
    os.kill(second.pid, signal.SIGKILL)
    run.until_state(UNHEALTHY)
    assert run.desktop.deadlines.armed("restart:websockify")
    run.until_state(HEALTHY)
    assert run.child("websockify").pid != second.pid
    assert run.stop() == 0


def test_lifecycle_no_exit_on_failure_stop_from_unhealthy(start: Callable[..., Run]) -> None:
    run = start(Config(no_exit_on_failure=True, startup_timeout=WAIT, probe_interval=0.005))
    run.until_state(HEALTHY)
    run.checks.broken.add("xvnc")
    run.until_state(UNHEALTHY)
    assert run.stop() == 0
    assert run.words[-3:] == [UNHEALTHY, STOPPING, STOPPED]
    _assert_all_stopped(run.desktop.children.children())


def test_lifecycle_launch_failure_exits_2_and_stops_what_started(
        start: Callable[..., Run], paths: Paths) -> None:
    """A program missing from the image: FAILED, exit 2, and Xvnc is not left behind."""
    run = start(table=programs(session=lambda launch: ["/nonexistent/startlxde"]))
    assert run.until_exit() == machine.EXIT_CODES[FAILED] == 2
    assert run.words == [STARTING, FAILED]
    kids = run.desktop.children.children()
    assert [c.name for c in kids] == ["xvnc", "websockify", "nginx"]
    _assert_all_stopped(kids)
    _, doc = _status(paths)
    assert "/nonexistent/startlxde" in doc["reason"]


def test_lifecycle_child_exits_after_stop_are_ignored(start: Callable[..., Run],
                                                      paths: Paths) -> None:
    run = start()
    run.until_state(HEALTHY)
    assert run.stop() == 0
    # The children's watchers post their exits late, into STOPPED: nothing changes.
    late: list[Event] = []

    def all_exits() -> bool:
        while (ev := run.desktop.events.get(timeout=0)) is not None:
            late.append(ev)
        return sum(isinstance(e, ChildExited) for e in late) == len(CHILD_NAMES)

    wait_for(all_exits, "every child's exit to be posted")
    for ev in late:
        loop.dispatch(run.desktop, ev)
    assert run.desktop.state == STOPPED
    assert run.desktop.exit_code == 0
    assert _status(paths)[0] == "STOPPED\n"


# -- the front door: nginx's configuration, sign-in ------------------------------------

def test_lifecycle_a_configuration_nginx_refuses_exits_2_with_its_words(
        start: Callable[..., Run], paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    """`nginx -t` runs before any child starts: its [emerg] line is the reason."""
    run = start()
    real = nginx_conf.render
    monkeypatch.setattr(nginx_conf, "render", lambda *a: real(*a).replace(
        "worker_processes 1;", "worker_processes 1;\nwhaletop_no_such_directive on;"))
    assert run.until_exit() == 2
    assert run.words == [STARTING, FAILED]
    assert run.desktop.children.children() == []
    reason = _status(paths)[1]["reason"]
    assert reason.startswith("nginx refused its configuration: [emerg] unknown directive")
    assert "whaletop_no_such_directive" in reason


def test_lifecycle_an_image_without_the_web_account_fails_naming_it(
        start: Callable[..., Run], paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    run = start()
    monkeypatch.setattr(frontdoor, "WEB_ACCOUNT", "whaletop-nobody")
    assert run.until_exit() == 2
    assert run.words == [STARTING, FAILED]
    assert run.desktop.children.children() == []
    assert "no 'whaletop-nobody' account" in _status(paths)[1]["reason"]


def _pid_uid(child: Child) -> int:
    return int(psutil.Process(child.pid).uids().real)


def test_lifecycle_with_sign_in(start: Callable[..., Run], paths: Paths) -> None:
    """WEB_PASSWORD: the sign-in service runs, as the web account, with the users file
    and its settings readable by that account only; nginx asks it before anything."""
    run = start(Config(web_password_from_env=True, web_password="correct horse",
                       startup_timeout=WAIT, probe_interval=0.005))
    run.until_state(HEALTHY)
    kids = run.desktop.children.children()
    assert [c.name for c in kids] == ["xvnc", "websockify", "nginx", "webauth", "session"]
    web = frontdoor.web_account()
    assert web is not None, "the tests run as root"
    assert _pid_uid(run.child("webauth")) == web.uid
    assert _pid_uid(run.child("nginx")) == 0, "nginx's master reads the key, then drops"
    _, doc = _status(paths)
    assert doc["sign_in"] == {"users": 1, "viewers": 0, "source": "WEB_PASSWORD"}
    users = paths.web_dir / "users"
    name, hashed, role = users.read_text().strip().split(":")
    assert (name, role) == ("user", "full")
    assert webusers.verify(webusers.WebUser(name, hashed), "correct horse")
    settings = json.loads((paths.web_dir / "auth.json").read_text())
    assert settings["probe_token"] == run.checks.targets[-1].probe_token
    assert settings["users_file"] == str(users)
    assert settings["secure_cookie"] is False
    for path in (paths.web_dir, users, paths.web_dir / "auth.json"):
        assert (path.stat().st_uid, path.stat().st_mode & 0o077) == (web.uid, 0), path
    assert run.checks.targets[-1].auth_socket == paths.auth_socket
    assert "auth_request /auth/check;" in paths.nginx_conf.read_text()
    with capture_logs() as logs:
        assert run.stop() == 0
    assert [e["child"] for e in logs if e["event"] == "child_stopped"] == [
        "nginx", "webauth", "session", "websockify", "xvnc"]


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_text(text)
    tmp.replace(path)


def test_lifecycle_web_users_file_changes_are_in_service_at_once(
        start: Callable[..., Run], paths: Paths, tmp_path: Path) -> None:
    source = tmp_path / "secrets" / "users"
    source.parent.mkdir()
    alice, bob = hash_password("alice's secret"), hash_password("bob's secret")
    _replace(source, f"alice:{alice}\n")
    run = start(Config(web_users=str(source), startup_timeout=WAIT, probe_interval=0.005))
    run.until_state(HEALTHY)
    installed = paths.web_dir / "users"
    assert installed.read_text() == f"alice:{alice}:full\n"
    pids = {c.name: c.pid for c in run.desktop.children.children()}

    _replace(source, f"alice:{alice}\nbob:{bob}:viewer\n")
    run.until(lambda: "bob:" in installed.read_text())
    assert installed.read_text() == f"alice:{alice}:full\nbob:{bob}:viewer\n"
    assert _status(paths)[1]["sign_in"] == {"users": 1, "viewers": 1, "source": str(source)}

    with capture_logs() as logs:
        _replace(source, "carol:plaintext\n")
        run.until(lambda: any(e["event"] == "web_users_refused" for e in logs))
    refused = next(e for e in logs if e["event"] == "web_users_refused")
    assert "line 1" in refused["reason"]
    assert "plaintext" not in refused["reason"], "never shows what was in the file"
    assert installed.read_text() == f"alice:{alice}:full\nbob:{bob}:viewer\n"
    # Nothing was restarted, and the desktop stays HEALTHY.
    assert {c.name: c.pid for c in run.desktop.children.children()} == pids
    assert run.desktop.state == HEALTHY
    assert run.stop() == 0


# -- TLS rotation, for real: a certificate file, its watcher, nginx reloaded --------------

def _write_certificate(path: Path, host: str) -> str:
    bundle = tls.generate_self_signed(host)
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_bytes(bundle.combined_pem())
    tmp.replace(path)
    return bundle.fingerprint


def test_lifecycle_certificate_rotation_reloads_nginx_and_replaces_no_child(
        start: Callable[..., Run], tmp_path: Path, paths: Paths) -> None:
    """nginx reloads on SIGHUP: connected sessions stay on its old workers; no child is
    restarted, so nobody is disconnected."""
    cert = tmp_path / "certs" / "tls.pem"
    cert.parent.mkdir()
    first = _write_certificate(cert, "first.test")
    run = start(Config(tls_certificate=str(cert), startup_timeout=WAIT, probe_interval=0.005))
    run.until_state(HEALTHY)
    assert run.checks.targets[-1].pin == first
    conf = paths.nginx_conf.read_text()
    assert f"ssl_certificate {paths.tls_pem};" in conf
    assert "listen 8080 ssl;" in conf
    before = {c.name: c.pid for c in run.desktop.children.children()}
    assert not hups(paths).exists()
    second = _write_certificate(cert, "second.test")
    run.until_state(RELOADING_TLS)
    run.until_state(HEALTHY)
    assert run.checks.targets[-1].pin == second, "the probes pin the new certificate"
    assert {c.name: c.pid for c in run.desktop.children.children()} == before
    wait_for(hups(paths).exists, "nginx's SIGHUP")
    assert hups(paths).read_text() == "hup\n"
    # The file nginx reads (as root, whaletopd's user) holds the new certificate.
    assert tls.load(paths.tls_pem).fingerprint == second
    assert paths.tls_pem.stat().st_uid == os.geteuid()
    assert _status(run.paths)[1]["tls"]["fingerprint_sha256"] == second
    assert run.stop() == 0


def test_lifecycle_certificate_reload_that_never_heals_ends_unhealthy(
        start: Callable[..., Run], tmp_path: Path) -> None:
    """The reload arms the recovery deadline: an nginx that never serves the new
    certificate must not leave the desktop in RELOADING_TLS for ever."""
    cert = tmp_path / "certs" / "tls.pem"
    cert.parent.mkdir()
    _write_certificate(cert, "first.test")
    run = start(Config(tls_certificate=str(cert), startup_timeout=1.0, probe_interval=0.005))
    run.until_state(HEALTHY)
    run.checks.broken.add("nginx")  # the reloaded nginx will never answer
    run.desktop.prober.reset()  # type: ignore[union-attr]  # no verdict on the old one
    _write_certificate(cert, "second.test")
    run.until_state(RELOADING_TLS)
    assert run.desktop.deadlines.armed("recovery")
    assert run.until_exit() == 3
    assert run.words[-3:] == [HEALTHY, RELOADING_TLS, UNHEALTHY]
    assert _status(run.paths)[1]["reason"] == "not HEALTHY again within 1 s of a restart"


# -- loop.run itself --------------------------------------------------------------------

def test_run_with_a_config_error_fails_with_exit_2(paths: Paths, run_as: RunAs,
                                                   restore_signals: None) -> None:
    desktop, _ = _desktop(paths, run_as, Config())
    with capture_logs() as logs:
        code = loop.run(Config(), config_error="--depth: 8 is not one of 16, 24, 32",
                        desktop=desktop)
    assert code == 2
    word, doc = _status(paths)
    assert word == "FAILED\n"
    assert doc["reason"] == "--depth: 8 is not one of 16, 24, 32"
    exits = [e for e in logs if e["event"] == "daemon_exit"]
    assert [(e["code"], e["state"]) for e in exits] == [(2, FAILED)]


def test_run_stops_on_sigterm_with_exit_0(paths: Paths, run_as: RunAs,
                                          restore_signals: None) -> None:
    """`docker stop`: SIGTERM reaches the blocked loop, which stops the children."""
    config = Config(startup_timeout=WAIT)
    desktop, _ = _desktop(paths, run_as, config)

    def terminate_when_healthy() -> None:
        try:
            wait_for(lambda: paths.status.exists() and paths.status.read_text() == "HEALTHY\n",
                     "HEALTHY")
            os.kill(os.getpid(), signal.SIGTERM)
        except BaseException:
            desktop.events.post(StopRequested(reason="test gave up waiting for HEALTHY"))

    threading.Thread(target=terminate_when_healthy, daemon=True).start()
    assert loop.run(config, desktop=desktop) == 0
    word, doc = _status(paths)
    assert word == "STOPPED\n"
    assert doc["reason"] == "received SIGTERM"
    assert all(not c["running"] for c in doc["children"].values())
    assert set(doc["children"]) == set(CHILD_NAMES)
    for child in doc["children"].values():
        assert child["returncode"] == -signal.SIGTERM


def test_a_due_deadline_is_served_before_a_busy_queue() -> None:
    """Time is not starved by events: a due deadline comes first."""
    deadlines = Deadlines(clock=lambda: 100.0)
    deadlines.arm("startup", 0, StartupTimedOut(seconds=1.0))
    events = EventQueue()
    events.post(AppsChanged())
    assert loop.next_event(events, deadlines) == StartupTimedOut(seconds=1.0)
    assert loop.next_event(events, deadlines) == AppsChanged()
    assert loop.next_event(events, deadlines, limit=0) is None


# -- the session: a crash is repaired, a logout stops the desktop ------------------------

def _session_stand_in(launch: Launch) -> list[str]:
    """What `dbus-run-session -- startlxde` does: runs lxsession (here a `sleep`) and
    exits with its status, 128 + the signal when it was killed (SIGTERM from
    lxsession-logout: 143)."""
    return ["bash", "-c", "sleep 60 & wait $!"]


def _lxsession(run: Run) -> psutil.Process:
    """The session's own child, as lxsession is dbus-run-session's."""
    found: list[psutil.Process] = []
    wait_for(lambda: found.extend(psutil.Process(run.child("session").pid).children())
             or found, "the session's child")
    return found[0]


SESSION_TABLE = programs(session=_session_stand_in)


def test_lifecycle_crashed_session_is_restarted_on_the_same_display(
        start: Callable[..., Run], paths: Paths) -> None:
    """The X server outlives the session: a crash (lxsession killed) is repaired by a
    fresh session, RECOVERING → HEALTHY, Xvnc untouched."""
    run = start(table=SESSION_TABLE)
    run.until_state(HEALTHY)
    old, xvnc = run.child("session"), run.child("xvnc")
    _lxsession(run).kill()
    run.until_state(RECOVERING)
    assert _status(paths)[1]["reason"] == f"session (pid {old.pid}) exited with code 137"
    run.until_state(HEALTHY)
    new = run.child("session")
    assert new.pid != old.pid
    assert new.returncode is None
    assert run.child("xvnc") is xvnc
    assert xvnc.returncode is None
    assert run.words == [STARTING, STARTED, HEALTHY, RECOVERING, HEALTHY]
    _, doc = _status(paths)
    assert doc["children"]["session"] == {"pid": new.pid, "running": True,
                                          "returncode": None}
    assert doc["restarts"]["session"]["used"] == 1
    assert run.desktop.deadlines.armed("menu"), "the new menu-cached is looked for"
    assert run.stop() == 0


@pytest.mark.parametrize(("how", "code"), [
    ("lxsession-logout", 128 + signal.SIGTERM),  # SIGTERM to $_LXSESSION_PID
    ("the session's own SIGTERM", -signal.SIGTERM),
])
def test_lifecycle_logout_stops_the_desktop_with_exit_0(
        start: Callable[..., Run], paths: Paths, how: str, code: int) -> None:
    """A person who logs out asked to stop: STOPPING, STOPPED, exit 0; no restart."""
    run = start(table=SESSION_TABLE)
    run.until_state(HEALTHY)
    session = run.child("session")
    target = _lxsession(run) if code > 0 else psutil.Process(session.pid)
    target.terminate()
    assert run.until_exit() == 0
    assert run.words == [STARTING, STARTED, HEALTHY, STOPPING, STOPPED]
    assert session.returncode == code
    word, doc = _status(paths)
    assert word == "STOPPED\n"
    exited = "exited with code 143" if code > 0 else "was killed by signal 15"
    assert doc["reason"] == f"the desktop user logged out (session (pid {session.pid}) {exited})"
    assert doc["restarts"]["session"]["used"] == 0
    _assert_all_stopped(run.desktop.children.children())


def test_lifecycle_no_exit_on_failure_is_not_healthy_without_a_session(
        start: Callable[..., Run], paths: Paths) -> None:
    """The session's restarts used up, --no-exit-on-failure: UNHEALTHY, and passing
    checks (they do not look at the session) do not make it HEALTHY again."""
    budget = Restart(attempts=1, window=60.0, first_delay=0.01, max_delay=0.01)
    run = start(Config(no_exit_on_failure=True, startup_timeout=WAIT, probe_interval=3600),
                table=programs(session=_session_stand_in, restart=budget))
    run.until_state(HEALTHY)
    first = run.child("session")
    _lxsession(run).kill()
    run.until_state(RECOVERING)
    run.until(lambda: run.child("session") is not first)  # restarted; no check ran since
    assert run.desktop.prober is not None
    loop.dispatch(run.desktop, ProbePassed(generation=run.desktop.prober.generation))
    assert run.desktop.state == HEALTHY
    second = run.child("session")
    _lxsession(run).kill()
    run.until_state(UNHEALTHY)
    assert second.returncode == 137
    assert run.desktop.deadlines.armed("restart:session"), "tried again when the budget allows"
    loop.dispatch(run.desktop, ProbePassed(generation=run.desktop.prober.generation))
    assert run.desktop.state == UNHEALTHY
    word, doc = _status(paths)
    assert word == "UNHEALTHY\n"
    assert doc["children"]["session"]["running"] is False
    assert run.stop() == 0


def test_a_session_that_ends_with_its_x_server_is_not_restarted(
        start: Callable[..., Run], paths: Paths) -> None:
    """Xvnc killed (--no-exit-on-failure: UNHEALTHY, waiting), then the session ends
    because its display is gone: no restart (no new session can start without Xvnc), and
    the reason stays Xvnc's, which is what a person has to know."""
    run = start(Config(no_exit_on_failure=True, startup_timeout=WAIT, probe_interval=3600),
                table=programs(session=_session_stand_in))
    run.until_state(HEALTHY)
    xvnc, session = run.child("xvnc"), run.child("session")
    os.kill(xvnc.pid, signal.SIGKILL)
    run.until_state(UNHEALTHY)
    reason = _status(paths)[1]["reason"]
    assert reason == f"xvnc (pid {xvnc.pid}) was killed by signal 9"
    _lxsession(run).kill()
    run.until(lambda: session.returncode is not None)
    while (ev := loop.next_event(run.desktop.events, run.desktop.deadlines, 0.3)) is not None:
        loop.dispatch(run.desktop, ev)  # its exit, and whatever that armed
    assert run.desktop.state == UNHEALTHY
    assert _status(paths)[1]["reason"] == reason
    assert not run.desktop.deadlines.armed("restart:session")
    assert run.stop() == 0


def test_probe_pass_with_a_dead_child_is_not_healthy(table_in: Callable[..., Table]) -> None:
    """Whatever the checks say, HEALTHY needs every child running (its exit may still be
    on its way)."""
    t = table_in(STARTED)
    session = t.desktop.children.child("session")
    assert session is not None
    os.kill(session.pid, signal.SIGKILL)
    wait_for(lambda: session.returncode is not None, "the session's exit")
    before = _status(t.paths)
    t.dispatch(ProbePassed())
    assert t.desktop.state == STARTED
    assert _status(t.paths) == before


# -- STARTING's blocking work runs off the loop --------------------------------------------

class Stuck:
    """A provisioner stuck until the test lets it go (a FIFO read, a hung mount)."""

    def __init__(self, run_as: RunAs) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._real = provisioner(run_as)

    def __call__(self, config: Config, paths: Paths, display: int) -> Account:
        self.entered.set()
        self.release.wait()
        return self._real(config, paths, display)


@pytest.fixture
def stuck(run_as: RunAs) -> Iterator[Stuck]:
    s = Stuck(run_as)
    yield s
    s.release.set()


def _provision_thread() -> threading.Thread:
    (thread,) = [t for t in threading.enumerate() if t.name == "provision"]
    return thread


def test_stop_while_provisioning_is_stuck_ends_stopped_and_a_late_result_spawns_nothing(
        start: Callable[..., Run], paths: Paths, stuck: Stuck) -> None:
    run = start(provision=stuck)
    run.until(stuck.entered.is_set)
    assert _provision_thread().daemon, "a stuck worker must not keep the daemon alive"
    assert run.stop() == 0
    assert run.words == [STARTING, STOPPING, STOPPED]
    assert run.desktop.children.children() == []
    # The worker finishes after all: its Provisioned is refused, nothing is spawned.
    stuck.release.set()
    late = run.desktop.events.get(timeout=WAIT)
    assert late == Provisioned()
    with capture_logs() as logs:
        loop.dispatch(run.desktop, late)
    assert [(e["event"], e["trigger"]) for e in logs] == [("event_ignored", "provisioned")]
    assert run.desktop.state == STOPPED
    assert run.desktop.children.children() == []
    assert _status(paths)[0] == "STOPPED\n"


def test_startup_deadline_ends_a_desktop_whose_provisioning_is_stuck(
        start: Callable[..., Run], paths: Paths, stuck: Stuck) -> None:
    run = start(Config(startup_timeout=0.2), provision=stuck)
    assert run.until_exit() == 3
    assert run.words == [STARTING, UNHEALTHY]
    assert _status(paths)[1]["reason"] == "not HEALTHY within 0.2 s of start"
    assert run.desktop.children.children() == []


def test_run_sigterm_while_provisioning_is_stuck_exits_0(
        paths: Paths, run_as: RunAs, stuck: Stuck, restore_signals: None) -> None:
    """`docker stop` in STARTING: the signal reaches the loop, not a blocked callback."""
    desktop, _ = _desktop(paths, run_as, Config(startup_timeout=WAIT), provision=stuck)

    def terminate_when_stuck() -> None:
        if stuck.entered.wait(WAIT):
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            desktop.events.post(StopRequested(reason="test gave up waiting"))

    threading.Thread(target=terminate_when_stuck, daemon=True).start()
    assert loop.run(Config(startup_timeout=WAIT), desktop=desktop) == 0
    word, doc = _status(paths)
    assert word == "STOPPED\n"
    assert doc["reason"] == "received SIGTERM"
    assert doc["children"] == {}


def test_stop_while_a_mapping_of_apps_hangs_in_healthy_ends_stopped(
        start: Callable[..., Run], paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mount under /Apps that hangs while the desktop runs: the mapping waits in its
    worker, the loop still serves `docker stop`; a change seen meanwhile waits for it."""
    run = start()
    run.until_state(HEALTHY)
    entered, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def hung_sync() -> int:
        calls.append("sync")
        entered.set()
        release.wait(WAIT)
        return 0

    monkeypatch.setattr(run.desktop.menu, "sync", hung_sync)
    run.desktop.events.post(AppsChanged())
    run.until(entered.is_set)
    run.desktop.events.post(AppsChanged())  # seen while the first mapping hangs
    run.until(lambda: run.desktop._apps_pending)
    assert calls == ["sync"], "one mapping at a time"
    assert run.stop() == 0, "the hung mapping kept the loop from stopping"
    assert run.words[-2:] == [STOPPING, STOPPED]
    assert calls == ["sync"]
    release.set()


def test_a_bug_in_a_worker_ends_the_loop_as_a_crash(start: Callable[..., Run],
                                                    run_as: RunAs) -> None:
    """Not FAILED (bad input): the exception comes out of the loop, as one there would
    (cli logs `crash`, exit 1)."""
    def broken(config: Config, paths: Paths, display: int) -> Account:
        raise KeyError("a bug")

    run = start(provision=broken)
    with pytest.raises(KeyError, match="a bug"):
        run.until_exit()


# -- the status folder ------------------------------------------------------------------

def _unwritable(paths: Paths) -> Paths:
    """A state folder nothing can be written in, even by root: its parent is a file."""
    blocker = paths.state_dir.parent / "not-a-folder"
    blocker.write_text("")
    return replace(paths, state_dir=blocker / "state")


def test_run_with_a_status_folder_that_cannot_be_written_fails_with_exit_2(
        paths: Paths, run_as: RunAs, restore_signals: None) -> None:
    """`-v dir:/opt/whaletop:ro`: FAILED, exit 2, one error line naming the folder and
    what to do (the status files cannot say it), and nothing provisioned."""
    bad = _unwritable(paths)
    provisioned: list[str] = []

    def provision(config: Config, paths: Paths, display: int) -> Account:
        provisioned.append("called")
        return provisioner(run_as)(config, paths, display)

    desktop, _ = _desktop(bad, run_as, Config(), provision=provision)
    with capture_logs() as logs:
        assert loop.run(Config(), desktop=desktop) == 2
    assert desktop.state == FAILED
    problems = [e for e in logs if e["log_level"] in ("warning", "error", "critical")]
    assert [e["event"] for e in problems] == ["failed"]
    reason = problems[0]["reason"]
    assert reason.startswith(f"cannot write the status files in {bad.state_dir} (")
    assert f"--tmpfs {bad.state_dir}" in reason
    assert "writable" in reason
    assert provisioned == []
    assert desktop.children.children() == []


def test_status_write_failing_while_healthy_warns_once_and_the_desktop_runs_on(
        start: Callable[..., Run], paths: Paths) -> None:
    """The disk filled up: not a reason to end the user's desktop.  One warning, however
    many writes fail; one line when writes work again."""
    run = start()
    run.until_state(HEALTHY)
    kept = paths.state_dir.with_name("state-kept")
    paths.state_dir.rename(kept)
    paths.state_dir.write_text("")  # now every write in it fails (ENOTDIR)
    with capture_logs() as logs:
        os.kill(run.child("websockify").pid, signal.SIGKILL)
        run.until_state(RECOVERING)
        run.until_state(HEALTHY)
    failed = [e for e in logs if e["event"] == "status_write_failed"]
    assert len(failed) == 1, failed
    assert failed[0]["log_level"] == "warning"
    assert failed[0]["path"] == str(paths.state_dir)
    assert failed[0]["state"] == RECOVERING
    assert all(c.returncode is None for c in run.desktop.children.children())
    paths.state_dir.unlink()
    kept.rename(paths.state_dir)
    with capture_logs() as logs:
        assert run.stop() == 0
    assert [(e["event"], e["state"]) for e in logs if e["event"].startswith("status_write")] \
        == [("status_write_recovered", STOPPING)]
    assert _status(paths)[0] == "STOPPED\n"


# -- --stop-when-idle: real clients on a real listener ------------------------------------

def _xvnc_listening(launch: Launch) -> list[str]:
    """Says it is ready as Xvnc does, and serves its UNIX socket as Xvnc does: each
    connection kept until its client closes it."""
    script = (
        "import os, socket, sys, threading\n"
        "path, fd = sys.argv[1], int(sys.argv[2])\n"
        "os.makedirs(os.path.dirname(path), exist_ok=True)\n"
        "server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "server.bind(path)\n"
        "server.listen(16)\n"
        "os.write(fd, b'1\\n')\n"
        "def serve(conn):\n"
        "    while conn.recv(4096):\n"
        "        pass\n"
        "    conn.close()\n"
        "while True:\n"
        "    conn, _ = server.accept()\n"
        "    threading.Thread(target=serve, args=(conn,), daemon=True).start()\n")
    return [sys.executable, "-c", script, str(launch.paths.vnc_socket), str(launch.ready_fd)]


def _listening_table() -> tuple[Program, ...]:
    return tuple(replace(p, argv=_xvnc_listening) if p.name == "xvnc" else p
                 for p in programs())


IDLE_SOON_CONFIG = Config(startup_timeout=WAIT, probe_interval=0.005, stop_when_idle=0.05)


@pytest.fixture
def vnc_clients(paths: Paths) -> Iterator[Callable[[], socket.socket]]:
    made: list[socket.socket] = []

    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(paths.vnc_socket))
        made.append(sock)
        return sock
    yield connect
    for sock in made:
        sock.close()


def _warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "idle_stop_soon"]


def test_lifecycle_nobody_connects_idle_then_stopped_with_exit_0(
        start: Callable[..., Run], paths: Paths) -> None:
    run = start(IDLE_SOON_CONFIG, table=_listening_table())
    with capture_logs() as logs:
        assert run.until_exit() == 0
    assert run.words[-4:] == [HEALTHY, IDLE, STOPPING, STOPPED]
    warning, = _warnings(logs)
    assert warning["log_level"] == "warning"
    assert warning["minutes_left"] == pytest.approx(0.025, abs=0.01)
    assert "connect" in warning["hint"]
    word, doc = _status(paths)
    assert (word, doc["reason"]) == ("STOPPED\n", "no client connected for 0.05 minutes")
    assert doc["clients"] == 0
    # The count is a quiet event: no line for it, and none on each check.
    assert not [e for e in logs if e.get("trigger") in ("clients_check_due",
                                                         "clients_changed")]


def test_lifecycle_a_connected_client_keeps_the_desktop_until_it_leaves(
        start: Callable[..., Run], paths: Paths,
        vnc_clients: Callable[[], socket.socket]) -> None:
    run = start(IDLE_SOON_CONFIG, table=_listening_table())
    run.until_state(HEALTHY)
    client = vnc_clients()
    run.until(lambda: run.desktop.clients == 1)
    assert _status(paths)[1]["clients"] == 1
    # Nothing to wait for: while somebody is connected, no stop is even armed.
    assert not {"idle-soon", "idle-stop"} & set(run.desktop.deadlines.names())
    assert run.desktop.state == HEALTHY
    client.close()
    run.until(lambda: run.desktop.clients == 0)
    assert {"idle-soon", "idle-stop"} <= set(run.desktop.deadlines.names())
    assert run.until_exit() == 0
    assert run.words[-4:] == [HEALTHY, IDLE, STOPPING, STOPPED]


def test_lifecycle_a_client_back_in_idle_makes_it_healthy_again(
        start: Callable[..., Run], paths: Paths,
        vnc_clients: Callable[[], socket.socket]) -> None:
    run = start(IDLE_SOON_CONFIG, table=_listening_table())
    with capture_logs() as logs:
        run.until_state(IDLE)
        client = vnc_clients()
        run.until_state(HEALTHY)
    word, doc = _status(paths)
    assert word == "HEALTHY\n"
    assert doc["reason"].startswith("a client connected (1 connected)")
    assert doc["clients"] == 1
    # (If the stop came due before the young connection counted, it looked again.)
    back = [e for e in logs if e["event"] == "transition" and e["source"] == IDLE
            and e["dest"] != IDLE]
    assert [(e["trigger"], e["dest"]) for e in back] == [("clients_changed", HEALTHY)]
    assert len(_warnings(logs)) == 1
    client.close()
    assert run.until_exit() == 0
    assert run.words[-6:] == [HEALTHY, IDLE, HEALTHY, IDLE, STOPPING, STOPPED]


def test_lifecycle_idle_desktop_whose_checks_fail_recovers_as_a_healthy_one(
        start: Callable[..., Run]) -> None:
    """IDLE is HEALTHY for the checks: a hung websockify is restarted; once HEALTHY
    again the stop is still coming (nobody connected meanwhile), without a second
    warning for the same idle spell."""
    run = start(replace(IDLE_SOON_CONFIG, stop_when_idle=0.1), table=_listening_table())
    with capture_logs() as logs:
        run.until_state(IDLE)
        run.checks.broken.add("websockify")
        run.until_state(RECOVERING)
        run.checks.broken.clear()
        assert run.until_exit() == 0
    assert run.words[-1] == STOPPED
    assert RECOVERING in run.words[run.words.index(IDLE):]
    assert len(_warnings(logs)) == 1


def test_idle_stop_off_counts_clients_but_never_stops(
        start: Callable[..., Run], paths: Paths) -> None:
    run = start(table=_listening_table())
    run.until(lambda: run.desktop.clients == 0)
    assert _status(paths)[1]["clients"] == 0
    assert "clients" in run.desktop.deadlines.names()
    assert not {"idle-soon", "idle-stop"} & set(run.desktop.deadlines.names())
    assert run.stop() == 0


def test_clients_that_cannot_be_counted_warn_once_and_stop_nothing(
        start: Callable[..., Run], paths: Paths) -> None:
    """The stand-in Xvnc of the other tests has no socket: the count cannot be told.
    A desktop somebody may be using is never stopped for want of a count."""
    run = start(IDLE_SOON_CONFIG)
    with capture_logs() as logs:
        run.until_state(HEALTHY)
        for _ in range(3):
            run.desktop.deadlines.arm("clients", 0, ClientsCheckDue())
            run.until(lambda: not run.desktop.deadlines.armed("clients")
                      or run.desktop.deadlines.timeout() != 0)
    assert run.desktop.clients is None
    assert _status(paths)[1]["clients"] is None
    assert len([e for e in logs if e["event"] == "clients_uncountable"]) == 1
    assert not {"idle-soon", "idle-stop"} & set(run.desktop.deadlines.names())
    assert run.stop() == 0


def test_idle_verdicts_after_a_client_connected_are_ignored(
        table_in: Callable[..., Table]) -> None:
    t = table_in(IDLE)
    t.nobody_connected = False
    before = _status(t.paths)
    t.dispatch(IdleTimedOut(minutes=5.0))
    _assert_unmoved(t, IDLE, before)
    t = table_in(HEALTHY)
    t.nobody_connected = False
    before = _status(t.paths)
    t.dispatch(IdleSoon(idle_minutes=4.0, minutes_left=1.0))
    _assert_unmoved(t, HEALTHY, before)


def test_idle_stop_does_not_hide_unhealthy_when_exiting_on_failure(
        table_in: Callable[..., Table]) -> None:
    """UNHEALTHY is on its way out with exit 3: an idle stop must not turn it into 0."""
    t = table_in(UNHEALTHY)
    before = _status(t.paths)
    t.dispatch(IdleTimedOut(minutes=5.0))
    _assert_unmoved(t, UNHEALTHY, before)
    t.dispatch(ShutDown())
    assert t.desktop.exit_code == 3


@pytest.mark.parametrize(("minutes", "warn_after"), [(0.05, 1.5), (2.0, 60.0), (5.0, 240.0),
                                                     (60.0, 3540.0)])
def test_the_warning_comes_a_minute_ahead_or_halfway(
        minutes: float, warn_after: float, paths: Paths, run_as: RunAs) -> None:
    desktop, _ = _desktop(paths, run_as, Config(stop_when_idle=minutes))
    assert desktop._warn_after == pytest.approx(warn_after)


def test_the_loop_refreshes_the_status_files_age_while_serving(
        start: Callable[..., Run], paths: Paths) -> None:
    """The heartbeat the image's HEALTHCHECK reads (docker/healthcheck): each count of
    the clients, on the loop, makes the word file's mtime now without rewriting it."""
    run = start(replace(IDLE_SOON_CONFIG, stop_when_idle=0.1), table=_listening_table())
    run.until(lambda: run.desktop.clients == 0)
    word = paths.status.read_text()
    old = time.time() - 3600
    os.utime(paths.status, (old, old))
    run.until(lambda: paths.status.stat().st_mtime > old + 3000)
    assert paths.status.read_text() == word
def test_lifecycle_death_of_an_optional_child_never_moves_the_desktop(
        start: Callable[..., Run], paths: Paths) -> None:
    """Sound is optional: killed, it is restarted while the desktop stays HEALTHY; with
    its budget used up it is tried again later, still HEALTHY."""
    table = (*programs(), Program("sound", _sleeper, restart=Restart(attempts=1, window=1.0),
                                  stop_order=1, optional=True))
    run = start(table=table)
    run.until_state(HEALTHY)
    xvnc, session = run.child("xvnc"), run.child("session")
    for _ in range(2):  # the first within its budget, the second once it allows again
        old = run.child("sound")
        with capture_logs() as logs:
            os.kill(old.pid, signal.SIGKILL)
            run.until(lambda old=old: run.child("sound").pid != old.pid)  # type: ignore[misc]
        assert run.child("sound").returncode is None
        assert run.words == [STARTING, STARTED, HEALTHY]
        assert [e["child"] for e in logs if e["event"] == "restart_scheduled"] == ["sound"]
    assert run.child("xvnc") is xvnc
    assert run.child("session") is session
    assert run.stop() == 0
    _assert_all_stopped(run.desktop.children.children())


def test_lifecycle_healthy_without_an_optional_child_that_cannot_start(
        start: Callable[..., Run], paths: Paths) -> None:
    """An optional program that is not installed is left out with one error line; the
    desktop is HEALTHY without it."""
    def missing(launch: Launch) -> list[str]:
        return ["/nonexistent/whaletop-sound"]
    table = (*programs(), Program("sound", missing, restart=Restart(), optional=True))
    with capture_logs() as logs:
        run = start(table=table)
        run.until_state(HEALTHY)
    assert run.desktop.children.child("sound") is None
    assert [e["child"] for e in logs if e["event"] == "optional_child_failed"] == ["sound"]
    assert run.stop() == 0
