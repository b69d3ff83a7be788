"""Child processes: real `sh` and `sleep`, spawned, watched, logged and stopped."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest
from structlog.testing import capture_logs

from whaletopd import children
from whaletopd.children import Child, RunAs
from whaletopd.events import ChildExited, EventQueue

from .helpers import WAIT, wait_for

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "FOO": "bar"}


def _spawn(name: str, script: str, run_as: RunAs, q: EventQueue) -> Child:
    return children.spawn(name, ["sh", "-c", script], run_as, ENV, q)


def _next_exit(q: EventQueue) -> ChildExited:
    ev = q.get(timeout=WAIT)
    assert isinstance(ev, ChildExited), ev
    return ev


def _lines(logs: Sequence[Mapping[str, Any]], source: str) -> list[str]:
    return [entry["event"] for entry in logs if entry.get("source") == source]


def _gone(pid: int) -> bool:
    """Dead, or a zombie waiting for whoever inherited it: either way not running."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def q() -> EventQueue:
    return EventQueue()


def test_exit_is_posted_with_the_returncode(run_as: RunAs, q: EventQueue) -> None:
    with capture_logs() as logs:
        child = _spawn("hello", "echo hello; exit 7", run_as, q)
        ev = _next_exit(q)
        assert ev == ChildExited(name="hello", pid=child.pid, returncode=7)
        wait_for(lambda: "hello" in _lines(logs, "hello"), "the output line to be logged")
    assert child.returncode == 7
    line = next(e for e in logs if e.get("source") == "hello")
    assert line["pid"] == child.pid
    assert line["log_level"] == "info"
    started = [e for e in logs if e["event"] == "child_started"]
    assert started == [{"event": "child_started", "child": "hello", "pid": child.pid,
                        "argv": ["sh", "-c", "echo hello; exit 7"],
                        "component": "whaletopd.children", "log_level": "info"}]


def test_stderr_is_logged_too_and_blank_lines_dropped(run_as: RunAs, q: EventQueue) -> None:
    with capture_logs() as logs:
        _spawn("err", "echo one; echo; echo two >&2; printf 'three  \\n'", run_as, q)
        _next_exit(q)
        wait_for(lambda: len(_lines(logs, "err")) >= 3, "three output lines")
    assert _lines(logs, "err") == ["one", "two", "three"]


def test_long_lines_are_cut(run_as: RunAs, q: EventQueue) -> None:
    with capture_logs() as logs:
        _spawn("long", "head -c 10000 /dev/zero | tr '\\0' x; echo", run_as, q)
        _next_exit(q)
        wait_for(lambda: _lines(logs, "long"), "the long line")
    assert _lines(logs, "long")[0] == "x" * children.MAX_LINE


def test_an_endless_line_is_cut_once_and_its_rest_never_kept(run_as: RunAs,
                                                            q: EventQueue) -> None:
    """50 MB without a newline: one line of MAX_LINE bytes is logged, saying it was
    cut; the rest is read and dropped (whaletopd never holds it), and the lines after
    it come through as usual."""
    script = ("import sys; out = sys.stdout.buffer; chunk = b'x' * (1 << 20)\n"
              "for _ in range(50): out.write(chunk)\n"
              "out.write(b'tail of the long line\\nnext line\\n')")
    with capture_logs() as logs:
        children.spawn("endless", ["python3", "-c", script], run_as, ENV, q)
        assert _next_exit(q).returncode == 0
        wait_for(lambda: "next line" in _lines(logs, "endless"), "the line after it")
    entries = [e for e in logs if e.get("source") == "endless"]
    assert [e["event"] for e in entries] == ["x" * children.MAX_LINE, "next line"]
    assert "longer than 4096 bytes" in entries[0]["cut"]
    assert "cut" not in entries[1]
    # Everything logged from the child: what it cost whaletopd to hold at a time.
    assert sum(len(str(v)) for e in entries for v in e.values()) < 2 * children.MAX_LINE


def test_a_line_that_fits_is_not_marked_cut(run_as: RunAs, q: EventQueue) -> None:
    with capture_logs() as logs:
        _spawn("fits", f"head -c {children.MAX_LINE - 1} /dev/zero | tr '\\0' y; echo",
               run_as, q)
        _next_exit(q)
        wait_for(lambda: _lines(logs, "fits"), "the line")
    (entry,) = [e for e in logs if e.get("source") == "fits"]
    assert entry["event"] == "y" * (children.MAX_LINE - 1)
    assert "cut" not in entry


def test_undecodable_output_is_still_logged(run_as: RunAs, q: EventQueue) -> None:
    with capture_logs() as logs:
        _spawn("bin", "printf 'caf\\351\\n'", run_as, q)
        _next_exit(q)
        wait_for(lambda: _lines(logs, "bin"), "the line")
    assert _lines(logs, "bin") == ["caf\ufffd"]


def test_child_runs_in_home_with_only_the_given_environment(
        run_as: RunAs, q: EventQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's own environment (VNC_PASSWORD!) must not leak to the desktop user."""
    monkeypatch.setenv("VNC_PASSWORD", "leaked!")
    with capture_logs() as logs:
        _spawn("env", 'pwd; echo "FOO=$FOO"; echo "PW=${VNC_PASSWORD:-unset}"; id -u',
               run_as, q)
        _next_exit(q)
        wait_for(lambda: len(_lines(logs, "env")) >= 4, "four lines")
    assert _lines(logs, "env") == [run_as.home, "FOO=bar", "PW=unset", str(run_as.uid)]


def test_child_gets_no_stdin(run_as: RunAs, q: EventQueue) -> None:
    """A child reading stdin must see EOF, not hang on the daemon's terminal."""
    _spawn("cat", "cat; exit 3", run_as, q)
    assert _next_exit(q).returncode == 3


def test_child_leads_its_own_process_group(run_as: RunAs, q: EventQueue) -> None:
    child = _spawn("group", "sleep 60", run_as, q)
    try:
        assert os.getpgid(child.pid) == child.pid
        assert os.getsid(child.pid) == child.pid
    finally:
        children.stop([child])


def test_killed_child_reports_the_signal(run_as: RunAs, q: EventQueue) -> None:
    child = _spawn("victim", "sleep 60", run_as, q)
    os.kill(child.pid, signal.SIGKILL)
    ev = _next_exit(q)
    assert ev.returncode == -signal.SIGKILL
    assert "killed by signal 9" in ev.why


def test_spawn_of_a_missing_program_raises_oserror(run_as: RunAs, q: EventQueue) -> None:
    with pytest.raises(FileNotFoundError, match="/nonexistent/Xvnc"):
        children.spawn("ghost", ["/nonexistent/Xvnc"], run_as, ENV, q)
    assert q.get(timeout=0.05) is None


def test_passed_fd_reaches_the_child(run_as: RunAs, q: EventQueue) -> None:
    """Xvnc reports readiness on -displayfd: the fd must survive into the child."""
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as pipe:
        try:
            children.spawn("fd", ["sh", "-c", f"echo 1 > /proc/self/fd/{write_fd}"], run_as,
                           ENV, q, pass_fds=(write_fd,))
        finally:
            os.close(write_fd)
        assert pipe.readline() == b"1\n"
    assert _next_exit(q).returncode == 0


# -- JSON lines and quiet lines ---------------------------------------------------------

def _say(name: str, lines: Sequence[str], run_as: RunAs, q: EventQueue, tmp_path: Path,
         timeout: float = WAIT, **how: Any) -> list[Mapping[str, Any]]:
    """Spawn a child that prints `lines` then "done"; the log entries of its output."""
    script = tmp_path / f"{name}.out"
    script.write_text("".join(line + "\n" for line in [*lines, "done"]))
    with capture_logs() as logs:
        children.spawn(name, ["cat", str(script)], run_as, ENV, q, **how)
        _next_exit(q)
        wait_for(lambda: "done" in _lines(logs, name), "the last line", timeout)
    return [e for e in logs if e.get("source") == name]


def test_json_lines_keep_their_fields(run_as: RunAs, q: EventQueue, tmp_path: Path) -> None:
    """nginx's access log and the sign-in service write JSON objects: their fields stay
    fields of whaletopd's own line, with the child's `source`."""
    entries = _say("nginx", [
        '{"event":"request","level":"info","client":"203.0.113.9","method":"GET",'
        '"path":"/vnc.html","status":200,"bytes":1234,"seconds":0.001,"user":""}',
        '{"event":"sign_in_failed","level":"warning","client":"198.51.100.7"}',
        '{"event":"sign_in_locked","level":"error","client":"198.51.100.7"}',
        '{"client":"192.0.2.1"}',
    ], run_as, q, tmp_path, json_lines=True)
    request = entries[0]
    assert request["event"] == "request"
    assert request["log_level"] == "info"
    assert (request["client"], request["path"], request["status"], request["bytes"]) == (
        "203.0.113.9", "/vnc.html", 200, 1234)
    assert request["source"] == "nginx"
    assert "level" not in request
    assert [(e["event"], e["log_level"]) for e in entries[1:3]] == [
        ("sign_in_failed", "warning"), ("sign_in_locked", "error")]
    assert (entries[3]["event"], entries[3]["client"]) == ("output", "192.0.2.1")


def test_json_lines_cannot_pass_for_another_source(run_as: RunAs, q: EventQueue,
                                                   tmp_path: Path) -> None:
    entries = _say("webauth", [
        '{"event":"child_started","source":"whaletopd","pid":1,'
        '"timestamp":"2000-01-01T00:00:00Z","level":"critical!"}',
    ], run_as, q, tmp_path, json_lines=True)
    child = entries[0]
    assert child["source"] == "webauth"
    assert child["pid"] != 1
    assert "timestamp" not in child, "whaletopd stamps its own lines"
    assert child["log_level"] == "info", "an unknown level is info"


def test_other_lines_of_a_json_child_are_logged_as_text(run_as: RunAs, q: EventQueue,
                                                        tmp_path: Path) -> None:
    """Broken JSON lines, and JSON that is no object, are text."""
    lines = ['{"event": "cut short', "[1, 2, 3]", '"a string"', "42", "plain words"]
    entries = _say("nginx", lines, run_as, q, tmp_path, json_lines=True)
    assert [e["event"] for e in entries] == [*lines, "done"]
    assert all(e["log_level"] == "info" for e in entries)


def test_nginx_s_error_log_lines_keep_their_level(run_as: RunAs, q: EventQueue,
                                                  tmp_path: Path) -> None:
    """nginx's error log is text on the same stream: its level becomes the line's, and
    its date and process ids (whaletopd stamps its own) are dropped."""
    entries = _say("nginx", [
        "2026/11/29 21:47:26 [warn] 12#12: *3 limiting requests, excess: 20.000 by zone "
        '"connections", client: 127.0.0.1',
        "2026/11/29 21:47:27 [crit] 12#12: *4 connect() to unix:/run/whaletop/desktop/"
        "websockify.sock failed (2: No such file or directory)",
        "2026/11/29 21:47:28 [emerg] 1#1: bind() to 0.0.0.0:8080 failed (98: Address in use)",
        "2026/11/29 21:47:29 [notice] 1#1: signal process started",
    ], run_as, q, tmp_path, json_lines=True)
    assert [(e["log_level"], e["event"][:22]) for e in entries[:4]] == [
        ("warning", "*3 limiting requests, "), ("error", "*4 connect() to unix:/"),
        ("critical", "bind() to 0.0.0.0:8080"), ("info", "signal process started")]


def test_nginx_s_error_lines_do_not_carry_the_query(run_as: RunAs, q: EventQueue,
                                                    tmp_path: Path) -> None:
    """The access log leaves the query out; the error log must not bring it back (as
    when the sign-in service is down: every page request is an error line)."""
    entries = _say("nginx", [
        "2026/11/29 21:52:59 [crit] 7#7: *2 connect() to unix:/run/whaletop/web/auth.sock "
        "failed (2: No such file or directory) while connecting to upstream, client: "
        '127.0.0.1, server: , request: "GET /vnc.html?password=secret HTTP/1.1", '
        'subrequest: "/auth/check", host: "127.0.0.1:8080"',
    ], run_as, q, tmp_path, json_lines=True)
    assert "secret" not in entries[0]["event"]
    assert 'request: "GET /vnc.html HTTP/1.1"' in entries[0]["event"]


def test_a_desktop_program_cannot_forge_log_fields(run_as: RunAs, q: EventQueue,
                                                   tmp_path: Path) -> None:
    """The desktop user's programs write what they like: a JSON object from them is
    one line of text, not fields (no forged `"event":"healthy"` or `"level":"error"`)."""
    forged = '{"event":"transition","dest":"HEALTHY","level":"error","source":"whaletopd"}'
    entries = _say("session", [forged], run_as, q, tmp_path)
    assert entries[0]["event"] == forged
    assert entries[0]["log_level"] == "info"
    assert "dest" not in entries[0]
    assert entries[0]["source"] == "session"


def test_quiet_lines_are_dropped(run_as: RunAs, q: EventQueue, tmp_path: Path) -> None:
    sock = "/run/whaletop/desktop/websockify.sock"
    entries = _say("websockify", [
        f"{sock} - - [29/Nov/2026 21:34:00] {sock}: Plain non-SSL (ws://) WebSocket "
        "connection",
        f"{sock} - - [29/Nov/2026 21:34:00] {sock}: Path: '/websockify'",
        f"{sock} - - [29/Nov/2026 21:34:00] connecting to unix socket: /run/vnc.sock",
        "handler exception: [Errno 111] Connection refused",
    ], run_as, q, tmp_path, quiet=re.compile(
        r"^\S+ - - \[[^\]]*\] (\S+: Plain non-SSL|\S+: Path: |connecting to unix socket)"))
    assert [e["event"] for e in entries] == [
        "handler exception: [Errno 111] Connection refused", "done"]


def test_quiet_applies_to_json_children_too(run_as: RunAs, q: EventQueue,
                                            tmp_path: Path) -> None:
    entries = _say("chatty", ['{"event":"tick"}', '{"event":"request","status":200}'],
                   run_as, q, tmp_path, json_lines=True, quiet=re.compile('"tick"'))
    assert [e["event"] for e in entries] == ["request", "done"]


def test_a_json_line_with_any_key_does_not_stop_the_output(run_as: RunAs, q: EventQueue,
                                                           tmp_path: Path) -> None:
    entries = _say("webauth", ['{"event":"odd","self":1}', "after"], run_as, q, tmp_path,
                   timeout=1.0, json_lines=True)
    assert "after" in [e["event"] for e in entries]


# -- stopping ---------------------------------------------------------------------------

def test_stop_terminates_with_sigterm(run_as: RunAs, q: EventQueue) -> None:
    child = _spawn("polite", "exec sleep 60", run_as, q)
    with capture_logs() as logs:
        children.stop([child], deadline=WAIT)
    assert child.returncode == -signal.SIGTERM
    assert not [e for e in logs if e["event"] == "child_kill"]
    stopped = [e for e in logs if e["event"] == "child_stopped"]
    assert [(e["child"], e["returncode"]) for e in stopped] == [("polite", -signal.SIGTERM)]
    assert _next_exit(q).returncode == -signal.SIGTERM


def test_stop_kills_a_child_that_ignores_sigterm(run_as: RunAs, q: EventQueue) -> None:
    with capture_logs() as logs:
        child = _spawn("stubborn", 'trap "" TERM; echo ready; while :; do sleep 0.01; done',
                       run_as, q)
        wait_for(lambda: "ready" in _lines(logs, "stubborn"), "the TERM trap to be set")
        children.stop([child], deadline=0.3)
    assert child.returncode == -signal.SIGKILL
    kills = [e for e in logs if e["event"] == "child_kill"]
    assert len(kills) == 1
    assert kills[0]["child"] == "stubborn"
    assert kills[0]["log_level"] == "warning"
    assert "0.3s after SIGTERM" in kills[0]["reason"]
    assert _next_exit(q).returncode == -signal.SIGKILL


def test_stop_reaches_grandchildren_in_the_group(run_as: RunAs, q: EventQueue,
                                                 tmp_path: Path) -> None:
    """The session's panel and window manager must not outlive it, even one that
    ignores SIGTERM after its parent is gone."""
    pidfile = tmp_path / "grandchild.pid"
    child = _spawn("session", f'(trap "" TERM; exec sleep 60) & echo $! > {pidfile}; wait',
                   run_as, q)
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the grandchild's pid")
    grandchild = int(pidfile.read_text())
    assert not _gone(grandchild)
    assert os.getpgid(grandchild) == child.pid
    children.stop([child], deadline=WAIT)
    wait_for(lambda: _gone(grandchild), "the grandchild to be gone")


def test_stop_after_the_leader_exited_still_ends_the_group(run_as: RunAs, q: EventQueue,
                                                          tmp_path: Path) -> None:
    pidfile = tmp_path / "orphan.pid"
    child = _spawn("launcher", f"sleep 60 & echo $! > {pidfile}; exit 0", run_as, q)
    assert _next_exit(q).returncode == 0
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the orphan's pid")
    orphan = int(pidfile.read_text())
    assert not _gone(orphan)
    children.stop([child])
    wait_for(lambda: _gone(orphan), "the orphan to be gone")


def test_stop_goes_in_the_given_order(run_as: RunAs, q: EventQueue) -> None:
    """One after the other: the supervisor passes the table's stop order (the session
    before Xvnc, so it does not see its display vanish first)."""
    started = [_spawn(name, "exec sleep 60", run_as, q) for name in ("session", "ws", "xvnc")]
    with capture_logs() as logs:
        children.stop(started)
    order = [e["child"] for e in logs if e["event"] == "child_stopped"]
    assert order == ["session", "ws", "xvnc"]
    assert all(c.returncode is not None for c in started)


def test_stop_of_exited_children_is_harmless(run_as: RunAs, q: EventQueue) -> None:
    child = _spawn("done", "exit 4", run_as, q)
    _next_exit(q)
    with capture_logs() as logs:
        children.stop([child])
        children.stop([child])
    assert child.returncode == 4
    assert [e["returncode"] for e in logs if e["event"] == "child_stopped"] == [4, 4]
    assert not [e for e in logs if e["event"] == "child_kill"]


def test_stop_of_nothing() -> None:
    children.stop([])

