"""The status files a user's script reads: one word, and JSON detail; written atomically."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from whaletopd import status
from whaletopd.files import atomic_write
from whaletopd.status import StatusFile


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_writes_content_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "status"
    atomic_write(target, "HEALTHY\n")
    assert target.read_text() == "HEALTHY\n"
    assert os.listdir(tmp_path) == ["status"]


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o640])
def test_atomic_write_respects_mode(tmp_path: Path, mode: int) -> None:
    target = tmp_path / "secret"
    atomic_write(target, "x\n", mode=mode)
    assert _mode(target) == mode


def test_atomic_write_default_mode_is_world_readable(tmp_path: Path) -> None:
    target = tmp_path / "status"
    atomic_write(target, "x\n")
    assert _mode(target) == 0o644


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_atomic_write_bytes_and_owner(tmp_path: Path) -> None:
    """The VNC password file for Xvnc: binary, and owned by the desktop user."""
    target = tmp_path / "vncauth"
    atomic_write(target, b"\x00\xffsecret", mode=0o600, owner=(65534, 65534))
    assert target.read_bytes() == b"\x00\xffsecret"
    st = target.stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert _mode(target) == 0o600


def test_atomic_write_replaces_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "status"
    target.write_text("STARTING\n")
    os.chmod(target, 0o600)
    atomic_write(target, "STOPPED\n")
    assert target.read_text() == "STOPPED\n"
    assert _mode(target) == 0o644
    assert os.listdir(tmp_path) == ["status"]


def test_atomic_write_failure_keeps_old_content_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "status"
    target.write_text("HEALTHY\n")
    with pytest.raises(TypeError):
        atomic_write(target, 42)  # type: ignore[arg-type]
    assert target.read_text() == "HEALTHY\n"
    assert os.listdir(tmp_path) == ["status"]


def test_atomic_write_readers_see_whole_old_or_whole_new(tmp_path: Path) -> None:
    """The file is replaced, never rewritten in place: an open reader keeps the old text."""
    target = tmp_path / "status"
    atomic_write(target, "STARTING\n")
    with target.open() as reader:
        atomic_write(target, "HEALTHY\n")
        assert reader.read() == "STARTING\n"
    assert target.read_text() == "HEALTHY\n"


def test_status_file_writes_word_and_json(tmp_path: Path) -> None:
    sf = StatusFile(tmp_path / "status", tmp_path / "status.json")
    before = datetime.now(UTC)
    sf.write("HEALTHY", "all probes answer", {"username": "alice", "web_port": 8080})
    after = datetime.now(UTC)

    assert (tmp_path / "status").read_text() == "HEALTHY\n"
    doc = json.loads((tmp_path / "status.json").read_text())
    assert doc["state"] == "HEALTHY"
    assert doc["reason"] == "all probes answer"
    assert doc["pid"] == os.getpid()
    assert doc["username"] == "alice"
    assert doc["web_port"] == 8080
    assert doc["since"].endswith("Z")
    since = datetime.fromisoformat(doc["since"].replace("Z", "+00:00"))
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= since <= after
    assert sorted(os.listdir(tmp_path)) == ["status", "status.json"]
    assert _mode(tmp_path / "status") == 0o644
    assert _mode(tmp_path / "status.json") == 0o644


def test_status_file_overwrites_previous_state(tmp_path: Path) -> None:
    sf = StatusFile(tmp_path / "status", tmp_path / "status.json")
    sf.write("STARTING", "provisioning", {})
    sf.write("FAILED", "useradd failed", {})
    assert status.read(tmp_path / "status", tmp_path / "status.json") == (
        "FAILED", json.loads((tmp_path / "status.json").read_text()))
    assert json.loads((tmp_path / "status.json").read_text())["reason"] == "useradd failed"


def test_read_missing_files(tmp_path: Path) -> None:
    assert status.read(tmp_path / "status", tmp_path / "status.json") == ("", {})


def test_read_word_without_json(tmp_path: Path) -> None:
    (tmp_path / "status").write_text("STARTING\n")
    assert status.read(tmp_path / "status", tmp_path / "status.json") == ("STARTING", {})


def test_read_word_with_corrupt_json(tmp_path: Path) -> None:
    (tmp_path / "status").write_text("HEALTHY\n")
    (tmp_path / "status.json").write_text('{"state": "HEAL')
    assert status.read(tmp_path / "status", tmp_path / "status.json") == ("HEALTHY", {})


def test_read_round_trip(tmp_path: Path) -> None:
    sf = StatusFile(tmp_path / "status", tmp_path / "status.json")
    sf.write("UNHEALTHY", "xvnc exited", {"children": {"xvnc": {"pid": 3}}})
    word, detail = status.read(tmp_path / "status", tmp_path / "status.json")
    assert word == "UNHEALTHY"
    assert detail["reason"] == "xvnc exited"
    assert detail["children"] == {"xvnc": {"pid": 3}}


def test_now_iso_is_utc_milliseconds() -> None:
    stamp = status.now_iso()
    assert stamp.endswith("Z")
    # 2026-01-02T03:04:05.678Z
    assert len(stamp) == len("2026-01-02T03:04:05.678Z")
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 60


def _blocked(tmp_path: Path) -> StatusFile:
    """Status files in a folder nothing can be written in, even by root."""
    (tmp_path / "a-file").write_text("")
    folder = tmp_path / "a-file" / "state"
    return StatusFile(folder / "status", folder / "status.json")


def test_a_folder_never_written_is_unwritable_with_what_to_do(tmp_path: Path) -> None:
    sf = _blocked(tmp_path)
    with capture_logs() as logs:
        sf.write("STARTING", "", {})
        sf.write("FAILED", "", {})
    assert logs == [], "the desktop says it once, as its FAILED reason"
    reason = sf.unwritable()
    assert reason is not None
    folder = tmp_path / "a-file" / "state"
    assert reason == (f"cannot write the status files in {folder} (Not a directory): mount "
                      f"{folder} writable (-v DIR:{folder}, without :ro) or as a tmpfs "
                      f"(--tmpfs {folder})")


def test_a_write_failing_later_warns_once_and_says_when_it_works_again(
        tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    sf = StatusFile(folder / "status", folder / "status.json")
    sf.write("HEALTHY", "", {})
    assert sf.unwritable() is None
    folder.rename(tmp_path / "kept")
    folder.write_text("")
    with capture_logs() as logs:
        for word in ("RECOVERING", "HEALTHY", "RECOVERING"):
            sf.write(word, "", {})
        folder.unlink()
        (tmp_path / "kept").rename(folder)
        sf.write("HEALTHY", "", {})
        sf.write("STOPPING", "", {})
    assert [(e["event"], e["log_level"], e["state"]) for e in logs] == [
        ("status_write_failed", "warning", "RECOVERING"),
        ("status_write_recovered", "info", "HEALTHY")]
    assert logs[0]["reason"] == "Not a directory"
    assert (folder / "status").read_text() == "STOPPING\n"
    assert sf.unwritable() is None
