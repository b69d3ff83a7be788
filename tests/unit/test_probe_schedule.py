"""Which rounds the prober runs: full ones (a VNC login through the front door) at
start, after a reset, on a slow timer and when a cheap check fails; light ones (the X
server answers, the web port accepts) in between.  The cheap checks run against real
sockets here: a small X server stand-in that answers a connection setup, and one that
accepts but never answers (a hung server's backlog)."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import pytest

from whaletopd import probes
from whaletopd.events import EventQueue, ProbeFailed, ProbePassed
from whaletopd.probes import Probe, ProbeError, Prober

from .helpers import wait_for
from .test_probes import Script, _drain, _join_probers

TIMEOUT = 2.0


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _prober(full: list[Probe], light: list[Probe], clock: Clock,
            q: EventQueue) -> Prober:
    return Prober(full, q, interval=0.001, light=light, full_interval=300.0, clock=clock)


def _stopped(prober: Prober) -> None:
    prober.stop()
    _join_probers()


def test_light_rounds_run_between_full_ones_until_the_full_interval_passes() -> None:
    q, clock = EventQueue(), Clock()
    full, light = Script("p"), Script("p")
    prober = _prober([Probe("full", "websockify", full)], [Probe("light", "xvnc", light)],
                     clock, q)
    prober.start()
    try:
        assert q.get(timeout=10) == ProbePassed()
        wait_for(lambda: light.calls > 20, "light rounds")
        assert full.calls == 1  # the clock has not moved: no full round due
        clock.now += 299.0
        wait_for(lambda: light.calls > 40, "more light rounds")
        assert full.calls == 1
        clock.now += 1.0
        wait_for(lambda: full.calls == 2, "the full round, once the interval passed")
        calls = light.calls
        wait_for(lambda: light.calls > calls + 20, "light rounds again")
        assert full.calls == 2
    finally:
        _stopped(prober)
    assert _drain(q) == []  # nothing is news while it stays healthy


def test_full_rounds_until_the_first_pass() -> None:
    """Starting, nothing cheap proves the user's path: only full rounds, until one passes."""
    q, clock = EventQueue(), Clock()
    full, light = Script("fffffp"), Script("p")
    prober = _prober([Probe("full", "websockify", full)], [Probe("light", "xvnc", light)],
                     clock, q)
    prober.start()
    try:
        assert q.get(timeout=10) == ProbePassed()
        assert prober.rounds["full"] == 6
        wait_for(lambda: light.calls > 0, "a light round after the pass")
    finally:
        _stopped(prober)


def test_a_failed_light_check_runs_the_full_round_which_judges() -> None:
    """A cheap check's failure is a question, not a verdict: a passing full round
    keeps the desktop HEALTHY, however often the cheap one fails."""
    q, clock = EventQueue(), Clock()
    full, light = Script("p"), Script("pf")  # light fails from its second call on
    prober = _prober([Probe("full", "websockify", full)], [Probe("light", "xvnc", light)],
                     clock, q)
    prober.start()
    try:
        assert q.get(timeout=10) == ProbePassed()
        wait_for(lambda: full.calls > 10, "a full round after each failed light one")
    finally:
        _stopped(prober)
    assert _drain(q) == []
    assert prober.rounds["full"] >= light.calls - 1  # every failed light round went on


def test_the_full_round_blames_and_two_in_a_row_are_a_verdict() -> None:
    q, clock = EventQueue(), Clock()
    full, light = Script("pf"), Script("pf")
    prober = _prober([Probe("full", "websockify", full)], [Probe("light", "xvnc", light)],
                     clock, q)
    prober.start()
    try:
        assert q.get(timeout=10) == ProbePassed()
        # The light check (xvnc's) failed, but the full round found websockify at fault.
        assert q.get(timeout=10) == ProbeFailed(reason="failure at call 3", part="websockify")
    finally:
        _stopped(prober)


def test_a_failed_full_round_is_confirmed_by_the_next_full_one() -> None:
    """A server that hangs behind nginx while the cheap checks pass (websockify, the
    sign-in service): the full round due on the slow timer fails, and the next round is
    full again, not a light one whose pass would forget the failure (then no hang
    behind nginx would ever be a verdict)."""
    q, clock = EventQueue(), Clock()
    full, light = Script("pf"), Script("p")
    prober = _prober([Probe("full", "websockify", full)], [Probe("light", "xvnc", light)],
                     clock, q)
    prober.start()
    try:
        assert q.get(timeout=10) == ProbePassed()
        wait_for(lambda: light.calls > 5, "light rounds")
        clock.now += 300.0
        assert q.get(timeout=10) == ProbeFailed(reason="failure at call 3", part="websockify")
        assert full.calls >= 3
    finally:
        _stopped(prober)


def test_a_reset_proves_the_repair_with_a_full_round() -> None:
    q, clock = EventQueue(), Clock()
    full, light = Script("p"), Script("p")
    prober = _prober([Probe("full", "websockify", full)], [Probe("light", "xvnc", light)],
                     clock, q)
    prober.start()
    try:
        assert q.get(timeout=10) == ProbePassed(generation=0)
        wait_for(lambda: light.calls > 5, "light rounds")
        prober.reset()
        assert q.get(timeout=10) == ProbePassed(generation=1)
        assert full.calls == 2  # the clock did not move: the reset asked for it
    finally:
        _stopped(prober)


def test_without_light_probes_every_round_is_full() -> None:
    q, clock = EventQueue(), Clock()
    full = Script("p")
    prober = _prober([Probe("full", "websockify", full)], [], clock, q)
    prober.start()
    try:
        wait_for(lambda: full.calls > 5, "full rounds")
        assert prober.rounds["light"] == 0
    finally:
        _stopped(prober)


# -- the cheap checks, on real sockets ----------------------------------------------------

class XStandIn:
    """Accepts X connections on a UNIX socket and answers each setup request with the
    given status byte (0 Failed, 1 Success, 2 Authenticate), or not at all (None)."""

    def __init__(self, path: Path, status: int | None) -> None:
        self.path = path
        self.requests: list[bytes] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(4)
        self._status = status
        self._held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self._held.append(conn)
            self.requests.append(conn.recv(12))
            if self._status is not None:
                conn.sendall(struct.pack("<BBHHH", self._status, 0, 11, 0, 0))

    def close(self) -> None:
        self._server.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def x_path(tmp_path: Path) -> Path:
    return tmp_path / "X1"


@pytest.mark.parametrize("status", [0, 1, 2])
def test_x_answers_whatever_the_server_decides(x_path: Path, status: int) -> None:
    server = XStandIn(x_path, status)
    try:
        probes.x_answers(str(x_path), TIMEOUT)
    finally:
        server.close()
    # A little-endian X11.0 connection setup without authorization.
    assert server.requests == [b"l\x00\x0b\x00\x00\x00\x00\x00\x00\x00\x00\x00"]


def test_x_answers_fails_on_a_server_that_accepts_but_never_answers(x_path: Path) -> None:
    """A hung X server's socket still accepts (the kernel's backlog): only an answer
    proves its loop runs."""
    server = XStandIn(x_path, None)
    try:
        with pytest.raises(ProbeError, match=f"X display {x_path}: timed out"):
            probes.x_answers(str(x_path), 0.2)
    finally:
        server.close()


def test_x_answers_fails_on_a_missing_display(x_path: Path) -> None:
    with pytest.raises(ProbeError, match=f"X display {x_path}"):
        probes.x_answers(str(x_path), TIMEOUT)


def test_x_answers_fails_on_something_else(x_path: Path) -> None:
    server = XStandIn(x_path, 82)  # "R" of an RFB banner
    try:
        with pytest.raises(ProbeError, match="not an X server"):
            probes.x_answers(str(x_path), TIMEOUT)
    finally:
        server.close()


def test_port_accepts() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        probes.port_accepts("127.0.0.1", server.getsockname()[1], TIMEOUT)
        port = server.getsockname()[1]
    with pytest.raises(ProbeError, match=f"web port {port}"):
        probes.port_accepts("127.0.0.1", port, TIMEOUT)


def test_light_probes_point_at_xvnc_and_nginx(tmp_path: Path) -> None:
    from whaletopd.programs import PROGRAMS, blame

    target = probes.Target(8080, str(tmp_path / "X1"), tmp_path / "vnc.sock",
                           tmp_path / "websockify.sock", "s3cretpw", TIMEOUT, "token")
    assert [(p.name, p.part) for p in probes.light_probes(target, blame(PROGRAMS))] == [
        ("x_answers", "xvnc"), ("web_port", "nginx")]
