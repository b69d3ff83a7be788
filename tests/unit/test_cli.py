"""`whaletopd status` (the image's HEALTHCHECK) and the command dispatch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.helpers import write_stale, write_status
from whaletopd import cli

HEALTHY_REASON = "X display, VNC login and noVNC page answer"


def test_status_without_files_is_unknown_and_fails(state_dir: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status"]) == 1
    assert capsys.readouterr().out.strip() == "UNKNOWN"


def test_status_healthy_with_running_daemon_passes(state_dir: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    write_status(state_dir, "HEALTHY", "all probes answer")
    assert cli.main(["status"]) == 0
    assert capsys.readouterr().out.strip() == "HEALTHY: all probes answer"


@pytest.mark.parametrize("word", ["STARTING", "STARTED", "RECOVERING", "UNHEALTHY",
                                  "STOPPING", "STOPPED", "FAILED"])
def test_status_other_than_healthy_fails(state_dir: Path, word: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    write_status(state_dir, word, "some reason")
    assert cli.main(["status"]) == 1
    assert capsys.readouterr().out.strip() == f"{word}: some reason"


def test_status_without_reason_prints_the_word_alone(state_dir: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    write_status(state_dir, "STARTING")
    assert cli.main(["status"]) == 1
    assert capsys.readouterr().out == "STARTING\n"


def test_status_healthy_but_daemon_gone_fails(state_dir: Path) -> None:
    """A status file left by a daemon that died (a volume reused) is no health."""
    write_stale(state_dir, "HEALTHY", HEALTHY_REASON)
    assert cli.main(["status"]) == 1


def test_status_stale_is_said_in_plain_output(state_dir: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Printing "HEALTHY: ..." while exiting 1 would send an operator the wrong way:
    the plain output must say that the daemon is not running."""
    pid = write_stale(state_dir, "HEALTHY", HEALTHY_REASON)
    cli.main(["status"])
    assert f"whaletopd (pid {pid}) is not running" in capsys.readouterr().out


def test_status_json(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_status(state_dir, "HEALTHY", "all probes answer", username="alice", web_port=8080)
    assert cli.main(["status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"] == "HEALTHY"
    assert doc["reason"] == "all probes answer"
    assert doc["username"] == "alice"
    assert "stale" not in doc


def test_status_json_marks_stale(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pid = write_stale(state_dir, "HEALTHY", HEALTHY_REASON)
    assert cli.main(["status", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"] == "HEALTHY"
    assert doc["stale"] == f"whaletopd (pid {pid}) is not running"


def test_status_json_without_files(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {"state": ""}


def test_status_rejects_unknown_flags(state_dir: Path) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["status", "--bogus"])
    assert info.value.code == 2


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err
    assert "status" in err
