"""Signals become events.  tini (PID 1) forwards `docker stop`'s SIGTERM to us."""

from __future__ import annotations

import signal
from types import FrameType

from whaletopd.events import EventQueue, StopRequested

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def hold() -> None:
    """Keep stop signals pending: `docker stop` may arrive before install() ran (while
    the heavier modules are imported), and must then still become an event."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def install(events: EventQueue) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        events.post(StopRequested(reason=f"received {signal.Signals(signum).name}"))

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    # Pending ones are delivered now, to the handler; children inherit no blocked mask.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
