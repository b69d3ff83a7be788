"""Mounted homes as a real container sees them: provisioning (as root) never cleans
through a link out of the home, never takes over root's files, and never makes a
system group the desktop user's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.conftest import Container

pytestmark = pytest.mark.e2e


def _owners(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Everything in folder (itself too): relative path -> (uid, gid, mode)."""
    return {str(p.relative_to(folder)): (st.st_uid, st.st_gid, st.st_mode)
            for p in (folder, *sorted(folder.rglob("*"))) for st in (p.lstat(),)}


def _one_error(c: Container) -> str:
    errors = [e for e in c.log_lines() if e.get("level") == "error"]
    assert len(errors) == 1, errors
    reason: str = errors[0]["reason"]
    assert reason == c.status_json()["reason"]
    return reason


def test_leftovers_behind_a_link_to_another_volume_survive(desktop, tmp_path):
    home, other = tmp_path / "home", tmp_path / "other"
    home.mkdir()
    other.mkdir()
    (other / "a.pid").write_text("123\n")
    (other / "b.log").write_text("someone else's log\n")
    (home / ".vnc").symlink_to("/other")
    for path in (home, home / ".vnc", other, other / "a.pid", other / "b.log"):
        os.lchown(path, 1234, 1234)
    c = desktop(volumes=(f"{home}:/home/user", f"{other}:/other"))
    c.wait_status("HEALTHY")
    assert (other / "a.pid").read_text() == "123\n"
    assert (other / "b.log").read_text() == "someone else's log\n"
    skipped = [e for e in c.log_lines() if e.get("event") == "session_leftovers_skipped"]
    assert [e["skipped"] for e in skipped] == [
        {"/home/user/.vnc": "a symbolic link to /other"}]


def test_a_root_owned_folder_with_files_is_refused_and_left_alone(desktop, tmp_path):
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    (home / "data" / "report.txt").write_text("root's\n")
    (home / "README").write_text("root's too\n")
    home.chmod(0o750)
    before = _owners(home)
    assert before["."][:2] == (0, 0)
    c = desktop(volumes=(f"{home}:/home/user",))
    assert c.wait_exit() == 2
    assert c.status() == "FAILED\n"
    reason = _one_error(c)
    assert "is root's and not empty" in reason
    assert "--uid and --gid" in reason
    assert _owners(home) == before, "something in root's folder changed"


def test_a_home_of_a_system_group_is_refused(desktop, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine\n")
    for path in (home, home / "notes.txt"):
        os.chown(path, 1234, 42)
    before = _owners(home)
    c = desktop(volumes=(f"{home}:/home/user",))
    assert c.wait_exit() == 2
    assert c.status() == "FAILED\n"
    reason = _one_error(c)
    assert "(gid 42), a system group" in reason
    assert "--gid" in reason
    assert _owners(home) == before
