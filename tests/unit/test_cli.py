"""`whaletopd status` (the image's HEALTHCHECK) and the command dispatch."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.unit.helpers import write_stale, write_status
from whaletopd import cli
from whaletopd.paths import Paths

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


def test_status_idle_passes(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """IDLE works as HEALTHY does (a person may connect): Docker must not call it
    unhealthy, nor an orchestrator restart it, while its own stop is coming."""
    reason = "no client connected for 4 minutes: stopping in 1 minutes unless one connects"
    write_status(state_dir, "IDLE", reason)
    assert cli.main(["status"]) == 0
    assert cli.main(["status", "--alive"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [f"IDLE: {reason}"] * 2


def test_idle_is_a_state_of_the_machine() -> None:
    from whaletopd import machine

    assert {machine.HEALTHY, machine.IDLE} == cli.SERVING


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


# -- `whaletopd run` with bad input: FAILED, exit 2, one line ---------------------------

@pytest.fixture
def run_here(paths: Paths, monkeypatch: pytest.MonkeyPatch,
             restore_signals: None) -> Iterator[Paths]:
    """`whaletopd run` as /start.py calls it, writing its status under the test's paths
    (the real ones are the image's), its log lines reset afterwards."""
    from whaletopd import loop

    monkeypatch.setattr(loop, "Paths", lambda: paths)
    for name in [n for n in os.environ if n.startswith(("WHALETOP_", "VNC_", "WEB_", "TLS_"))]:
        monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield paths
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(("argv", "env", "name"), [
    ([], {"TLS_KEY_PASSWORD": b"s\xe9cret".decode("utf-8", "surrogateescape")},
     "TLS_KEY_PASSWORD"),
    (["--web-password-from-env"],
     {"WEB_PASSWORD": b"pass\xffword".decode("utf-8", "surrogateescape")}, "WEB_PASSWORD"),
    ([], {"WHALETOP_USERNAME": b"j\xf6rg".decode("utf-8", "surrogateescape")},
     "WHALETOP_USERNAME"),
    (["--geometry", "0x0"], {}, "--geometry"),
    (["--gid", "42", "--no-sudo"], {}, "--gid"),
    (["--bogus\nflag"], {}, "--bogus"),
    # Refused before anything else is judged (a bad geometry too, so that where the flag
    # was taken, as it once was, the run stops here as well).
    (["--metrics-token", "s3cret-token_0123", "--geometry", "0x0"], {}, "METRICS_TOKEN_FILE"),
], ids=["tls-key-password", "web-password", "username", "geometry", "gid", "newline",
        "metrics-token-flag"])
def test_run_with_bad_input_ends_failed_with_exit_2(
        run_here: Paths, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str], env: dict[str, str], name: str) -> None:
    """Not a traceback and exit 1: the status file says FAILED and why, in one line."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # os.environ takes surrogates back to bytes
    assert cli.main(["run", *argv]) == 2
    assert run_here.status.read_text() == "FAILED\n"
    reason = json.loads(run_here.status_json.read_text())["reason"]
    assert name in reason
    assert reason.isprintable()
    out = capsys.readouterr().out
    assert "s3cret" not in out + reason, "a secret given is never shown"
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(d["event"], d["code"]) for d in lines if d["event"] == "daemon_exit"] == [
        ("daemon_exit", 2)]
    assert not [d for d in lines if d.get("level") in ("error", "critical")
                and d["event"] == "crash"]
