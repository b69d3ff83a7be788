"""The sign-in service's sessions, capped per person: one person signing in again and
again (a viewer, a script, an attacker with one account) drops only their own oldest
sessions, never everyone else's.  Real files in tmp_path, the real class."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from whaletopd import webauth_state
from whaletopd.webauth_state import Sessions
from whaletopd.webusers import WebUser

ALICE = WebUser("alice", "$6$rounds=5000$alicesalt$" + "a" * 86, "full")
BOB = WebUser("bob", "$6$rounds=5000$bobsalt$" + "b" * 86, "viewer")
CAROL = WebUser("carol", "$6$rounds=5000$carolsalt$" + "c" * 86, "full")
USERS = {u.name: u for u in (ALICE, BOB, CAROL)}


class Clock:
    """Each sign-in a second after the one before: `created` orders them."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "sessions.json"


def _valid(sessions: Sessions, tokens: list[str]) -> list[bool]:
    return [sessions.lookup(t, USERS) is not None for t in tokens]


def test_a_viewer_signing_in_1001_times_signs_nobody_else_out(path: Path) -> None:
    """The issue's attack with the service's own limits: a viewer's 1,001 sign-ins
    (1,000 sessions were the whole service's) leave alice and carol signed in."""
    sessions = Sessions(path, clock=Clock())
    alice = sessions.create(ALICE, 12)
    carol = sessions.create(CAROL, 12)
    bobs = [sessions.create(BOB, 12) for _ in range(webauth_state.MAX_SESSIONS + 1)]
    assert sessions.lookup(alice, USERS) == ALICE
    assert sessions.lookup(carol, USERS) == CAROL
    per_user = webauth_state.SESSIONS_PER_USER
    assert per_user < webauth_state.MAX_SESSIONS
    assert _valid(sessions, bobs) == [False] * (len(bobs) - per_user) + [True] * per_user, (
        "bob keeps his newest sessions; his oldest went")
    assert len(sessions) == 2 + per_user
    # What the desktop's relay keeps open: bob's dropped sessions lose their grants (the
    # relay closes their connections), alice's and carol's keep theirs.
    grants = sessions.live(USERS)
    kept = [webauth_state.session_grant(t) in grants for t in [alice, carol, *bobs]]
    assert kept == [True, True] + [False] * (len(bobs) - per_user) + [True] * per_user


def test_when_all_are_taken_the_largest_holder_gives_one_up(path: Path) -> None:
    """The whole service full (here 6 sessions, 3 a person): a new sign-in drops the
    oldest session of whoever holds the most, never a person with fewer."""
    sessions = Sessions(path, capacity=6, clock=Clock(), per_user=3)
    alice = sessions.create(ALICE, 12)
    bobs = [sessions.create(BOB, 12) for _ in range(3)]
    carols = [sessions.create(CAROL, 12) for _ in range(2)]
    assert len(sessions) == 6
    carols.append(sessions.create(CAROL, 12))  # carol now holds as many as bob
    assert sessions.lookup(alice, USERS) == ALICE
    assert _valid(sessions, bobs) == [False, True, True], "bob held the most, first"
    assert all(_valid(sessions, carols))
    for _ in range(5):  # bob again and again: his own go, or carol's (as many), never alice's
        bobs.append(sessions.create(BOB, 12))
    assert sessions.lookup(alice, USERS) == ALICE
    assert len(sessions) == 6
    assert sum(_valid(sessions, bobs)) <= 3


def test_the_saved_sessions_keep_the_caps_and_survive_a_restart(path: Path) -> None:
    clock = Clock()
    sessions = Sessions(path, clock=clock, per_user=2)
    alice = sessions.create(ALICE, 12)
    bobs = [sessions.create(BOB, 12) for _ in range(4)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert [s["user"] for s in doc["sessions"]] == ["alice", "bob", "bob"]
    again = Sessions(path, clock=clock, per_user=2)
    assert again.lookup(alice, USERS) == ALICE
    assert _valid(again, bobs) == [False, False, True, True]
    # Saved under a larger cap (an older version's): trimmed when read.
    fewer = Sessions(path, clock=clock, per_user=1)
    assert fewer.lookup(alice, USERS) == ALICE
    assert _valid(fewer, bobs) == [False, False, False, True]
