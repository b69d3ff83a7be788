"""Signals become events.  tini (PID 1) forwards `docker stop`'s SIGTERM to us."""

from __future__ import annotations

import signal
from types import FrameType

from whaletopd.events import EventQueue, StopRequested

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def install(events: EventQueue) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        events.post(StopRequested(reason=f"received {signal.Signals(signum).name}"))

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
