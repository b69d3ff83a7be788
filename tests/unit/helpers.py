"""Small helpers shared by the unit tests (not fixtures)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

# Generous upper bound for waiting on threads and processes; never asserted as a duration.
WAIT = 10.0


def wait_for(predicate: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    """Poll until predicate() is truthy; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)
