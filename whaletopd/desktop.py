"""The machine's model: the place where triggers meet, not where state lives.  Each
callback named in machine.TRANSITIONS hands the work to the part that owns it:

    account     provision.py   the desktop user, its environment, the VNC password
    children    supervisor.py  the children, run from programs.py's table
    web         web.py         TLS: the certificate in service, rotation, expiry
    front       frontdoor.py   nginx's configuration, the sign-in service's people
    menu        menu.py        /Apps in LXDE's menu
    prober      probes.py      the health checks, in their own thread
    counter     clients.py     the VNC clients connected (for --stop-when-idle, /metrics)
    status      status.py      the status files
    metrics     metrics.py     the numbers nginx serves at /metrics
    keyboard    kbswitch.py    the session's layout, and the page's requests to switch it
    deadlines   deadlines.py   named deadlines, kept by the loop

Parts never touch each other's fields; the desktop passes what one needs from another.
Callbacks run in the loop's thread and never raise for bad input or a failed step:
they post an event (Failed), and the machine moves.  Work of STARTING that can block
for ever (provisioning: a FIFO, a hung mount under the home; mapping /Apps) runs in a
worker thread that only posts (Provisioned, AppsMapped, Failed), so the loop still
serves `docker stop` and the startup deadline; a result that comes after the desktop
moved on is refused by the machine.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from transitions import EventData

from whaletopd import frontdoor, logs, probes, provision
from whaletopd.children import RunAs
from whaletopd.clients import MIN_AGE, ClientCounter
from whaletopd.config import Config
from whaletopd.deadlines import Deadlines
from whaletopd.events import (
    AppsMapped,
    CertificateChanged,
    CertificateExpired,
    ChildExited,
    ClientsChanged,
    ClientsCheckDue,
    Crashed,
    Event,
    EventQueue,
    Failed,
    IdleSoon,
    IdleTimedOut,
    KeyboardSwitched,
    Launched,
    MenuCheckDue,
    ProbeFailed,
    ProbePassed,
    Provisioned,
    RecoveryTimedOut,
    RestartDue,
    ShutDown,
    StartupTimedOut,
)
from whaletopd.frontdoor import FrontDoor, FrontDoorError
from whaletopd.kbswitch import Asked, KeyboardSwitch
from whaletopd.machine import EXIT_CODES, UP
from whaletopd.menu import SETTLE_INTERVAL, AppMenu
from whaletopd.metrics import Metrics
from whaletopd.paths import Paths
from whaletopd.programs import DISPLAY, PROGRAMS, Launch, Program, blame
from whaletopd.provision import Account, ProvisionError
from whaletopd.status import StatusFile
from whaletopd.supervisor import Supervisor
from whaletopd.tls_error import TLSError
from whaletopd.web import WebFront

log = logs.get("whaletopd")
Provisioner = Callable[[Config, Paths, int], Account]
ProbeMaker = Callable[[probes.Target, Mapping[str, str]], list[probes.Probe]]
# Deadline names.
STARTUP = "startup"
RECOVERY = "recovery"
MENU = "menu"
CLIENTS = "clients"
IDLE_SOON = "idle-soon"
IDLE_STOP = "idle-stop"
# How often the clients are counted: every 10 s (a count costs well under a millisecond),
# more often for a short --stop-when-idle, so its warning and stop come on time.  Each
# count also refreshes the status file's mtime: the loop's heartbeat, which the image's
# HEALTHCHECK (docker/healthcheck) reads; keep this well under its STALE_AFTER.
CLIENTS_INTERVAL = 10.0
# The cheap health checks' names (probes.light_probes), and how often their durations
# alone rewrite the metrics file.
LIGHT_CHECKS = frozenset({"x_answers", "web_port"})
METRICS_LIGHT_WRITE = 60.0
# The program whose start starts LXDE's menu-cached (programs.py's session row).
SESSION = "session"


@dataclass(frozen=True)
class Seams:
    """Where tests put `sleep` children, a user that needs no root, and checks they can
    break; the daemon uses the defaults."""

    programs: Sequence[Program] = PROGRAMS
    provisioner: Provisioner = provision.provision
    make_probes: ProbeMaker = probes.desktop_probes
    make_light_probes: ProbeMaker = probes.light_probes
    web_account: Callable[[], RunAs | None] = frontdoor.web_account


class Desktop:
    """The desktop whose lifecycle the machine in machine.py runs."""

    state: str  # set by transitions

    def __init__(self, config: Config, events: EventQueue, deadlines: Deadlines,
                 paths: Paths | None = None, seams: Seams | None = None) -> None:
        seams = seams or Seams()
        self.config = config
        self.events = events
        self.deadlines = deadlines
        self.paths = paths or Paths()
        self.status = StatusFile(self.paths.status, self.paths.status_json)
        table = [p for p in seams.programs if p.enabled(config)]
        self.metrics = Metrics(self.paths.metrics_file,
                               [p.name for p in table if p.restart is not None],
                               tls=config.tls, sign_in=config.sign_in)
        self.children = Supervisor(table, events, on_event=self.metrics.child_event)
        self.web = WebFront(config, self.paths, events, deadlines)
        self._resolve_web_account = seams.web_account  # at provisioning: FAILED if missing
        self.front = FrontDoor(config, self.paths, events)
        # The front door's files are made when its server is in the table (tests run
        # tables without nginx).
        self._serves_web = any(p.name == "nginx" for p in table)
        self.menu = AppMenu(self.paths, events)
        self.keyboard = KeyboardSwitch(config, self.paths, events)
        self._keyboard_busy = False  # a worker takes the requests
        self._keyboard_pending = False  # a request came meanwhile
        # The menu is a worker's while it maps (/Apps may be a hung mount): status.json
        # shows what the last mapping left, and changes meanwhile wait for AppsMapped.
        self._menu_busy = True  # the first mapping, from start_menu
        self._menu_detail = self.menu.describe()
        self._apps_pending = False  # a change under /Apps seen while it was mapped
        self._stopping = threading.Event()  # stop_children ran: workers must start nothing
        self.prober: probes.Prober | None = None
        self.account: Account | None = None
        self.reason = ""
        self.cause: type[Event] | None = None  # the event that entered the current state
        self.exit_code: int | None = None
        self._blame = blame(table)
        self._provisioner = seams.provisioner
        self._make_probes = seams.make_probes
        self._make_light_probes = seams.make_light_probes
        self._light_written = -math.inf  # when a cheap round's durations were last written
        self._t0 = time.monotonic()
        # VNC clients connected: None until counted (from the first HEALTHY on) or when
        # they cannot be counted.  /metrics shows it too.
        self.clients: int | None = None
        self.counter = ClientCounter(self.paths.vnc_socket,
                                     config.vnc_port if config.expose_vnc else None)
        self._idle_since: float | None = None  # --stop-when-idle: nobody connected since
        self._idle_warned = False  # the idle_stop_soon warning of this idle spell
        self._uncountable_logged = False

    # -- every transition ----------------------------------------------------------------

    def note_reason(self, event: EventData) -> None:
        """Before the state changes, so on_enter_* callbacks already see the new reason."""
        ev = event.kwargs.get("event")
        self.reason = (ev.why if ev is not None else "") or self.reason

    def on_state_change(self, event: EventData) -> None:
        """On entering any state (also re-entering it), before the transition's work."""
        ev = event.kwargs.get("event")
        self.cause = type(ev) if ev is not None else None
        # /metrics first: whoever reads the new word in the status file finds it there.
        self.metrics.publish(self.state, self.clients, self._not_after())
        self.status.enter(self.state)
        self._log_transition(event)
        self.write_status()

    def on_transition_done(self, event: EventData) -> None:
        """After every transition's work: children may have changed (pids, exit codes).
        Internal transitions (no state entered) are logged here, unless quiet.  Every
        one, quiet too, is counted and /metrics rewritten."""
        self.metrics.transition(event.event.name)
        self.metrics.publish(self.state, self.clients, self._not_after())
        ev = event.kwargs.get("event")
        if ev is not None and ev.quiet:
            return
        if event.transition is not None and event.transition.dest is None:
            self._log_transition(event)
        self.write_status()

    def _log_transition(self, event: EventData) -> None:
        src = event.transition.source if event.transition else None
        log.info("transition", trigger=event.event.name, source=src, dest=self.state,
                 reason=self.reason,
                 elapsed_ms=round((time.monotonic() - self._t0) * 1000, 1))

    def write_status(self) -> None:
        self.status.write(self.state, self.reason, {
            "username": self.config.username,
            "exit_on_failure": self.exit_on_failure,
            "web_port": self.config.web_port,
            "vnc_port": self.config.vnc_port if self.config.expose_vnc else None,
            **self.front.describe(),
            **self.children.describe(),
            "tls": self.web.describe(),
            "clients": self.clients,
            **self._describe_menu(),
        })

    def _not_after(self) -> float | None:
        """The certificate in service's notAfter, in Unix seconds (None without TLS)."""
        tls = self.web.describe()
        if tls is None:
            return None
        return datetime.fromisoformat(str(tls["not_after"])).timestamp()

    def _describe_menu(self) -> dict[str, object]:
        if not self._menu_busy:
            self._menu_detail = self.menu.describe()
        return self._menu_detail

    def _guard(self, work: Callable[[], None]) -> None:
        try:
            work()
        except (ProvisionError, TLSError, FrontDoorError, OSError) as exc:
            self.events.post(Failed(reason=str(exc)))

    def _off_loop(self, name: str, work: Callable[[], None]) -> None:
        """`work` in a daemon thread (one stuck for ever does not keep the daemon from
        exiting), which only posts.  What it started after the desktop began stopping
        (a watch) is stopped again here."""
        def run() -> None:
            try:
                self._guard(work)
            except BaseException as exc:  # a bug: ends the daemon from the loop (exit 1)
                self.events.post(Crashed(error=exc))
            if self._stopping.is_set():
                self._stop_parts()
        threading.Thread(target=run, name=name, daemon=True).start()

    # -- STARTING: provisioning, then the children in the table's order ------------------

    def provision(self, event: EventData) -> None:
        seconds = self.config.startup_timeout
        self.deadlines.arm(STARTUP, seconds, StartupTimedOut(seconds=seconds))
        unwritable = self.status.unwritable()  # STARTING could not be written
        if unwritable is not None:
            self.events.post(Failed(reason=unwritable))
            return
        self._off_loop("provision", self._provision)

    def _provision(self) -> None:
        # First: a bad certificate or users file fails before anything is touched.
        self.web.validate()
        self.front.users_valid()
        web = self._resolve_web_account()
        self.front.use_web_account(web)
        self.account = account = self._provisioner(self.config, self.paths, DISPLAY)
        self.web.install()
        if self._serves_web:
            self.front.prepare(account.run_as, self.web.pem, account.password,
                               account.view_only_password)
            self.front.watch()
            self.keyboard.prepare(web)
            self.keyboard.watch()
        self.children.use(account.run_as, account.env)
        self.children.use(web or frontdoor.root_account(),
                          frontdoor.web_env(), "web")
        self.children.use(frontdoor.root_account(), frontdoor.web_env(), "root")
        self.events.post(Provisioned())

    def start_menu(self, event: EventData) -> None:
        """After the first children are spawned, off the loop's thread (/Apps may be a
        hung mount).  Apps mapped after the session's menu-cached read the folder are
        seen by its watch, or by the refresh check_menu makes."""
        def start() -> None:
            with logs.step("map_apps") as out:
                out.update(self.menu.start())
            self.events.post(AppsMapped())
        self._off_loop("map-apps", start)

    def menu_mapped(self, event: EventData) -> None:
        self._menu_busy = False
        self.write_status()  # what was mapped (a quiet event writes no status itself)
        if self._apps_pending:
            self._apps_pending = False
            self.map_apps(event)

    def mark_ready(self, event: EventData) -> None:
        self.children.mark_ready(event.kwargs["event"].name)

    def launch(self, event: EventData) -> None:
        self._guard(self._launch)

    def _launch(self) -> None:
        if self.children.launch(self._launch_context()):
            self._session_started()
            self.events.post(Launched())

    def _session_started(self) -> None:
        """A session (first or fresh) starts its menu-cached: look until it watches."""
        assert self.account is not None
        self.menu.session_started(Path(self.account.run_as.home),
                                  self.account.env.get("XDG_RUNTIME_DIR"))
        self.deadlines.arm(MENU, SETTLE_INTERVAL, MenuCheckDue())

    def _launch_context(self) -> Launch:
        # The layout the page switched to, if it did: a fresh session keeps it.
        return Launch(replace(self.config, keyboard_layout=self.keyboard.layout), self.paths)

    def start_probes(self, event: EventData) -> None:
        self.prober = probes.Prober(self._probes(), self.events,
                                    interval=self.config.probe_interval,
                                    observe=self._observe_probes,
                                    light=self._light_probes(),
                                    full_interval=self.config.probe_full_interval)
        self.prober.start()

    def _observe_probes(self, seconds: Mapping[str, float]) -> None:
        """The prober's thread: /metrics gets each full round at once, the cheap rounds'
        durations at least every METRICS_LIGHT_WRITE seconds (an idle desktop's file is
        not rewritten every few seconds for them)."""
        now = time.monotonic()
        write = (not seconds.keys() <= LIGHT_CHECKS
                 or now - self._light_written >= METRICS_LIGHT_WRITE)
        if write:
            self._light_written = now
        self.metrics.observe_probes(seconds, write=write)

    def _probes(self) -> list[probes.Probe]:
        return self._make_probes(self._target(), self._blame)

    def _light_probes(self) -> list[probes.Probe]:
        return self._make_light_probes(self._target(), self._blame)

    def _target(self) -> probes.Target:
        assert self.account is not None
        cfg = self.config
        paths = self.paths
        target = probes.Target(
            cfg.web_port, str(paths.x11_socket_dir / f"X{DISPLAY}"), paths.vnc_socket,
            paths.websockify_socket, self.account.password, cfg.probe_timeout,
            self.front.probe_token, pin=self.web.pin,
            auth_socket=paths.auth_socket if cfg.sign_in else None,
            front_socket=paths.probe_socket)
        return target

    # -- conditions ----------------------------------------------------------------------

    @property
    def exit_on_failure(self) -> bool:
        return self.config.exit_on_failure

    @staticmethod
    def _part(event: EventData) -> str:
        """The child an exit or a failed check points at."""
        ev = event.kwargs.get("event")
        if isinstance(ev, ChildExited):
            return ev.name
        return ev.part if isinstance(ev, ProbeFailed) else ""

    def all_running(self, event: EventData) -> bool:
        return self.children.all_running()

    def optional(self, event: EventData) -> bool:
        ev = event.kwargs.get("event")
        name = ev.name if isinstance(ev, ChildExited | RestartDue) else ""
        return self.children.optional(name)

    def logged_out(self, event: EventData) -> bool:
        ev = event.kwargs.get("event")
        return isinstance(ev, ChildExited) and self.children.asked_to_stop(ev.name,
                                                                            ev.returncode)

    def restartable(self, event: EventData) -> bool:
        return self.children.restartable(self._part(event))

    def repairable(self, event: EventData) -> bool:
        """A restart that is due can still repair it (what it runs on still runs)."""
        return self.children.has_restart_policy(event.kwargs["event"].name)

    def retryable(self, event: EventData) -> bool:
        return self.children.has_restart_policy(self._part(event)) and not self.exit_on_failure

    def stale(self, event: EventData) -> bool:
        """News about a child that was replaced or stopped on purpose, or a verdict of
        health checks older than the last restart."""
        ev = event.kwargs.get("event")
        if isinstance(ev, ChildExited):
            return self.children.stale(ev.name, ev.pid)
        if isinstance(ev, ProbePassed | ProbeFailed):
            return self.prober is None or ev.generation != self.prober.generation
        return False

    def has_clients(self, event: EventData) -> bool:
        """Somebody connected, or nobody can tell any more: no stop is coming."""
        count: int | None = event.kwargs["event"].count
        return count != 0

    def nobody_connected(self, event: EventData) -> bool:
        """An idle verdict still holds: nobody connected since it was armed."""
        return self._idle_since is not None and self.clients == 0

    def someone_connecting(self, event: EventData) -> bool:
        """A connection is open that is too young to count (clients.MIN_AGE)."""
        try:
            return self.counter.connected_now() > 0
        except OSError:
            return False  # counted as before; a count that fails says so by itself

    def new_certificate_valid(self, event: EventData) -> bool:
        return self.web.candidate_valid()

    def expiry_is_the_problem(self, event: EventData) -> bool:
        return self.cause is CertificateExpired and not self.exit_on_failure

    def certificate_expired_now(self, event: EventData) -> bool:
        return self.web.expired_now()

    # -- RECOVERING: a restartable child died or hung ------------------------------------

    def recover(self, event: EventData) -> None:
        name = self._part(event)
        delay = self.children.schedule_restart(name, self.reason)
        self.deadlines.arm("restart:" + name, delay, RestartDue(name=name))
        self._arm_recovery_deadline()

    def retry_later(self, event: EventData) -> None:
        """--no-exit-on-failure: try again once the restart budget allows."""
        name = self._part(event)
        self.deadlines.arm("restart:" + name, self.children.retry_delay(name),
                           RestartDue(name=name))

    def repair_optional(self, event: EventData) -> None:
        """An optional child died: restarted after its backoff, or once its budget
        allows again; one warning line (restart_scheduled) says so."""
        name = self._part(event)
        delay = (self.children.schedule_restart(name, self.reason)
                 if self.children.restartable(name) else self.children.retry_delay(name))
        self.deadlines.arm("restart:" + name, delay, RestartDue(name=name))

    def restart_child(self, event: EventData) -> None:
        name = event.kwargs["event"].name
        if self.children.restart(name, self._launch_context()):
            self.metrics.restarted(name)
            if name == SESSION:
                self._session_started()
            self._reset_probes()

    def restart_optional(self, event: EventData) -> None:
        """No check looks at an optional child: the probes go on as they were."""
        name = event.kwargs["event"].name
        if self.children.restart(name, self._launch_context()):
            self.metrics.restarted(name)

    def _arm_recovery_deadline(self) -> None:
        seconds = self.config.startup_timeout
        self.deadlines.arm(RECOVERY, seconds, RecoveryTimedOut(seconds=seconds))

    def _reset_probes(self) -> None:
        if self.prober is not None:
            self.prober.reset(self._probes(), self._light_probes())

    # -- TLS: rotation and expiry --------------------------------------------------------

    def reload_certificate(self, event: EventData) -> None:
        """nginx reloads gracefully on SIGHUP: new connections get the new certificate,
        connected sessions stay on the old workers until they end."""
        if self.web.put_candidate_in_service():
            self.children.signal("nginx", signal.SIGHUP)
        self._reset_probes()  # they pin the certificate now in service
        self._arm_recovery_deadline()

    def defer_certificate(self, event: EventData) -> None:
        self.web.defer()

    def check_certificate(self, event: EventData) -> None:
        self.web.check_expiry()

    # -- sign-in -------------------------------------------------------------------------

    def reload_web_users(self, event: EventData) -> None:
        self.front.reload_users()

    # -- keyboard: the page asked for another layout ----------------------------------------

    def switch_keyboard(self, event: EventData) -> None:
        """Off the loop's thread (setxkbmap waits for the X server); one at a time, a
        request seen meanwhile is taken once it ends."""
        if self._keyboard_busy:
            self._keyboard_pending = True
            return
        self._keyboard_busy = True
        account = self.account
        assert account is not None

        def work() -> None:
            asked, layout = Asked(None), None
            try:
                asked = self.keyboard.take()
                layout = asked.layout
                if layout is not None and not self.keyboard.apply(layout, account.run_as,
                                                                  account.env):
                    layout = None
            finally:  # whatever happened, the next request is taken
                self.events.post(KeyboardSwitched(layout=layout, who=asked.who))
        self._off_loop("keyboard", work)

    def refuse_keyboard(self, event: EventData) -> None:
        log.warning("keyboard_request_ignored", state=self.state,
                    hint="the layout can be switched once the desktop is up; ask again")

    def keyboard_switched_done(self, event: EventData) -> None:
        self._keyboard_busy = False
        ev = event.kwargs["event"]
        if ev.layout is not None:
            self.keyboard.switched(ev.layout, ev.who)
        if self._keyboard_pending and self.state in UP:
            self._keyboard_pending = False
            self.switch_keyboard(event)

    # -- /Apps ---------------------------------------------------------------------------

    def map_apps(self, event: EventData) -> None:
        """Off the loop's thread too: a mount under /Apps that hangs while the desktop
        runs must not keep `docker stop` waiting.  One mapping at a time; a change seen
        meanwhile is mapped once it ends (it may have been missed)."""
        if self._menu_busy:
            self._apps_pending = True
            return
        self._menu_busy = True

        def sync() -> None:
            with logs.step("map_apps") as out:
                out["changes"] = self.menu.sync()
            self.events.post(AppsMapped())
        self._off_loop("map-apps", sync)

    def check_menu(self, event: EventData) -> None:
        if not self.menu.settle():
            self.deadlines.arm(MENU, SETTLE_INTERVAL, MenuCheckDue())

    # -- clients and --stop-when-idle ------------------------------------------------------

    @property
    def _idle_seconds(self) -> float:
        return self.config.stop_when_idle * 60

    @property
    def _warn_after(self) -> float:
        """When the warning comes: a minute before the stop, or halfway for a timeout of
        2 minutes or less (a minute ahead would be most of it)."""
        seconds = self._idle_seconds
        return seconds - 60 if seconds > 120 else seconds / 2

    def _clients_interval(self) -> float:
        if not self.config.stop_when_idle:
            return CLIENTS_INTERVAL
        return min(CLIENTS_INTERVAL, max(0.5, self._idle_seconds / 12))

    def count_clients(self, event: EventData) -> None:
        self.deadlines.arm(CLIENTS, self._clients_interval(), ClientsCheckDue())
        self.status.touch()  # the loop is alive (the heartbeat: status.py)
        try:
            count: int | None = self.counter.count()
        except OSError as exc:
            count = None
            if not self._uncountable_logged:
                self._uncountable_logged = True
                log.warning("clients_uncountable", socket=str(self.counter.vnc_socket),
                            error=str(exc), stop_when_idle=self.config.stop_when_idle,
                            hint="the desktop does not stop itself for want of clients "
                                 "while they cannot be counted (the kernel's sock_diag "
                                 "must answer: a seccomp profile may refuse AF_NETLINK)")
        if count != self.clients:
            self.events.post(ClientsChanged(count=count))

    def note_clients(self, event: EventData) -> None:
        self._take_count(event.kwargs["event"].count)

    def _take_count(self, count: int | None) -> None:
        """A new count: into status.json (a quiet event writes no status itself), and
        the idle deadlines armed from now when nobody is connected any more, cancelled
        when somebody is (or nobody can tell)."""
        before, self.clients = self.clients, count
        self.write_status()
        if not self.config.stop_when_idle:
            return
        if self.clients != 0:
            self.deadlines.cancel(IDLE_SOON, IDLE_STOP)
            self._idle_since, self._idle_warned = None, False
        elif before != 0:
            self._idle_since = time.monotonic()
            minutes, warn_after = self.config.stop_when_idle, self._warn_after
            self.deadlines.arm(IDLE_SOON, warn_after, IdleSoon(
                idle_minutes=round(warn_after / 60, 2),
                minutes_left=round(minutes - warn_after / 60, 2)))
            self.deadlines.arm(IDLE_STOP, self._idle_seconds, IdleTimedOut(minutes=minutes))

    def look_again(self, event: EventData) -> None:
        """The stop waits until the young connection could count: a person's keeps the
        desktop up (the count cancels the stop), a health check's is gone by then."""
        later = MIN_AGE + 0.25
        self.deadlines.arm(CLIENTS, later, ClientsCheckDue())
        self.deadlines.arm(IDLE_STOP, later + 0.25, event.kwargs["event"])

    def note_client_back(self, event: EventData) -> None:
        self._take_count(event.kwargs["event"].count)
        if self.clients is None:
            self.reason = "the clients connected cannot be counted: no stop for being idle"
        else:
            self.reason = (f"a client connected ({self.clients} connected): no stop for "
                           "being idle while one is")

    def on_enter_IDLE(self, event: EventData) -> None:
        if not self._idle_warned:
            self._idle_warned = True
            ev = event.kwargs["event"]
            log.warning("idle_stop_soon", minutes_left=ev.minutes_left,
                        stop_when_idle=self.config.stop_when_idle,
                        hint="connect to the desktop to keep it running; else it stops "
                             "(exit 0, the home kept)")

    # -- arriving and leaving --------------------------------------------------------------

    def on_enter_HEALTHY(self, event: EventData) -> None:
        self.deadlines.cancel(STARTUP, RECOVERY)
        if self.web.take_deferred():
            self.events.post(CertificateChanged())
        if not self.deadlines.armed(CLIENTS):
            self.deadlines.arm(CLIENTS, 0, ClientsCheckDue())  # the first count
        if (self._idle_since is not None and self.clients == 0
              and not self.deadlines.armed(IDLE_SOON)):
            # The warning came due while RECOVERING or RELOADING_TLS: it comes now.
            seconds_left = self._idle_seconds - (time.monotonic() - self._idle_since)
            self.events.post(IdleSoon(
                idle_minutes=round((self._idle_seconds - seconds_left) / 60, 2),
                minutes_left=round(max(0.0, seconds_left) / 60, 2)))

    def note_logout(self, event: EventData) -> None:
        ev = event.kwargs["event"]
        self.reason = f"the desktop user logged out ({ev.why})"

    def on_enter_STOPPING(self, event: EventData) -> None:
        self.deadlines.cancel_all()  # nothing is due any more: a timer's news is moot
        self.events.post(ShutDown())

    def on_enter_FAILED(self, event: EventData) -> None:
        log.error("failed", reason=self.reason)
        self.events.post(ShutDown())

    def on_enter_UNHEALTHY(self, event: EventData) -> None:
        log.error("unhealthy", reason=self.reason, exit_on_failure=self.exit_on_failure)
        if self.exit_on_failure:
            self.events.post(ShutDown())

    def stop_children(self, event: EventData) -> None:
        """Nothing fires or posts any more: deadlines, checks and watches end first."""
        self._stopping.set()
        self.deadlines.cancel_all()
        if self.prober is not None:
            self.prober.stop()
        self._stop_parts()
        self.children.stop_all()

    def _stop_parts(self) -> None:
        """The watches (each stop may run again: a worker that finished late)."""
        self.web.stop()
        self.front.stop()
        self.keyboard.stop()
        self.menu.stop()

    def exit(self, event: EventData) -> None:
        self.exit_code = EXIT_CODES[self.state]
