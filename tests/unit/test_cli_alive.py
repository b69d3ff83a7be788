"""`whaletopd status --alive`: the liveness probe of deploy/kubernetes.

It must fail only when the desktop is finished (a terminal state, or a status left by a
daemon that is gone), never while it is merely starting, recovering or reloading TLS:
a liveness probe that fails kills the container, and with it the user's windows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.helpers import write_stale, write_status
from whaletopd import cli, machine

ALIVE = ["STARTING", "STARTED", "HEALTHY", "IDLE", "RECOVERING", "RELOADING_TLS", "STOPPING"]


def test_every_written_state_is_either_alive_or_terminal() -> None:
    """A state added to the machine must be placed on one side deliberately."""
    written = set(machine.STATES) - {machine.INIT}  # INIT is never written
    assert set(ALIVE) | cli.TERMINAL == written
    assert not set(ALIVE) & cli.TERMINAL


def test_terminal_states_are_those_the_daemon_exits_from() -> None:
    assert set(machine.EXIT_CODES) == cli.TERMINAL


@pytest.mark.parametrize("word", ALIVE)
def test_alive_passes_while_starting_recovering_or_healthy(
        state_dir: Path, word: str, capsys: pytest.CaptureFixture[str]) -> None:
    write_status(state_dir, word, "some reason")
    assert cli.main(["status", "--alive"]) == 0
    assert capsys.readouterr().out.strip() == f"{word}: some reason"


@pytest.mark.parametrize("word", sorted(cli.TERMINAL))
def test_alive_fails_on_terminal_states(state_dir: Path, word: str) -> None:
    write_status(state_dir, word, "Xvnc exited", exit_on_failure=True)
    assert cli.main(["status", "--alive"]) == 1


def test_unhealthy_waiting_for_repair_is_alive(state_dir: Path) -> None:
    """--no-exit-on-failure: UNHEALTHY keeps the desktop for recovery; don't kill it."""
    write_status(state_dir, "UNHEALTHY", "xvnc exited", exit_on_failure=False)
    assert cli.main(["status", "--alive"]) == 0
    assert cli.main(["status"]) == 1


@pytest.mark.parametrize("word", ["STARTING", "HEALTHY"])
def test_alive_fails_when_the_daemon_is_gone(state_dir: Path, word: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    pid = write_stale(state_dir, word, exit_on_failure=True)
    assert cli.main(["status", "--alive"]) == 1
    assert f"whaletopd (pid {pid}) is not running" in capsys.readouterr().out


def test_alive_passes_before_the_first_status_is_written(
        state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The daemon writes STARTING within moments of starting; until then it is starting."""
    assert cli.main(["status", "--alive"]) == 0
    assert capsys.readouterr().out.strip() == "UNKNOWN"


def test_alive_with_json_prints_the_detail(state_dir: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    write_status(state_dir, "RECOVERING", "websockify exited")
    assert cli.main(["status", "--alive", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "RECOVERING"


@pytest.mark.parametrize(("word", "code"), [("HEALTHY", 0), ("IDLE", 0), ("STARTING", 1),
                                           ("FAILED", 1)])
def test_plain_status_is_unchanged(state_dir: Path, word: str, code: int) -> None:
    """Readiness and the image's HEALTHCHECK mean a user can connect now: HEALTHY, or
    IDLE (nobody is, and --stop-when-idle's stop is coming)."""
    write_status(state_dir, word)
    assert cli.main(["status"]) == code


def test_alive_is_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["status", "--help"])
    out = capsys.readouterr().out
    assert "--alive" in out
    assert "FAILED, STOPPED, UNHEALTHY" in out
