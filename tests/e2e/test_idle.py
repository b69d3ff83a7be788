"""--stop-when-idle in a real container: nobody connected → IDLE with a warning →
STOPPED, exit 0, the home kept; a WebVNC client (noVNC's connection through nginx and
websockify) keeps the desktop up until it leaves."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.e2e import vnc
from tests.e2e.conftest import Container

pytestmark = pytest.mark.e2e

MINUTES = 0.1  # 6 s: the warning halfway (3 s), the stop at 6 s
WEB_PORT = 8080


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.txt").write_text("chapter 1\n")
    for path in (home, home / "thesis.txt"):
        os.chown(path, 1234, 1234)
    return home


def _moves(c: Container) -> list[str]:
    return [e["dest"] for e in c.log_lines()
            if e.get("event") == "transition" and e["source"] != e["dest"]]


def _assert_stopped_for_idleness(c: Container, home: Path) -> None:
    assert c.wait_exit() == 0
    assert c.status() == "STOPPED\n"
    doc = c.status_json()
    assert doc["reason"] == f"no client connected for {MINUTES:g} minutes"
    assert doc["clients"] == 0
    assert _moves(c)[-3:] == ["IDLE", "STOPPING", "STOPPED"]
    # The home is the user's still: files, owner, and what provisioning added.
    assert (home / "thesis.txt").read_text() == "chapter 1\n"
    assert (home / "thesis.txt").stat().st_uid == 1234
    assert (home / ".bashrc").exists()


def test_a_desktop_nobody_uses_warns_then_stops_with_exit_0(desktop, tmp_path):
    home = _home(tmp_path)
    c = desktop(f"--stop-when-idle={MINUTES}", volumes=(f"{home}:/home/user",))
    c.wait_status("IDLE")
    _assert_stopped_for_idleness(c, home)
    assert _moves(c)[-4:] == ["HEALTHY", "IDLE", "STOPPING", "STOPPED"]
    warnings = [e for e in c.log_lines() if e.get("event") == "idle_stop_soon"]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
    assert warnings[0]["minutes_left"] == pytest.approx(MINUTES / 2)
    # Counting clients is quiet: no line for the counts, and only the health checks'
    # own logins went through Xvnc's socket; none was taken for a client.
    assert not [e for e in c.log_lines() if e.get("trigger", "").startswith("clients")]


def test_a_connected_web_client_keeps_the_desktop_until_it_leaves(desktop, tmp_path):
    home = _home(tmp_path)
    c = desktop(f"--stop-when-idle={MINUTES}", volumes=(f"{home}:/home/user",))
    c.wait_status("HEALTHY")
    session = vnc.WebVNC(WEB_PORT, c.password())
    try:
        deadline = time.monotonic() + 20
        while c.status_json().get("clients") != 1:
            assert time.monotonic() < deadline, c.status_json()
            time.sleep(0.05)
        # Well past the timeout with the client connected: still up and HEALTHY (the
        # client may have come after the warning: then IDLE → HEALTHY).
        time.sleep(MINUTES * 60 + 2)
        assert c.running()
        assert c.status() == "HEALTHY\n"
        assert "STOPPING" not in _moves(c)
        session.framebuffer_update()  # the session still works
    finally:
        session.close()
    _assert_stopped_for_idleness(c, home)
