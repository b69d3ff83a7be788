"""The part that owns the desktop's children: it runs the table in programs.py.

It starts each program once what it waits for is ready, knows which child is current
(so the exit of a replaced or stopped one is stale), restarts the restartable ones
within their budget, and stops them all in the table's stop order.  It only posts
(ChildReady, and through children.spawn ChildExited); the machine decides.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from whaletopd import children, logs
from whaletopd.backoff import RestartBudget
from whaletopd.children import Child, RunAs
from whaletopd.events import ChildReady, EventQueue
from whaletopd.logs import step
from whaletopd.programs import Launch, Program

log = logs.get("whaletopd")
# A child replaced because it hung (its probe failed) has this long to go by itself.
REPLACE_DEADLINE = 0.5


class Supervisor:
    def __init__(self, programs: Sequence[Program], events: EventQueue,
                 on_event: children.OnEvent | None = None) -> None:
        self._programs = {p.name: p for p in programs}
        self._events = events
        self._on_event = on_event  # each event a JSON-lines child logs (metrics)
        self._current: dict[str, Child] = {}  # in first-start order
        self._ready: set[str] = set()
        self._left_out: set[str] = set()  # optional programs that could not start
        self._budgets = {p.name: RestartBudget(p.restart)
                         for p in programs if p.restart is not None}
        self._accounts: dict[str, tuple[RunAs, dict[str, str]]] = {}

    def use(self, run_as: RunAs, env: Mapping[str, str], account: str = "desktop") -> None:
        """Who the children of an account (programs.Program.account) run as, and their
        environment; known after provisioning."""
        self._accounts[account] = (run_as, dict(env))

    # -- starting ------------------------------------------------------------------------

    def launch(self, launch: Launch) -> bool:
        """Start every program not started yet whose `after` is ready (a program ready once
        spawned may let the next start at once).  True once all are started and ready.
        Raises OSError when a program cannot be started."""
        started = True
        while started:
            started = False
            for program in self._programs.values():
                if program.name in self._current or program.name in self._left_out:
                    continue
                if program.after is None or program.after in self._ready:
                    with step("launch_" + program.name):
                        try:
                            self._current[program.name] = self._spawn(program, launch)
                        except OSError as exc:
                            if not program.optional:
                                raise
                            # Optional (sound): the desktop goes on without it.
                            log.error("optional_child_failed", child=program.name,
                                      reason=str(exc), effect="left out until the next start")
                            self._left_out.add(program.name)
                            self._ready.add(program.name)
                    started = True
        return len(self._ready) == len(self._programs)

    def mark_ready(self, name: str) -> None:
        self._ready.add(name)

    def _spawn(self, program: Program, launch: Launch) -> Child:
        assert program.account in self._accounts, f"use(..., {program.account!r}) first"
        run_as, env = self._accounts[program.account]
        if program.ready == "started":
            child = children.spawn(program.name, program.argv(launch), run_as,
                                   env, self._events, quiet=program.quiet,
                                   json_lines=program.json_lines, on_event=self._on_event)
            self._ready.add(program.name)
            return child
        # Its readiness pipe, also when it is restarted (a ChildReady after the start is
        # not news to the machine; the probes say when it serves again).
        read_fd, write_fd = os.pipe()
        try:
            child = children.spawn(program.name, program.argv(replace(launch,
                                                                      ready_fd=write_fd)),
                                   run_as, env, self._events,
                                   pass_fds=(write_fd,), quiet=program.quiet,
                                   json_lines=program.json_lines, on_event=self._on_event)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        threading.Thread(target=_await_ready, args=(program.name, read_fd, self._events),
                         name=f"ready-{program.name}", daemon=True).start()
        return child

    # -- what the machine asks -----------------------------------------------------------

    def child(self, name: str) -> Child | None:
        return self._current.get(name)

    def children(self) -> list[Child]:
        return list(self._current.values())

    def restartable(self, name: str) -> bool:
        """A restart repairs it, and its budget allows one now."""
        return self.has_restart_policy(name) and self._budgets[name].allowed()

    def has_restart_policy(self, name: str) -> bool:
        """It is restarted when it dies, and what it starts after still runs (a session
        whose X server died cannot be repaired by a new session)."""
        return name in self._budgets and self._after_runs(name)

    def _after_runs(self, name: str) -> bool:
        after = self._programs[name].after if name in self._programs else None
        if after is None:
            return True
        child = self._current.get(after)
        return child is not None and child.proc.poll() is None and not child.retired

    def asked_to_stop(self, name: str, returncode: int) -> bool:
        """Its exit says a person asked the desktop to stop (Logout from the session)."""
        program = self._programs.get(name)
        return program is not None and returncode in program.stop_exits

    def all_running(self) -> bool:
        """Every program of the table has a current child that runs: what HEALTHY needs
        besides the checks (no check looks at the session).  Optional ones (sound) do
        not count."""
        return all(name in self._current and self._current[name].returncode is None
                   and not self._current[name].retired
                   for name, program in self._programs.items() if not program.optional)

    def optional(self, name: str) -> bool:
        """Its death never changes the desktop's state (programs.Program.optional)."""
        program = self._programs.get(name)
        return program is not None and program.optional

    def stale(self, name: str, pid: int) -> bool:
        """The exit of a child that was replaced or stopped on purpose is not news."""
        current = self._current.get(name)
        return current is None or current.pid != pid or current.retired

    # -- repairing -----------------------------------------------------------------------

    def _retire(self, name: str) -> None:
        child = self._current.get(name)
        if child is not None:
            child.retired = True  # whatever it does from now on is expected
            # Hung (its probe failed): stopped.  Dead: what its group left behind goes
            # too (nginx's worker outlives a killed master and keeps the port).
            children.stop([child], deadline=REPLACE_DEADLINE)

    def schedule_restart(self, name: str, reason: str) -> float:
        """Give up the current child and count a restart; return its delay."""
        self._retire(name)
        budget = self._budgets[name]
        delay = budget.record()
        log.warning("restart_scheduled", child=name, delay_s=delay, attempt=budget.used(),
                    of=budget.attempts, window_s=budget.window, reason=reason)
        return delay

    def retry_delay(self, name: str) -> float:
        """With the budget used up: when to try again (--no-exit-on-failure)."""
        delay = max(self._budgets[name].refill_in(), 1.0)
        log.warning("restart_scheduled", child=name, delay_s=round(delay, 3),
                    reason="restart budget used up; retrying later")
        return delay

    def restart(self, name: str, launch: Launch) -> bool:
        """Replace the child by a new one.  A spawn that fails is logged and False: the
        recovery deadline then ends the desktop UNHEALTHY."""
        program = self._programs.get(name)
        if program is None or program.restart is None or name not in self._current:
            return False
        self._retire(name)
        with step("restart_" + name):
            try:
                self._current[name] = self._spawn(program, launch)
            except OSError as exc:
                log.error("restart_failed", child=name, reason=str(exc))
                return False
        return True

    def signal(self, name: str, sig: int) -> bool:
        """Send a running child a signal (nginx: SIGHUP reloads its certificate)."""
        child = self._current.get(name)
        if child is None or child.returncode is not None:
            return False
        try:
            os.kill(child.pid, sig)
        except ProcessLookupError:
            return False
        return True

    # -- stopping ------------------------------------------------------------------------

    def stop_all(self) -> None:
        order = sorted(self._current.values(), key=lambda c: self._programs[c.name].stop_order)
        for child in order:
            child.retired = True
        with step("stop_children", children=[c.name for c in order]):
            children.stop(order)

    def describe(self) -> dict[str, Any]:
        return {
            "children": {c.name: {"pid": c.pid, "running": c.returncode is None,
                                  "returncode": c.returncode}
                         for c in self._current.values()},
            "restarts": {name: {"used": b.used(), "allowed": b.attempts, "window_s": b.window}
                         for name, b in self._budgets.items()},
        }


def _await_ready(name: str, read_fd: int, events: EventQueue) -> None:
    """A `displayfd` program (Xvnc) writes a line to its pipe once it accepts clients."""
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.readline()
    if data.strip():
        events.post(ChildReady(name=name))
