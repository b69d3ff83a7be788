"""`docker stop` and Ctrl-C become StopRequested events, even during start-up."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import pytest

from whaletopd import signals
from whaletopd.events import EventQueue, StopRequested


def _to_main_thread(sig: signal.Signals) -> None:
    # Thread-directed, so no other (test) thread can take it.
    signal.pthread_kill(threading.main_thread().ident or 0, sig)


@pytest.mark.parametrize("sig", signals.STOP_SIGNALS, ids=lambda s: s.name)
def test_stop_signal_posts_stop_requested(sig: signal.Signals, restore_signals: None) -> None:
    q = EventQueue()
    signals.install(q)
    _to_main_thread(sig)
    assert q.get(timeout=5) == StopRequested(reason=f"received {sig.name}")


def test_signal_held_during_startup_is_delivered_once_installed(restore_signals: None) -> None:
    """A `docker stop` that arrives before the handlers exist must not be lost (nor kill
    the daemon without a STOPPED status)."""
    early: list[int] = []

    def too_early(signum: int, frame: FrameType | None) -> None:
        early.append(signum)

    signal.signal(signal.SIGTERM, too_early)  # stands in for the default: dying
    signals.hold()
    _to_main_thread(signal.SIGTERM)
    assert signal.SIGTERM in signal.sigpending()
    assert early == []

    q = EventQueue()
    signals.install(q)
    assert q.get(timeout=5) == StopRequested(reason="received SIGTERM")
    assert early == []
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
