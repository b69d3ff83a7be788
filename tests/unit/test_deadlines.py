"""Named deadlines kept by the loop, on a fake clock: nothing here waits for real time."""

from __future__ import annotations

import pytest

from whaletopd.deadlines import Deadlines
from whaletopd.events import CertificateCheckDue, RestartDue, StartupTimedOut

from .helpers import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def d(clock: FakeClock) -> Deadlines:
    return Deadlines(clock)


def _drain(d: Deadlines) -> list[object]:
    """Every event due now, in the order pop_due() hands them out."""
    out: list[object] = []
    while (event := d.pop_due()) is not None:
        out.append(event)
    return out


def test_nothing_armed(d: Deadlines) -> None:
    assert d.timeout() is None
    assert d.pop_due() is None
    assert d.names() == []
    assert not d.armed("startup")


def test_a_deadline_fires_once_when_due_and_not_before(d: Deadlines, clock: FakeClock) -> None:
    d.arm("startup", 5.0, StartupTimedOut(seconds=5.0))
    assert d.armed("startup")
    assert d.timeout() == pytest.approx(5.0)
    clock.advance(4.999)
    assert d.pop_due() is None, "popped before it was due"
    assert d.armed("startup")
    assert d.timeout() == pytest.approx(0.001)
    clock.advance(0.001)  # exactly due
    assert d.pop_due() == StartupTimedOut(seconds=5.0)
    assert not d.armed("startup"), "a deadline that fired is forgotten"
    assert d.timeout() is None
    clock.advance(100)
    assert d.pop_due() is None, "fired twice"


def test_timeout_is_zero_not_negative_when_overdue(d: Deadlines, clock: FakeClock) -> None:
    d.arm("startup", 1.0, StartupTimedOut(seconds=1.0))
    clock.advance(30)
    assert d.timeout() == 0.0


def test_a_negative_delay_is_due_at_once(d: Deadlines) -> None:
    d.arm("restart:websockify", -3.0, RestartDue(name="websockify"))
    assert d.timeout() == 0.0
    assert d.pop_due() == RestartDue(name="websockify")


def test_timeout_is_that_of_the_earliest_deadline(d: Deadlines, clock: FakeClock) -> None:
    d.arm("late", 50.0, StartupTimedOut(seconds=50.0))
    d.arm("early", 2.0, RestartDue(name="websockify"))
    d.arm("middle", 10.0, CertificateCheckDue())
    assert d.timeout() == pytest.approx(2.0)
    clock.advance(2.0)
    assert d.pop_due() == RestartDue(name="websockify")
    assert d.timeout() == pytest.approx(8.0)


def test_re_arming_later_replaces_and_the_old_one_never_fires(d: Deadlines,
                                                               clock: FakeClock) -> None:
    d.arm("recovery", 1.0, StartupTimedOut(seconds=1.0))
    d.arm("recovery", 5.0, StartupTimedOut(seconds=5.0))
    assert d.names() == ["recovery"]
    assert d.timeout() == pytest.approx(5.0), "the replaced deadline still counts"
    clock.advance(1.0)
    assert d.pop_due() is None, "the replaced deadline fired late"
    clock.advance(4.0)
    assert _drain(d) == [StartupTimedOut(seconds=5.0)]


def test_re_arming_earlier_replaces_and_the_old_one_never_fires(d: Deadlines,
                                                                 clock: FakeClock) -> None:
    d.arm("recovery", 5.0, StartupTimedOut(seconds=5.0))
    d.arm("recovery", 1.0, StartupTimedOut(seconds=1.0))
    clock.advance(1.0)
    assert _drain(d) == [StartupTimedOut(seconds=1.0)]
    clock.advance(10.0)
    assert d.pop_due() is None, "the replaced deadline fired late"
    assert d.timeout() is None


def test_re_arming_with_the_same_event_fires_once(d: Deadlines, clock: FakeClock) -> None:
    for _ in range(3):
        d.arm("restart:websockify", 1.0, RestartDue(name="websockify"))
    clock.advance(1.0)
    assert _drain(d) == [RestartDue(name="websockify")]


def test_cancel_forgets_and_the_deadline_never_fires(d: Deadlines, clock: FakeClock) -> None:
    d.arm("startup", 1.0, StartupTimedOut(seconds=1.0))
    d.arm("recovery", 2.0, StartupTimedOut(seconds=2.0))
    d.cancel("startup", "recovery", "never-armed")
    assert d.names() == []
    assert not d.armed("startup")
    assert d.timeout() is None, "a cancelled deadline still sets the loop's timeout"
    clock.advance(10.0)
    assert d.pop_due() is None, "a cancelled deadline fired"


def test_cancel_leaves_the_others(d: Deadlines, clock: FakeClock) -> None:
    d.arm("startup", 1.0, StartupTimedOut(seconds=1.0))
    d.arm("certificate_check", 3.0, CertificateCheckDue())
    d.cancel("startup")
    assert d.names() == ["certificate_check"]
    assert d.timeout() == pytest.approx(3.0)
    clock.advance(3.0)
    assert _drain(d) == [CertificateCheckDue()]


def test_cancelled_then_re_armed_fires_only_at_the_new_time(d: Deadlines,
                                                             clock: FakeClock) -> None:
    d.arm("restart:websockify", 1.0, RestartDue(name="old"))
    d.cancel("restart:websockify")
    d.arm("restart:websockify", 3.0, RestartDue(name="new"))
    clock.advance(1.0)
    assert d.pop_due() is None, "the cancelled deadline fired under its reused name"
    clock.advance(2.0)
    assert _drain(d) == [RestartDue(name="new")]
    clock.advance(10.0)
    assert d.pop_due() is None


def test_due_events_come_in_due_order_then_arming_order(d: Deadlines,
                                                         clock: FakeClock) -> None:
    d.arm("c", 3.0, RestartDue(name="c"))
    d.arm("a", 1.0, RestartDue(name="a"))
    d.arm("b2", 2.0, RestartDue(name="b2"))
    d.arm("b1", 2.0, RestartDue(name="b1"))  # due with b2, armed after it
    clock.advance(2.5)
    assert _drain(d) == [RestartDue(name="a"), RestartDue(name="b2"), RestartDue(name="b1")]
    assert d.names() == ["c"]
    clock.advance(0.5)
    assert _drain(d) == [RestartDue(name="c")]


def test_pop_due_hands_out_one_event_per_call(d: Deadlines, clock: FakeClock) -> None:
    d.arm("a", 1.0, RestartDue(name="a"))
    d.arm("b", 1.0, RestartDue(name="b"))
    clock.advance(1.0)
    assert d.pop_due() == RestartDue(name="a")
    assert d.names() == ["b"]
    assert d.timeout() == 0.0


def test_cancel_all_forgets_everything(d: Deadlines, clock: FakeClock) -> None:
    for name, seconds in (("startup", 1.0), ("recovery", 2.0), ("certificate_check", 0.0)):
        d.arm(name, seconds, StartupTimedOut(seconds=seconds))
    d.cancel_all()
    assert d.names() == []
    assert d.timeout() is None
    clock.advance(100.0)
    assert d.pop_due() is None
    d.arm("startup", 1.0, StartupTimedOut(seconds=1.0))  # still usable afterwards
    clock.advance(1.0)
    assert _drain(d) == [StartupTimedOut(seconds=1.0)]


def test_names_are_sorted(d: Deadlines) -> None:
    for name in ("startup", "certificate_check", "recovery"):
        d.arm(name, 1.0, CertificateCheckDue())
    assert d.names() == ["certificate_check", "recovery", "startup"]


def test_the_real_clock_is_the_default() -> None:
    d = Deadlines()
    d.arm("x", 3600.0, CertificateCheckDue())
    timeout = d.timeout()
    assert timeout is not None
    assert 3500.0 < timeout <= 3600.0
