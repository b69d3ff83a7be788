"""The supervisor running a table of real tiny programs (`sh`, `sleep`): start order and
readiness, stale exits, the restart budget, replacing children, stop order."""

from __future__ import annotations

import gc
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
from structlog.testing import capture_logs

from whaletopd import supervisor
from whaletopd.children import RunAs
from whaletopd.config import Config
from whaletopd.events import ChildExited, ChildReady, Event, EventQueue
from whaletopd.paths import Paths
from whaletopd.programs import Launch, Program, Restart
from whaletopd.supervisor import Supervisor

from .helpers import WAIT, wait_for

real_await_ready = supervisor._await_ready
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def _sleep(launch: Launch) -> list[str]:
    return ["sleep", "60"]


def _says_ready(launch: Launch) -> list[str]:
    # dash's `>&N` takes one digit only; the pipe's fd is often 10 or more.
    return ["sh", "-c", f"echo 1 >/dev/fd/{launch.ready_fd}; exec sleep 60"]


def _ignores_sigterm(launch: Launch) -> list[str]:
    # An ignored signal stays ignored across exec: this `sleep` is a hung child.
    return ["sh", "-c", "trap '' TERM; exec sleep 60"]


# Table order x, web, session; stop order web, session, x: neither the table's order nor
# its reverse, so a supervisor that ignores stop_order is caught.
WEB_RESTART = Restart(attempts=2, window=60.0, first_delay=0.1, max_delay=0.15)
TABLE = (
    Program("x", _says_ready, ready="displayfd", stop_order=3),
    Program("web", _sleep, restart=WEB_RESTART, stop_order=1),
    Program("session", _sleep, after="x", stop_order=2),
)


@pytest.fixture
def q() -> EventQueue:
    return EventQueue()


@pytest.fixture
def launch(paths: Paths) -> Launch:
    return Launch(Config(), paths)


@contextmanager
def _supervisor(programs: tuple[Program, ...], q: EventQueue, run_as: RunAs,
                env: dict[str, str] | None = None) -> Iterator[Supervisor]:
    sup = Supervisor(programs, q)
    sup.use(run_as, ENV if env is None else env)
    try:
        yield sup
    finally:
        sup.stop_all()


@pytest.fixture
def sup(q: EventQueue, run_as: RunAs) -> Iterator[Supervisor]:
    with _supervisor(TABLE, q, run_as) as s:
        yield s


def _next(q: EventQueue, kind: type[Event], seen: list[Event] | None = None) -> Event:
    """The next event of `kind` on the queue; the others are kept in `seen`."""
    while True:
        event = q.get(timeout=WAIT)
        if event is None:
            pytest.fail(f"no {kind.__name__} within {WAIT} s")
        if isinstance(event, kind):
            return event
        if seen is not None:
            seen.append(event)


def _gone(pid: int) -> bool:
    """Dead, or a zombie nobody waited for yet: either way not running."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _running(sup: Supervisor, name: str) -> int:
    child = sup.child(name)
    assert child is not None, f"{name} was not started"
    assert child.returncode is None, f"{name} exited"
    assert not _gone(child.pid), f"{name} is not running"
    return child.pid


def _launched(sup: Supervisor, launch: Launch, q: EventQueue) -> None:
    """Everything started and ready, as the machine would do it."""
    assert not sup.launch(launch)
    ready = _next(q, ChildReady)
    sup.mark_ready(ready.name)  # type: ignore[attr-defined]
    assert sup.launch(launch)


# -- starting ------------------------------------------------------------------------------

def test_launch_starts_in_order_and_waits_for_readiness(sup: Supervisor, launch: Launch,
                                                        q: EventQueue) -> None:
    assert sup.launch(launch) is False, "True before x said it is ready"
    x_pid, web_pid = _running(sup, "x"), _running(sup, "web")
    assert sup.child("session") is None, "session started before x was ready"
    assert _next(q, ChildReady) == ChildReady(name="x")
    # Not marked ready yet: launching again starts nothing and restarts nothing.
    assert sup.launch(launch) is False
    assert sup.child("session") is None
    assert (_running(sup, "x"), _running(sup, "web")) == (x_pid, web_pid)
    sup.mark_ready("x")
    assert sup.launch(launch) is True
    _running(sup, "session")
    assert [c.name for c in sup.children()] == ["x", "web", "session"]
    assert (_running(sup, "x"), _running(sup, "web")) == (x_pid, web_pid)


def test_launch_is_false_while_a_started_program_is_not_ready(q: EventQueue, run_as: RunAs,
                                                              launch: Launch) -> None:
    table = (Program("x", _says_ready, ready="displayfd"), Program("web", _sleep))
    with _supervisor(table, q, run_as) as sup:
        assert sup.launch(launch) is False
        _next(q, ChildReady)
        assert sup.launch(launch) is False, "True though x was never marked ready"
        sup.mark_ready("x")
        assert sup.launch(launch) is True


def test_each_step_of_launch_is_logged(sup: Supervisor, launch: Launch,
                                       q: EventQueue) -> None:
    with capture_logs() as logs:
        _launched(sup, launch, q)
    steps = [e["step"] for e in logs if e["event"] == "step"]
    assert steps == ["launch_x", "launch_web", "launch_session"]


def test_a_displayfd_program_that_never_writes_is_never_ready(
        q: EventQueue, run_as: RunAs, launch: Launch, monkeypatch: pytest.MonkeyPatch) -> None:
    finished = threading.Event()

    def await_ready(name: str, read_fd: int, events: EventQueue) -> None:
        real_await_ready(name, read_fd, events)
        finished.set()

    monkeypatch.setattr(supervisor, "_await_ready", await_ready)
    table = (Program("x", lambda launch: ["sh", "-c", "exit 3"], ready="displayfd"),)
    with _supervisor(table, q, run_as) as sup:
        assert sup.launch(launch) is False
        # The reader sees end of file only if the parent closed its copy of the write end.
        assert finished.wait(WAIT), "the readiness pipe never reached end of file"
        seen: list[Event] = []
        _next(q, ChildExited, seen)
        assert not any(isinstance(e, ChildReady) for e in seen)
        assert q.get(timeout=0) is None, "ChildReady without a line on the pipe"


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_program_that_cannot_start_raises_and_leaks_no_pipe(q: EventQueue, run_as: RunAs,
                                                              launch: Launch,
                                                              tmp_path: Path) -> None:
    table = (Program("x", lambda launch: ["whaletop-no-such-program"], ready="displayfd"),)
    with _supervisor(table, q, run_as, env={"PATH": str(tmp_path)}) as sup:
        gc.collect()  # an earlier test's unreferenced file, closed now rather than during
        before = _open_fds()
        with pytest.raises(OSError, match="whaletop-no-such-program"):
            sup.launch(launch)
        # New ones only: another thread or the collector may close one meanwhile.
        assert _open_fds() - before == set(), "the readiness pipe leaked"
        assert sup.child("x") is None


def test_use_comes_before_launch(q: EventQueue, launch: Launch) -> None:
    with pytest.raises(AssertionError, match="use"):
        Supervisor(TABLE, q).launch(launch)


# -- accounts, output -----------------------------------------------------------------------

def _uid(pid: int) -> int:
    return int(psutil.Process(pid).uids().real)


def _environ(pid: int) -> dict[str, str]:
    """The environment the kernel holds for pid, read as pid's own uid and gid: root
    without CAP_SYS_PTRACE (a container's, by default) may not read another uid's."""
    path = f"/proc/{pid}/environ"
    ids = psutil.Process(pid)
    uid, gid = ids.uids().real, ids.gids().real
    if uid == os.geteuid():
        raw = Path(path).read_bytes()
    else:
        raw = subprocess.run(["cat", path], user=uid, group=gid, extra_groups=[],
                             capture_output=True, check=True).stdout
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_each_program_runs_as_its_account_with_its_environment(
        q: EventQueue, launch: Launch) -> None:
    """The desktop's programs as the desktop user; nginx's master as root (it reads the
    key, then drops to the web account); the sign-in service as the web account."""
    root = os.geteuid() == 0
    desktop = RunAs(uid=54321 if root else os.getuid(), gid=54322 if root else os.getgid(),
                    groups=(), home="/")
    web = RunAs(uid=33 if root else os.getuid(), gid=33 if root else os.getgid(),
                groups=(), home="/")
    me = RunAs(uid=os.geteuid(), gid=os.getegid(), groups=(), home="/")
    table = (Program("session", _sleep),
             Program("nginx", _sleep, account="root", stop_order=1),
             Program("webauth", _sleep, account="web", stop_order=2))
    sup = Supervisor(table, q)
    sup.use(desktop, {**ENV, "DISPLAY": ":1", "WHO": "desktop"})
    sup.use(me, {**ENV, "WHO": "root"}, "root")
    sup.use(web, {**ENV, "WHO": "web"}, "web")
    try:
        assert sup.launch(launch)
        pids = {c.name: c.pid for c in sup.children()}
        assert {name: _uid(pid) for name, pid in pids.items()} == {
            "session": desktop.uid, "nginx": me.uid, "webauth": web.uid}
        environs = {name: _environ(pid) for name, pid in pids.items()}
        assert {name: env["WHO"] for name, env in environs.items()} == {
            "session": "desktop", "nginx": "root", "webauth": "web"}
        assert "DISPLAY" not in environs["nginx"], "the desktop's environment leaked"
        assert "DISPLAY" not in environs["webauth"]
    finally:
        sup.stop_all()


def test_a_program_whose_account_is_unknown_is_not_started(q: EventQueue, run_as: RunAs,
                                                           launch: Launch) -> None:
    table = (Program("session", _sleep), Program("webauth", _sleep, account="web"))
    with _supervisor(table, q, run_as) as sup, pytest.raises(AssertionError, match="'web'"):
        sup.launch(launch)


def test_the_table_s_output_settings_reach_the_children(q: EventQueue, run_as: RunAs,
                                                        launch: Launch) -> None:
    """json_lines and quiet from the table, for both kinds of readiness."""
    chatter = re.compile(r"^chatter")

    def talks(ready_fd: int | None = None) -> list[str]:
        ready = f"echo 1 >/dev/fd/{ready_fd}; " if ready_fd is not None else ""
        return ["sh", "-c", f"{ready}echo chatter; echo '{{\"event\":\"request\","
                "\"status\":200}'; echo kept; exec sleep 60"]

    table = (Program("x", lambda launch: talks(launch.ready_fd), ready="displayfd",
                     quiet=chatter),
             Program("web", lambda launch: talks(), json_lines=True, quiet=chatter))
    with capture_logs() as logs, _supervisor(table, q, run_as) as sup:
        sup.launch(launch)

        def said(name: str) -> list[Any]:
            return [e for e in logs if e.get("source") == name]

        wait_for(lambda: len(said("x")) >= 2 and len(said("web")) >= 2, "their lines")
    assert [e["event"] for e in said("x")] == ['{"event":"request","status":200}', "kept"]
    assert [(e["event"], e.get("status")) for e in said("web")] == [
        ("request", 200), ("kept", None)]


# -- signals -------------------------------------------------------------------------------

def test_signal_reaches_a_running_child(q: EventQueue, run_as: RunAs, launch: Launch,
                                        tmp_path: Path) -> None:
    """nginx reloads its certificate on SIGHUP: the same process, no restart."""
    marker = tmp_path / "hup"

    def reloads(launch: Launch) -> list[str]:
        return ["sh", "-c", f"trap 'echo hup >> {marker}' HUP; echo ready; "
                "while :; do sleep 0.01; done"]

    table = (Program("nginx", reloads, restart=WEB_RESTART),)
    with capture_logs() as logs, _supervisor(table, q, run_as) as sup:
        sup.launch(launch)
        wait_for(lambda: any(e.get("source") == "nginx" for e in logs), "the HUP trap")
        pid = _running(sup, "nginx")
        assert sup.signal("nginx", signal.SIGHUP) is True
        wait_for(marker.exists, "the child to get SIGHUP")
        assert marker.read_text() == "hup\n"
        assert _running(sup, "nginx") == pid
        assert q.get(timeout=0.05) is None, "no exit, nothing to tell the machine"


def test_signal_to_a_child_that_is_not_running(q: EventQueue, run_as: RunAs,
                                               launch: Launch) -> None:
    table = (Program("nginx", lambda launch: ["sh", "-c", "exit 0"], restart=WEB_RESTART),
             Program("webauth", _sleep, after="nginx-never"))
    with _supervisor(table, q, run_as) as sup:
        assert sup.signal("nginx", signal.SIGHUP) is False, "not started yet"
        sup.launch(launch)
        _next(q, ChildExited)
        nginx = sup.child("nginx")
        assert nginx is not None
        wait_for(lambda: nginx.returncode is not None, "the exit status to be collected")
        assert sup.signal("nginx", signal.SIGHUP) is False, "it exited"
        assert sup.signal("webauth", signal.SIGHUP) is False
        assert sup.signal("nobody", signal.SIGHUP) is False


# -- stale exits ---------------------------------------------------------------------------

def test_stale_for_unknown_replaced_and_retired_children(sup: Supervisor, launch: Launch,
                                                         q: EventQueue) -> None:
    _launched(sup, launch, q)
    web = _running(sup, "web")
    assert sup.stale("nobody", web)
    assert not sup.stale("web", web), "the current child's exit is news"
    assert sup.stale("web", web + 100_000), "another pid is not the current child"
    assert sup.restart("web", launch)
    assert sup.stale("web", web), "the replaced child's exit is news"
    assert not sup.stale("web", _running(sup, "web"))
    session = _running(sup, "session")
    sup.stop_all()
    assert sup.stale("session", session), "a child stopped on purpose is news"


def test_a_child_that_dies_by_itself_is_not_stale(sup: Supervisor, launch: Launch,
                                                  q: EventQueue) -> None:
    _launched(sup, launch, q)
    web = _running(sup, "web")
    os.kill(web, 9)
    exited = _next(q, ChildExited)
    assert exited == ChildExited(name="web", pid=web, returncode=-9)
    assert not sup.stale("web", web)


def test_a_not_yet_started_program_s_exit_is_stale(sup: Supervisor, launch: Launch) -> None:
    sup.launch(launch)
    assert sup.stale("session", 12345)


# -- restarting ----------------------------------------------------------------------------

def test_only_programs_with_a_restart_policy_are_restartable(sup: Supervisor) -> None:
    assert sup.restartable("web")
    assert sup.has_restart_policy("web")
    for name in ("x", "session", "nobody"):
        assert not sup.restartable(name)
        assert not sup.has_restart_policy(name)


def test_schedule_restart_uses_the_budget_and_returns_the_backoff(sup: Supervisor,
                                                                  launch: Launch,
                                                                  q: EventQueue) -> None:
    _launched(sup, launch, q)
    with capture_logs() as logs:
        first = sup.schedule_restart("web", "health check failed")
        assert sup.restartable("web")
        second = sup.schedule_restart("web", "web exited")
    assert (first, second) == (pytest.approx(0.1), pytest.approx(0.15))  # doubled, capped
    assert not sup.restartable("web"), "restartable with the budget used up"
    assert sup.has_restart_policy("web")
    scheduled = [e for e in logs if e["event"] == "restart_scheduled"]
    assert [(e["attempt"], e["of"], e["reason"]) for e in scheduled] == [
        (1, 2, "health check failed"), (2, 2, "web exited")]
    assert sup.describe()["restarts"] == {"web": {"used": 2, "allowed": 2, "window_s": 60.0}}


def test_retry_delay_waits_until_the_budget_refills(sup: Supervisor, launch: Launch,
                                                    q: EventQueue) -> None:
    _launched(sup, launch, q)
    assert sup.retry_delay("web") == 1.0, "at least a second, even with budget left"
    sup.schedule_restart("web", "one")
    sup.schedule_restart("web", "two")
    with capture_logs() as logs:
        delay = sup.retry_delay("web")
    assert 50.0 < delay <= 60.0, "not when the first restart leaves the 60 s window"
    assert [e["delay_s"] for e in logs if e["event"] == "restart_scheduled"] == [
        pytest.approx(delay, abs=0.001)]


def test_schedule_restart_stops_a_hung_child(q: EventQueue, run_as: RunAs,
                                             launch: Launch) -> None:
    table = (Program("web", _ignores_sigterm, restart=Restart()),)
    with _supervisor(table, q, run_as) as sup:
        assert sup.launch(launch)
        hung = sup.child("web")
        assert hung is not None
        process = psutil.Process(hung.pid)
        # `sh` has exec'ed `sleep` once its name says so: from then on SIGTERM is ignored.
        wait_for(lambda: process.name() == "sleep", "sh to exec sleep")
        sup.schedule_restart("web", "probe failed")
        assert hung.returncode == -9, "the hung child was not killed"
        assert _gone(hung.pid)
        assert sup.stale("web", hung.pid)


def _master_and_worker(launch: Launch) -> list[str]:
    """Like nginx: a master that leaves a worker in its process group."""
    pid_file = launch.paths.run_dir / "worker.pid"
    return ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; exec sleep 60"]


def test_schedule_restart_of_a_dead_child_ends_what_its_group_left(
        q: EventQueue, run_as: RunAs, launch: Launch) -> None:
    """nginx's worker outlives a killed master and keeps the port: a dead child's
    process group is swept before its replacement starts."""
    table = (Program("web", _master_and_worker, restart=WEB_RESTART),)
    with _supervisor(table, q, run_as) as sup:
        launch.paths.run_dir.mkdir(parents=True, exist_ok=True)
        sup.launch(launch)
        web = sup.child("web")
        assert web is not None
        pid_file = launch.paths.run_dir / "worker.pid"
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), "the worker")
        worker = psutil.Process(int(pid_file.read_text()))
        os.kill(web.pid, 9)
        _next(q, ChildExited)
        wait_for(lambda: web.returncode is not None, "the exit status to be collected")
        assert worker.is_running(), "the worker outlived its master"
        with capture_logs() as logs:
            sup.schedule_restart("web", "web exited")
        assert web.returncode == -9
        wait_for(lambda: not worker.is_running() or worker.status() == "zombie",
                 "the worker to be gone")
        assert [e["returncode"] for e in logs if e["event"] == "child_stopped"] == [-9]


def test_restart_replaces_the_child(sup: Supervisor, launch: Launch, q: EventQueue) -> None:
    _launched(sup, launch, q)
    old = sup.child("web")
    assert old is not None
    with capture_logs() as logs:
        assert sup.restart("web", launch) is True
    new = _running(sup, "web")
    assert new != old.pid
    assert old.returncode is not None, "the old child was not waited for"
    assert _gone(old.pid), "the old child is still running"
    assert [c.name for c in sup.children()] == ["x", "web", "session"]
    assert [e["step"] for e in logs if e["event"] == "step"] == ["restart_web"]
    # The old one's exit is reported, and it is stale.
    exited = _next(q, ChildExited)
    assert exited.pid == old.pid  # type: ignore[attr-defined]
    assert sup.stale("web", old.pid)


def test_a_restarted_displayfd_program_gets_its_pipe_and_stays_ready(
        q: EventQueue, run_as: RunAs, launch: Launch) -> None:
    """Its command line always has a real -displayfd; the replacement's readiness is
    posted (the machine ignores it after the start) and it is never "not ready" again."""
    table = (Program("x", _says_ready, ready="displayfd", restart=Restart()),)
    with _supervisor(table, q, run_as) as sup:
        assert not sup.launch(launch)
        sup.mark_ready(_next(q, ChildReady).name)  # type: ignore[attr-defined]
        assert sup.launch(launch)
        with capture_logs() as logs:
            assert sup.restart("x", launch)
        started = [e["argv"] for e in logs if e["event"] == "child_started"]
        assert len(started) == 1
        assert "None" not in started[0][-1], "the replacement was given no readiness pipe"
        assert _next(q, ChildReady) == ChildReady(name="x")
        assert sup.launch(launch), "a restart made the program not ready again"


def test_a_program_after_one_listed_later_still_starts(q: EventQueue, run_as: RunAs,
                                                       launch: Launch) -> None:
    """Table order does not matter: a program waiting for one that is ready once spawned
    starts in the same launch()."""
    table = (Program("session", _sleep, after="web"), Program("web", _sleep))
    with _supervisor(table, q, run_as) as sup:
        assert sup.launch(launch) is True
        assert [c.name for c in sup.children()] == ["web", "session"]


def test_restart_refuses_programs_it_cannot_restart(sup: Supervisor, launch: Launch,
                                                    q: EventQueue) -> None:
    assert not sup.restart("web", launch), "restarted a program never started"
    _launched(sup, launch, q)
    session = _running(sup, "session")
    assert not sup.restart("session", launch), "restarted a program with no restart policy"
    assert not sup.restart("nobody", launch)
    assert _running(sup, "session") == session


def test_restart_that_cannot_spawn_logs_and_returns_false(q: EventQueue, run_as: RunAs,
                                                          launch: Launch,
                                                          tmp_path: Path) -> None:
    table = (Program("web", _sleep, restart=Restart()),)
    with _supervisor(table, q, run_as) as sup:
        assert sup.launch(launch)
        old = _running(sup, "web")
        sup.use(run_as, {"PATH": str(tmp_path)})  # no `sleep` here
        with capture_logs() as logs:
            assert sup.restart("web", launch) is False
        failed = [e for e in logs if e["event"] == "restart_failed"]
        assert len(failed) == 1
        assert failed[0]["child"] == "web"
        assert "sleep" in failed[0]["reason"]
        assert _gone(old), "the child it gave up is still running"
        assert sup.stale("web", old)


# -- stopping ------------------------------------------------------------------------------

def test_stop_all_stops_in_stop_order(sup: Supervisor, launch: Launch, q: EventQueue) -> None:
    _launched(sup, launch, q)
    pids = {c.name: c.pid for c in sup.children()}
    with capture_logs() as logs:
        sup.stop_all()
    stopped = [e for e in logs if e["event"] == "child_stopped"]
    assert [e["child"] for e in stopped] == ["web", "session", "x"]
    assert [e["pid"] for e in stopped] == [pids["web"], pids["session"], pids["x"]]
    step = [e for e in logs if e["event"] == "step"]
    assert [(e["step"], e["children"]) for e in step] == [
        ("stop_children", ["web", "session", "x"])]
    assert all(_gone(pid) for pid in pids.values())
    assert all(sup.stale(name, pid) for name, pid in pids.items())


def test_stop_all_with_nothing_started(sup: Supervisor) -> None:
    with capture_logs() as logs:
        sup.stop_all()
    assert not [e for e in logs if e["event"] == "child_stopped"]


# -- status --------------------------------------------------------------------------------

def test_describe(sup: Supervisor, launch: Launch, q: EventQueue) -> None:
    assert sup.describe() == {
        "children": {},
        "restarts": {"web": {"used": 0, "allowed": 2, "window_s": 60.0}},
    }
    _launched(sup, launch, q)
    web = sup.child("web")
    assert web is not None
    os.kill(web.pid, 9)
    _next(q, ChildExited)
    wait_for(lambda: web.returncode is not None, "the exit status to be collected")
    described = sup.describe()
    assert described["children"] == {
        name: {"pid": c.pid, "running": name != "web",
               "returncode": -9 if name == "web" else None}
        for name, c in ((c.name, c) for c in sup.children())}
    assert list(described["children"]) == ["x", "web", "session"]
