"""Sign-in must not tell which user names exist: a wrong password for a known name and
any password for an unknown one cost the same work.  Real hashes (Apache's htpasswd
for bcrypt, libxcrypt for SHA-512-crypt and yescrypt) through the sign-in service's own
App.try_password; nothing but the hash function's bookkeeping is watched."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from whaletopd import webauth, webusers
from whaletopd.webusers import WebUser

from .. import tools

PASSWORD = "the right one"


def _htpasswd_bcrypt(name: str, cost: int) -> str:
    """A bcrypt hash as people make them (`htpasswd -nB -C COST name`)."""
    out = subprocess.run([tools.HTPASSWD.require(), "-nbB", "-C", str(cost), name, PASSWORD],
                         capture_output=True, text=True, check=True).stdout
    user, _, hashed = out.strip().partition(":")
    assert user == name
    assert hashed.startswith(f"$2y${cost:02d}$")
    return hashed


def _libxcrypt(setting: str) -> str:
    hashed = webusers.crypt(PASSWORD, setting)
    assert hashed is not None
    return hashed


def _work(setting: str) -> str:
    """The kind and cost a crypt(3) setting asks for, salt left out: bcrypt's cost, the
    rounds of SHA-crypt (5,000 when not given), yescrypt's parameters."""
    fields = setting.split("$")
    if fields[1] in ("2a", "2b", "2y"):
        return f"bcrypt {int(fields[2])}"
    if fields[1] in ("5", "6"):
        rounds = fields[2] if fields[2].startswith("rounds=") else "rounds=5000"
        return f"sha{fields[1]} {rounds}"
    assert fields[1] == "y", setting
    return f"yescrypt {fields[2]}"


@pytest.fixture(scope="module")
def users() -> dict[str, WebUser]:
    """Three people whose hashes differ in kind and cost, as a file grows over years."""
    text = (f"alice:{_htpasswd_bcrypt('alice', 5)}\n"
            f"bob:{_libxcrypt('$6$rounds=20000$bobsaltbobsalt12$')}:viewer\n"
            f"carol:{_libxcrypt(webusers.gensalt('$y$'))}\n")
    return webusers.parse(text, "users")


@pytest.fixture
def app(tmp_path: Path, users: dict[str, WebUser]) -> webauth.App:
    (tmp_path / "users").write_text(webusers.render(users))
    settings = webauth.Settings(
        users_file=tmp_path / "users", sessions_file=tmp_path / "sessions.json",
        grants_file=tmp_path / "grants.json", probe_token="probe-0123456789abcdef",
        attempts=1000, lockout_s=30)
    return webauth.App(settings)


def _attempt(app: webauth.App, users: dict[str, WebUser], n: int, name: str,
             password: str) -> WebUser | None:
    # A client address per attempt: the failure counter never slows these down.
    user, locked = app.try_password(f"192.0.2.{n % 250}", name, password, users)
    assert locked == 0.0
    return user


def test_every_name_costs_the_same_hashes(app: webauth.App, users: dict[str, WebUser],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """What each sign-in hashed, by kind and cost: the same for every known name (right
    or wrong password) and for a name nobody has."""
    real_crypt = webusers.crypt
    hashed: list[str] = []

    def counting_crypt(password: str, setting: str) -> str | None:
        hashed.append(_work(setting))
        return real_crypt(password, setting)

    monkeypatch.setattr(webusers, "crypt", counting_crypt)
    work: dict[tuple[str, str], Counter[str]] = {}
    for n, (name, password) in enumerate([
            ("alice", "wrong"), ("bob", "wrong"), ("carol", "wrong"),
            ("alice", PASSWORD), ("bob", PASSWORD), ("nobody", "wrong"),
            ("nobody", PASSWORD), ("", ""), ("ALICE", PASSWORD)]):
        hashed.clear()
        user = _attempt(app, users, n, name, password)
        assert (user is not None) == (name in users and password == PASSWORD)
        work[name, password] = Counter(hashed)
    first = work["alice", "wrong"]
    assert len(first) == 3, "one hash of each kind and cost in the file"
    assert all(v == 1 for v in first.values())
    for key, counted in work.items():
        assert counted == first, f"{key} hashed {dict(counted)}, alice's wrong {dict(first)}"


def test_a_file_of_one_kind_costs_one_hash(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    users = webusers.parse(f"alice:{_htpasswd_bcrypt('alice', 5)}\n"
                           f"dave:{_htpasswd_bcrypt('dave', 5)}\n", "users")
    calls: list[str] = []
    real_crypt = webusers.crypt

    def counting_crypt(password: str, setting: str) -> str | None:
        calls.append(setting[:7])
        return real_crypt(password, setting)

    monkeypatch.setattr(webusers, "crypt", counting_crypt)
    for name in ("alice", "dave", "nobody"):
        calls.clear()
        assert webusers.check(users, name, "wrong") is None
        assert calls == ["$2y$05$"], name
    assert webusers.check(users, "dave", PASSWORD) == users["dave"]
    assert webusers.check({}, "alice", PASSWORD) is None, "no users: refused, one hash"


def test_unknown_and_known_names_take_alike_long(app: webauth.App,
                                                 users: dict[str, WebUser]) -> None:
    """The same as an attacker measures it: a wrong password for alice (bcrypt, cost 5,
    the cheapest hash in the file) against a name nobody has.  Interleaved, many times,
    medians compared with a wide margin: a security property, not a speed target (the
    two differ about ten times where the work differs)."""
    times: dict[str, list[float]] = {"alice": [], "nobody": []}
    for n in range(41):
        for name in times:
            start = time.perf_counter()
            assert _attempt(app, users, n, name, "wrong guess") is None
            times[name].append(time.perf_counter() - start)
    known = statistics.median(times["alice"])
    unknown = statistics.median(times["nobody"])
    assert 0.5 < unknown / known < 2.0, (
        f"median {unknown * 1000:.1f} ms for an unknown name, {known * 1000:.1f} ms for "
        "a known one")
