"""The one loop: takes each event, queued or due, and fires the machine's trigger.

Time lives here too: the loop waits on the queue only until the next deadline, and a
due deadline's event is dispatched like any other.  Nothing else calls a trigger, so
the machine needs no locks.
"""

from __future__ import annotations

import time

from transitions import MachineError

from whaletopd import logs, machine, signals
from whaletopd.config import Config
from whaletopd.deadlines import Deadlines
from whaletopd.desktop import Desktop
from whaletopd.events import Crashed, Event, EventQueue, Failed, Start
from whaletopd.paths import Paths

log = logs.get("whaletopd.loop")


def dispatch(desktop: Desktop, event: Event) -> None:
    if isinstance(event, Crashed):
        raise event.error
    try:
        getattr(desktop, event.trigger)(event=event)
    except MachineError:
        # Expected: a child's exit while STOPPING, a probe result after FAILED, ...
        log.debug("event_ignored", trigger=event.trigger, state=desktop.state)


def next_event(events: EventQueue, deadlines: Deadlines,
               limit: float | None = None) -> Event | None:
    """A due deadline first (a busy queue must not starve time), else the next event
    posted before the next deadline (or `limit` seconds); None when that came first."""
    due = deadlines.pop_due()
    if due is not None:
        return due
    timeout = deadlines.timeout()
    if limit is not None:
        timeout = limit if timeout is None else min(timeout, limit)
    return events.get(timeout=timeout)


def run_until_exit(desktop: Desktop) -> int:
    while desktop.exit_code is None:
        event = next_event(desktop.events, desktop.deadlines)
        if event is not None:
            dispatch(desktop, event)
    return desktop.exit_code


def run(config: Config, config_error: str | None = None,
        desktop: Desktop | None = None) -> int:
    """Run the desktop until a final state; return the daemon's exit code.  `desktop`:
    one built elsewhere (tests), with its own paths, queue and children."""
    if desktop is None:
        desktop = Desktop(config, EventQueue(), Deadlines(), Paths())
    machine.build(desktop)
    signals.install(desktop.events)
    desktop.events.post(Start() if config_error is None else Failed(reason=config_error))
    t0 = time.monotonic()
    code = run_until_exit(desktop)
    log.info("daemon_exit", code=code, state=desktop.state, reason=desktop.reason,
             uptime_s=round(time.monotonic() - t0, 3))
    return code
