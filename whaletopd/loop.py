"""The one loop: takes events off the queue and fires the machine's triggers.

Nothing else calls a trigger, so the machine needs no locks.
"""

from __future__ import annotations

import time

from transitions import MachineError

from whaletopd import logs, machine, signals
from whaletopd.config import Config
from whaletopd.desktop import Desktop
from whaletopd.events import Event, EventQueue, Failed, Start
from whaletopd.paths import Paths

log = logs.get("whaletopd.loop")


def dispatch(desktop: Desktop, event: Event) -> None:
    try:
        getattr(desktop, event.trigger)(event=event)
    except MachineError:
        # Expected: a child's exit while STOPPING, a probe result after FAILED, ...
        log.debug("event_ignored", trigger=event.trigger, state=desktop.state)


def run(config: Config, config_error: str | None = None, paths: Paths | None = None,
        events: EventQueue | None = None) -> int:
    """Run the desktop until a final state; return the daemon's exit code."""
    queue = events or EventQueue()
    desktop = Desktop(config, queue, paths)
    machine.build(desktop)
    signals.install(queue)
    queue.post(Start() if config_error is None else Failed(reason=config_error))
    t0 = time.monotonic()
    while desktop.exit_code is None:
        event = queue.get()
        if event is not None:
            dispatch(desktop, event)
    log.info("daemon_exit", code=desktop.exit_code, state=desktop.state, reason=desktop.reason,
             uptime_s=round(time.monotonic() - t0, 3))
    return desktop.exit_code
