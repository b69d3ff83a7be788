"""StatusFile.enter(): `since` is when the state was entered; re-entering the same state
(a second restart while RECOVERING) keeps it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from whaletopd.status import StatusFile, now_iso

from .helpers import wait_for


@pytest.fixture
def sf(tmp_path: Path) -> StatusFile:
    return StatusFile(tmp_path / "status", tmp_path / "status.json")


def _since(sf: StatusFile, state: str) -> str:
    sf.write(state, "", {})
    since: str = json.loads(sf.json_path.read_text())["since"]
    return since


def _tick(after: str) -> None:
    """Until now_iso() (millisecond resolution) has moved past `after`."""
    wait_for(lambda: now_iso() > after, "the clock to move a millisecond")


def test_re_entering_the_same_state_keeps_since(sf: StatusFile) -> None:
    sf.enter("RECOVERING")
    first = _since(sf, "RECOVERING")
    _tick(first)
    sf.enter("RECOVERING")
    assert _since(sf, "RECOVERING") == first


def test_a_new_state_gets_a_new_since(sf: StatusFile) -> None:
    sf.enter("STARTING")
    starting = _since(sf, "STARTING")
    _tick(starting)
    sf.enter("HEALTHY")
    healthy = _since(sf, "HEALTHY")
    assert healthy > starting
    _tick(healthy)
    sf.enter("STARTING")  # back to a state it was in before: entered anew
    assert _since(sf, "STARTING") > healthy


def test_writes_within_a_state_keep_since(sf: StatusFile) -> None:
    sf.enter("HEALTHY")
    first = _since(sf, "HEALTHY")
    _tick(first)
    assert _since(sf, "HEALTHY") == first, "a detail update moved since"


def test_since_before_any_enter_is_the_time_of_writing(sf: StatusFile) -> None:
    before = now_iso()
    since = _since(sf, "STARTING")
    assert since >= before
