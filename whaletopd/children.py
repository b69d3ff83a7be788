"""The desktop's child processes: spawned as the desktop user, watched, stopped.

Each child gets two threads that only post and log: one re-emits its output as JSON
lines with a `source` field, one waits for its exit and posts ChildExited at once (no
polling).  Each child leads its own process group, so stopping it reaches the programs
it started too (the LXDE session's panel, window manager, file manager).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from whaletopd import logs
from whaletopd.events import ChildExited, EventQueue

log = logs.get("whaletopd.children")
MAX_LINE = 4096
# Told each event of a JSON-lines child, from its pump's thread: (child, event).
OnEvent = Callable[[str, str], None]


@dataclass(frozen=True)
class RunAs:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    retired: bool = False  # stopped or replaced on purpose: its exit is expected

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode


LEVELS = ("debug", "info", "warning", "error", "critical")


def _pump_output(name: str, proc: subprocess.Popen[bytes],
                 quiet: re.Pattern[str] | None = None, json_lines: bool = False,
                 on_event: OnEvent | None = None) -> None:
    """Each line of the child's output as a JSON line of whaletopd's stream, with its
    `source`.  A child known to write JSON objects (nginx's access log, the sign-in
    service; never the desktop's programs, which could forge lines) has its fields
    kept, and each of its events is told to `on_event` (the sign-in service's failures
    are counted for /metrics); `quiet` lines (routine chatter) are dropped."""
    clog = log.bind(source=name, pid=proc.pid)
    assert proc.stdout is not None
    for raw, cut in _lines(proc.stdout):
        line = raw.decode("utf-8", errors="replace").rstrip()
        if not line or (quiet is not None and quiet.search(line)):
            continue
        if cut:
            # Never JSON (the object was cut): the text, once, and why it ends there.
            clog.info(line, cut=f"the line was longer than {MAX_LINE} bytes; "
                                "the rest of it was dropped")
            continue
        if not json_lines:
            clog.info(line)
            continue
        fields = _json_object(line)
        if fields is None:
            level, text = _leveled(line)
            getattr(clog, level)(text)
            continue
        level = fields.pop("level", "info")
        event = str(fields.pop("event", "output"))
        if on_event is not None:
            try:
                on_event(name, event)
            except Exception:  # a bug there must not stop this pump (the child would block)
                log.exception("event_hook_failed", child=name, event_name=event)
        # Whaletopd's own fields win; a key that is a parameter name of the logger's
        # methods ("self") or not a name at all is renamed, never fatal to this thread.
        kept = {(k if k.isidentifier() and k != "self" else f"field_{k}"): v
                for k, v in fields.items() if k not in ("source", "pid", "timestamp")}
        try:
            getattr(clog, level if level in LEVELS else "info")(event, **kept)
        except TypeError:
            clog.info(line)
    proc.stdout.close()


def _lines(stream: IO[bytes]) -> Iterator[tuple[bytes, bool]]:
    """Each line (at most MAX_LINE bytes of it) and whether it was cut: the rest of a
    longer line is read and dropped, never held, so a child writing one endless line
    costs whaletopd no more memory than a short one."""
    while raw := stream.readline(MAX_LINE):
        if raw.endswith(b"\n") or len(raw) < MAX_LINE:
            yield raw, False
            continue
        yield raw, True
        while (rest := stream.readline(MAX_LINE)) and not rest.endswith(b"\n"):
            pass


# nginx's error log: "2026/11/29 21:34:48 [crit] 29#29: *1 connect() ... failed".
_NGINX_ERROR = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(\w+)\] \d+#\d+: (.*)$")
_NGINX_LEVELS = {"debug": "debug", "info": "info", "notice": "info", "warn": "warning",
                 "error": "error", "crit": "error", "alert": "critical", "emerg": "critical"}


# nginx names the request in its error lines, query included: noVNC's ?password=...
_QUERY_IN_NGINX_LINE = re.compile(r'((?:request|referrer): "[^"?]*)\?[^" ]*')


def nginx_message(line: str) -> str:
    """An nginx error line without its date and pid#tid, and without any query."""
    match = _NGINX_ERROR.match(line)
    text = f"[{match.group(1)}] {match.group(2)}" if match else line
    return _QUERY_IN_NGINX_LINE.sub(r"\1", text)


def _leveled(line: str) -> tuple[str, str]:
    """A structured child's text line (nginx's error log): its level, and the message
    without date, pid or query."""
    match = _NGINX_ERROR.match(line)
    if match is None:
        return "info", line
    text = _QUERY_IN_NGINX_LINE.sub(r"\1", match.group(2))
    return _NGINX_LEVELS.get(match.group(1), "info"), text


def _json_object(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _wait_and_post(child: Child, events: EventQueue) -> None:
    code = child.proc.wait()
    events.post(ChildExited(name=child.name, pid=child.pid, returncode=code))


def spawn(name: str, argv: Sequence[str], run_as: RunAs, env: Mapping[str, str],
          events: EventQueue, pass_fds: Sequence[int] = (),
          quiet: re.Pattern[str] | None = None, json_lines: bool = False,
          on_event: OnEvent | None = None) -> Child:
    # Only root changes accounts; a daemon that is not root runs everything as itself
    # (setgroups would fail, even with no groups).
    root = os.geteuid() == 0
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env),
        cwd=run_as.home,
        user=run_as.uid if root else None,
        group=run_as.gid if root else None,
        extra_groups=list(run_as.groups) if root else None,
        start_new_session=True,
        pass_fds=tuple(pass_fds),
    )
    child = Child(name=name, proc=proc)
    log.info("child_started", child=name, pid=proc.pid, argv=list(argv))
    threading.Thread(target=_pump_output, args=(name, proc, quiet, json_lines, on_event),
                     name=f"out-{name}",
                     daemon=True).start()
    threading.Thread(target=_wait_and_post, args=(child, events), name=f"wait-{name}",
                     daemon=True).start()
    return child


def _signal_group(child: Child, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, sig)


def stop(children: Sequence[Child], deadline: float = 1.5) -> None:
    """Stop one after the other, in the order given (the table's stop order): SIGTERM to
    each group, wait, SIGKILL what is left."""
    for child in children:
        t0 = time.monotonic()
        if child.proc.poll() is None:
            _signal_group(child, signal.SIGTERM)
            try:
                child.proc.wait(timeout=deadline)
            except subprocess.TimeoutExpired:
                log.warning("child_kill", child=child.name, pid=child.pid,
                            reason=f"still running {deadline}s after SIGTERM")
        # The group may outlive its leader (programs the session started): end them too.
        _signal_group(child, signal.SIGKILL)
        if child.proc.poll() is None:
            child.proc.wait()
        log.info("child_stopped", child=child.name, pid=child.pid,
                 returncode=child.proc.returncode,
                 duration_ms=round((time.monotonic() - t0) * 1000, 1))
