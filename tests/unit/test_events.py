"""Events: every one names a trigger the machine has, and says why in words."""

from __future__ import annotations

import threading

from whaletopd import events, machine
from whaletopd.events import (
    ChildExited,
    Event,
    EventQueue,
    Failed,
    Launched,
    ProbeFailed,
    ProbePassed,
    RecoveryTimedOut,
    RestartDue,
    Start,
    StartupTimedOut,
    StopRequested,
)


def _event_classes() -> list[type[Event]]:
    """Every event the machine handles (Crashed is the loop's own: it raises it)."""
    return [cls for cls in vars(events).values()
            if isinstance(cls, type) and issubclass(cls, Event)
            and cls not in (Event, events.Crashed)]


def test_event_triggers_are_exactly_the_machines_triggers() -> None:
    """An event without a transition would always be ignored; a trigger without an
    event could never fire."""
    table = {t["trigger"] for t in machine.TRANSITIONS}
    assert {cls.trigger for cls in _event_classes()} == table


def test_each_trigger_has_one_event_class() -> None:
    triggers = [cls.trigger for cls in _event_classes()]
    assert len(triggers) == len(set(triggers))


def test_why_of_a_child_exit() -> None:
    assert ChildExited(name="xvnc", pid=42, returncode=3).why == "xvnc (pid 42) exited with code 3"
    assert (ChildExited(name="session", pid=7, returncode=-9).why
            == "session (pid 7) was killed by signal 9")
    assert ChildExited(name="ws", pid=8, returncode=0).why == "ws (pid 8) exited with code 0"


def test_why_carries_the_reason() -> None:
    assert ProbeFailed(reason="VNC port 5901: refused", part="xvnc").why == (
        "health check failed: VNC port 5901: refused")
    assert Failed(reason="useradd failed").why == "useradd failed"
    assert StopRequested(reason="received SIGTERM").why == "received SIGTERM"
    assert StartupTimedOut(seconds=60.0).why == "not HEALTHY within 60 s of start"
    assert StartupTimedOut(seconds=2.5).why == "not HEALTHY within 2.5 s of start"
    assert RestartDue(name="websockify").why == "restarting websockify"
    assert RecoveryTimedOut(seconds=60.0).why == "not HEALTHY again within 60 s of a restart"


def test_summaries_of_milestones() -> None:
    assert "provisioning" in Start().why
    assert "launched" in Launched().why
    assert "VNC login" in ProbePassed().why


def test_queue_is_fifo() -> None:
    q = EventQueue()
    posted = [Start(), Launched(), ProbePassed()]
    for ev in posted:
        q.post(ev)
    assert [q.get(timeout=1) for _ in posted] == posted


def test_get_on_empty_queue_times_out_with_none() -> None:
    assert EventQueue().get(timeout=0.01) is None


def test_post_from_other_threads_reaches_the_consumer() -> None:
    q = EventQueue()
    threads = [threading.Thread(target=q.post, args=(ChildExited(name=f"c{i}", pid=i,
                                                                 returncode=0),))
               for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = [q.get(timeout=1) for _ in range(20)]
    assert sorted(ev.pid for ev in got if isinstance(ev, ChildExited)) == list(range(20))
    assert q.get(timeout=0.01) is None
