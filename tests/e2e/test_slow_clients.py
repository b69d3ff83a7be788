"""Floods of half-open connections from one address change nothing: Debian's
slowhttptest holds 2,000 connections open on the web port, either sending a request's
header a line at a time (slowloris, -H) or a body a few bytes at a time (-B), while
whaletopd runs its full health checks every second.  The desktop stays HEALTHY (the
status file, read every 20 ms, and the transitions in the log), nginx is never
restarted, a session connected before the flood keeps getting the screen's changes,
and another address (127.0.0.2: with host networking the flood comes from 127.0.0.1)
opens the page and logs in to the desktop during the flood.

2,000 is more than the 1,024 connections nginx had; on that image a full check is
refused (`Connection reset by peer`) and the desktop goes RECOVERING.
"""

from __future__ import annotations

import http.client
import subprocess
import time

import pytest

from tests import tools
from tests.e2e import vnc
from tests.e2e.conftest import Container, docker
from tests.e2e.test_front_door import HealthWatch, assert_stayed_healthy, children_pids
from whaletopd.probes import websocket_login

pytestmark = [pytest.mark.e2e,
              tools.SLOWHTTPTEST.needed, tools.SS.needed]

PORT = 8080
OTHER = "127.0.0.2"  # another client address, still the loopback
CONNECTIONS = 2000
SECONDS = 40


def established() -> int:
    """TCP connections to the web port now open on this machine (the flood's)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( dport = :{PORT} )"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    return len(out.splitlines())


def move_pointer(c: Container, step: int) -> None:
    """Something changes on the screen: the pointer, which Xvnc draws into the picture
    of a client that cannot draw it (this one asks for no cursor encoding)."""
    docker("exec", "-u", "user", "-e", "DISPLAY=:1", c.name, "xdotool", "mousemove",
           str(100 + 40 * (step % 10)), str(100 + 30 * (step % 7)))


def page_from(source: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10,
                                      source_address=(source, 0))
    try:
        conn.request("GET", "/vnc.html")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["-H", "-B"], ids=["slowloris", "slow-body"])
def test_a_slow_flood_from_one_address_changes_nothing(desktop, mode, tmp_path):
    c = desktop("--probe-interval=1", "--probe-full-interval=1")
    c.wait_status("HEALTHY")
    nginx = children_pids(c)["nginx"]
    password = c.password()
    session = vnc.WebVNC(PORT, password, timeout=10)
    session.framebuffer_update()
    most = 0
    missed: list[str] = []  # what went wrong for the session or the other address
    report = tmp_path / "slowhttptest.txt"
    with HealthWatch(c) as watch, report.open("w") as out:
        flood = subprocess.Popen(
            ["slowhttptest", mode, "-c", str(CONNECTIONS), "-r", "200", "-i", "3",
             "-l", str(SECONDS), "-u", f"http://127.0.0.1:{PORT}/vnc.html"],
            stdout=out, stderr=subprocess.STDOUT)
        try:
            step = 0
            started = time.monotonic()
            while flood.poll() is None and time.monotonic() - started < SECONDS + 30:
                step += 1
                most = max(most, established())
                missed += during_the_flood(c, session, password, step)
                time.sleep(0.5)
        finally:
            if flood.poll() is None:
                flood.terminate()
            flood.wait(timeout=30)
        time.sleep(3)  # three rounds of full checks after the flood
    said = report.read_text(errors="replace")[-1500:]
    # As many as nginx once had room for (1,024, which then capped what stayed open).
    assert most >= 1000, f"the flood held {most} connections at most: {said}"
    assert_stayed_healthy(c, watch)
    assert children_pids(c)["nginx"] == nginx, "nginx was restarted"
    started = [e for e in c.log_lines() if e.get("event") == "child_started"
               and e.get("child") == "nginx"]
    assert len(started) == 1, started
    assert not [e for e in c.log_lines() if e.get("event") == "restart_scheduled"]
    assert missed == []
    # Still connected, still seeing changes; the machine's own address is served too.
    move_pointer(c, 0)
    assert session.screen_changes() >= 1
    session.close()
    assert websocket_login("127.0.0.1", PORT, password, timeout=5).startswith("RFB")


def during_the_flood(c: Container, session: vnc.WebVNC, password: str,
                     step: int) -> list[str]:
    """The connected session sees the screen change (a liveness timeout: its socket's
    10 s), and another address opens the page and logs in as a new browser would; what
    failed, if anything."""
    missed = []
    try:
        move_pointer(c, step)
        if session.screen_changes() < 1:
            missed.append("an update without rectangles")
    except OSError as exc:
        missed.append(f"the session: {exc!r}")
    try:
        if (status := page_from(OTHER)) != 200:
            missed.append(f"the page for {OTHER}: {status}")
        other = vnc.WebVNC(PORT, password, timeout=10, source=OTHER)
        other.framebuffer_update()
        other.close()
    except OSError as exc:
        missed.append(f"{OTHER}: {exc!r}")
    return missed
