"""The image's HEALTHCHECK (docker/healthcheck, a shell script: no Python per check) and
the heartbeat it reads: the status word, and the word file's age."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from whaletopd.status import StatusFile

from .helpers import write_status

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "healthcheck"


def _check(state: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", str(SCRIPT)], capture_output=True, text=True,
                          check=False, timeout=30,
                          env={"PATH": os.environ["PATH"], "WHALETOP_STATE_DIR": str(state),
                               **env})


def _age(state: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(state / "status", (then, then))


@pytest.mark.parametrize("word", ["HEALTHY", "IDLE"])
def test_a_fresh_serving_word_is_healthy(tmp_path: Path, word: str) -> None:
    write_status(tmp_path, word)
    result = _check(tmp_path)
    assert (result.returncode, result.stdout) == (0, f"{word}\n")


@pytest.mark.parametrize("word", ["STARTING", "STARTED", "RECOVERING", "UNHEALTHY",
                                  "STOPPING", "STOPPED", "FAILED"])
def test_other_words_are_unhealthy(tmp_path: Path, word: str) -> None:
    write_status(tmp_path, word, "why")
    result = _check(tmp_path)
    assert result.returncode == 1
    assert result.stdout.startswith(word)


def test_no_status_yet_is_unhealthy(tmp_path: Path) -> None:
    result = _check(tmp_path)
    assert (result.returncode, result.stdout) == (1, "no status yet\n")


def test_a_healthy_word_nobody_refreshed_is_unhealthy(tmp_path: Path) -> None:
    """A hung or stopped daemon leaves HEALTHY behind: its age gives it away."""
    write_status(tmp_path, "HEALTHY")
    _age(tmp_path, 31)
    result = _check(tmp_path)
    assert result.returncode == 1
    assert "not refreshed for over 30 s: whaletopd is hung or stopped" in result.stdout
    _age(tmp_path, 20)  # within the bound
    assert _check(tmp_path).returncode == 0


def test_the_staleness_bound_can_be_set(tmp_path: Path) -> None:
    write_status(tmp_path, "HEALTHY")
    _age(tmp_path, 100)
    assert _check(tmp_path, WHALETOP_HEALTH_STALE_AFTER="120").returncode == 0
    assert _check(tmp_path, WHALETOP_HEALTH_STALE_AFTER="90").returncode == 1


def test_the_daemons_heartbeat_makes_a_stale_word_fresh(tmp_path: Path) -> None:
    status = StatusFile(tmp_path / "status", tmp_path / "status.json")
    status.write("HEALTHY", "", {})
    _age(tmp_path, 3600)
    assert _check(tmp_path).returncode == 1
    status.touch()
    assert _check(tmp_path).returncode == 0
    assert (tmp_path / "status").read_text() == "HEALTHY\n"  # the word itself untouched


def test_the_heartbeat_writes_nothing_before_the_first_status(tmp_path: Path) -> None:
    status = StatusFile(tmp_path / "status", tmp_path / "status.json")
    status.touch()
    assert not (tmp_path / "status").exists()
