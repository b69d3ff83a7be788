"""Small helpers shared by the unit tests (not fixtures)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from whaletopd.status import StatusFile

# Generous upper bound for waiting on threads and processes; never asserted as a duration.
WAIT = 10.0


def wait_for(predicate: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    """Poll until predicate() is truthy; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def write_status(state_dir: Path, word: str, reason: str = "", **detail: object) -> None:
    """The status files as the running daemon (this test process) writes them."""
    StatusFile(state_dir / "status", state_dir / "status.json").write(word, reason, detail)


def dead_pid() -> int:
    """A pid that was just used and is free now (reuse within a test is unlikely)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_stale(state_dir: Path, word: str, reason: str = "", **detail: object) -> int:
    """Status files left by a daemon that is gone (a reused volume); its pid."""
    pid = dead_pid()
    write_status(state_dir, word, reason, **detail)
    doc = json.loads((state_dir / "status.json").read_text())
    doc["pid"] = pid
    (state_dir / "status.json").write_text(json.dumps(doc))
    return pid


class FakeClock:
    """A clock that moves only when a test says so (monotonic or wall, as the code under
    test reads it)."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
