"""What the sign-in service (webauth.py) keeps: the people who may sign in (the users
file, re-read when it changes), the sessions (only their tokens' sha256, persisted so a
restart keeps people signed in), and the failed sign-ins of each client address (slowed,
then refused for a while).  Each class owns its lock; the HTTP side only asks.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from whaletopd import webusers
from whaletopd.files import atomic_write
from whaletopd.webusers import WebUser, WebUsersError

MAX_SESSIONS = 1000
# How often the grants are looked at for users file changes and expiries (sign-in and
# sign-out publish at once); the relay looks as often (vncrelay.GRANTS_POLL).
GRANTS_TICK = 0.3
# One person's sessions (browsers signed in at once); their oldest goes first.
SESSIONS_PER_USER = 20
MAX_CLIENTS = 10_000
MAX_DELAY = 3.0
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")

_emit_lock = threading.Lock()


def emit(event: str, level: str = "info", **fields: object) -> None:
    """One JSON object per line on stdout, flushed (whaletopd re-emits it)."""
    line = json.dumps({"event": event, "level": level, **fields})
    with _emit_lock, contextlib.suppress(OSError, ValueError):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class UsersFile:
    """The users file, re-read when its inode, mtime or size changes.  A file that is
    refused is logged once and the users read before stay."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._key: object = None
        self._users: dict[str, WebUser] = {}

    def current(self) -> dict[str, WebUser]:
        with self._lock:
            try:
                st = os.stat(self.path)
                key: object = (st.st_ino, st.st_mtime_ns, st.st_size)
            except OSError as e:
                key = ("error", e.errno)
            if key == self._key:
                return self._users
            self._key = key
            try:
                users = webusers.load(self.path)
            except WebUsersError as e:
                emit("users_refused", "error", reason=str(e), kept=len(self._users))
                return self._users
            self._users = users
            # Each sign-in costs one hash per kind and cost (webusers.check).
            emit("users_loaded", count=len(users),
                 viewers=sum(u.role == "viewer" for u in users.values()),
                 hash_costs=len({webusers.cost_class(u.hash) for u in users.values()}))
            return users


def fingerprint(user: WebUser) -> str:
    return hashlib.sha256(user.hash.encode("utf-8")).hexdigest()


def _session_id(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def session_grant(token: str) -> str:
    """What a session's requests carry to the relay: not the token, not its id."""
    return _grant_of_id(_session_id(token))


def _grant_of_id(sid: str) -> str:
    return "s" + hashlib.sha256(b"grant\0" + sid.encode()).hexdigest()[:40]


def user_grant(user: WebUser) -> str:
    """What a user's HTTP Basic requests carry: it ends with their password or role."""
    return "u" + hashlib.sha256(f"grant\0{user.name}\0{user.role}\0".encode()
                                + fingerprint(user).encode()).hexdigest()[:40]


class GrantsFile:
    """{"grants": {GRANT: ROLE}}: what may stay connected to the desktop, for its relay
    (another account: mode 0640, the folder's group is the desktop user's).  Written
    atomically, and only when it changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._last: dict[str, str] | None = None

    def publish(self, grants: dict[str, str]) -> None:
        with self._lock:
            if grants == self._last:
                return
            try:
                atomic_write(self.path, json.dumps({"grants": grants}), mode=0o640)
            except OSError as e:
                emit("grants_unsaved", "error", path=str(self.path), reason=e.strerror)
                return
            self._last = dict(grants)


@dataclass(frozen=True)
class Session:
    user: str
    role: str
    expires: float  # wall clock: it must mean the same after a restart
    fingerprint: str
    created: float


class Sessions:
    """Signed-in sessions by sha256(token): in memory, and saved (0600, atomically) on
    every change so that a restart of the service keeps them.  At most `per_user` per
    person and `capacity` in all, so that nobody's sign-ins push out another person's
    sessions: see _trim."""

    def __init__(self, path: Path, capacity: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.time,
                 per_user: int = SESSIONS_PER_USER) -> None:
        self.path = path
        self.capacity = capacity
        self.per_user = per_user
        self.clock = clock
        self.lock = threading.Lock()
        self._by_id: dict[str, Session] = {}
        self._load()

    def __len__(self) -> int:
        return len(self._by_id)

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text("utf-8"))
            items = doc["sessions"]
            loaded = sorted(
                ((str(i["id"]), Session(str(i["user"]), str(i["role"]), float(i["expires"]),
                                        str(i["fingerprint"]), float(i["created"])))
                 for i in items),
                key=lambda kv: kv[1].created)
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            emit("sessions_unreadable", "warning", path=str(self.path),
                 reason=type(e).__name__)
            return
        now = self.clock()
        self._by_id = {sid: s for sid, s in loaded if s.expires > now}
        self._trim()

    def _trim(self) -> None:
        """Drop the oldest sessions of anyone over per_user; then, while more than
        `capacity` are left, the oldest of whoever holds the most.  A person signing in
        again and again drops only their own (or, when the whole is full, those of
        someone holding as many), never everyone else's."""
        held = collections.Counter(s.user for s in self._by_id.values())
        for sid, s in list(self._by_id.items()):  # oldest first
            if held[s.user] > self.per_user:
                del self._by_id[sid]
                held[s.user] -= 1
        while len(self._by_id) > self.capacity:
            most = max(held.values())
            sid = next(sid for sid, s in self._by_id.items() if held[s.user] == most)
            held[self._by_id.pop(sid).user] -= 1

    def _save(self) -> None:
        doc = {"version": 1, "sessions": [{"id": sid, **s.__dict__}
                                          for sid, s in self._by_id.items()]}
        try:
            atomic_write(self.path, json.dumps(doc), mode=0o600)
        except OSError as e:
            emit("sessions_unsaved", "error", path=str(self.path), reason=e.strerror)

    def create(self, user: WebUser, hours: float) -> str:
        token = secrets.token_urlsafe(32)
        now = self.clock()
        with self.lock:
            self._by_id = {sid: s for sid, s in self._by_id.items() if s.expires > now}
            self._by_id[_session_id(token)] = Session(user.name, user.role,
                                                      now + hours * 3600,
                                                      fingerprint(user), now)
            self._trim()
            self._save()
        return token

    def lookup(self, token: str, users: dict[str, WebUser]) -> WebUser | None:
        """The user whose valid session `token` is; an invalid one is forgotten."""
        if not TOKEN_RE.match(token):
            return None
        sid = _session_id(token)
        with self.lock:
            s = self._by_id.get(sid)
            if s is None:
                return None
            user = users.get(s.user)
            if (s.expires > self.clock() and user is not None and user.role == s.role
                    and hmac.compare_digest(fingerprint(user), s.fingerprint)):
                return user
            del self._by_id[sid]
            self._save()
            return None

    def live(self, users: dict[str, WebUser]) -> dict[str, str]:
        """The grants of the sessions still good, with their roles; the others are
        forgotten (saved only when some were)."""
        now = self.clock()
        with self.lock:
            good: dict[str, Session] = {}
            for sid, s in self._by_id.items():
                user = users.get(s.user)
                if (s.expires > now and user is not None and user.role == s.role
                        and hmac.compare_digest(fingerprint(user), s.fingerprint)):
                    good[sid] = s
            if len(good) != len(self._by_id):
                self._by_id = good
                self._save()
            return {_grant_of_id(sid): s.role for sid, s in good.items()}

    def delete(self, token: str) -> Session | None:
        if not TOKEN_RE.match(token):
            return None
        with self.lock:
            s = self._by_id.pop(_session_id(token), None)
            if s is not None:
                self._save()
            return s


@dataclass
class _Client:
    failures: collections.deque[float] = field(default_factory=collections.deque)
    locked_until: float = 0.0
    pending: int = 0  # sign-ins being checked now: they count toward the limit


@dataclass(frozen=True)
class Failure:
    failures: int
    delay: float  # seconds to wait before answering
    locked_s: float  # > 0 when this failure locked the address


class Guard:
    """Failed sign-ins per client address within lockout_s: slower answers past half of
    `attempts`, refusal for lockout_s at `attempts`.  Other addresses are unaffected; the
    least recently seen addresses are forgotten beyond `capacity`."""

    def __init__(self, attempts: int, lockout_s: float, capacity: int = MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts = attempts
        self.lockout_s = lockout_s
        self.capacity = capacity
        self.clock = clock
        self._lock = threading.Lock()
        self._clients: collections.OrderedDict[str, _Client] = collections.OrderedDict()

    def _get(self, addr: str, now: float, create: bool) -> _Client | None:
        c = self._clients.get(addr)
        if c is None:
            if not create:
                return None
            c = self._clients[addr] = _Client()
            while len(self._clients) > self.capacity:
                self._clients.popitem(last=False)
        self._clients.move_to_end(addr)
        if c.locked_until and now >= c.locked_until:
            c.locked_until = 0.0
            c.failures.clear()
        while c.failures and c.failures[0] <= now - self.lockout_s:
            c.failures.popleft()
        return c

    def _remaining(self, c: _Client, now: float) -> float:
        return max(0.0, c.locked_until - now) if c.locked_until else 0.0

    def locked_for(self, addr: str) -> float:
        """Seconds `addr` stays refused (0: it is not)."""
        now = self.clock()
        with self._lock:
            c = self._get(addr, now, create=False)
            return self._remaining(c, now) if c else 0.0

    def begin(self, addr: str) -> float:
        """0 when a sign-in from `addr` may be checked now (then failed() or succeeded()
        must follow), else the seconds it is refused for."""
        now = self.clock()
        with self._lock:
            c = self._get(addr, now, create=True)
            assert c is not None
            if c.locked_until:
                return self._remaining(c, now)
            if len(c.failures) + c.pending >= self.attempts:  # many at once from one place
                return max(1.0, c.failures[0] + self.lockout_s - now) if c.failures else 1.0
            c.pending += 1
            return 0.0

    def failed(self, addr: str) -> Failure:
        now = self.clock()
        with self._lock:
            c = self._get(addr, now, create=True)
            assert c is not None
            c.pending = max(0, c.pending - 1)
            c.failures.append(now)
            n = len(c.failures)
            locked = 0.0
            if n >= self.attempts and not c.locked_until:
                c.locked_until = now + self.lockout_s
                locked = self.lockout_s
            over = n - self.attempts // 2
            delay = min(MAX_DELAY, 0.25 * 2 ** min(over - 1, 8)) if over > 0 else 0.0
            return Failure(n, delay, locked)

    def succeeded(self, addr: str) -> None:
        with self._lock:
            c = self._clients.get(addr)
            if c is None:
                return
            c.pending = max(0, c.pending - 1)
            c.failures.clear()
            if c.pending == 0:
                del self._clients[addr]
