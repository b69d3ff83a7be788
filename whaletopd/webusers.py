"""The web sign-in's users file: who may open the desktop, and whether they may type.

One person per line, the htpasswd format nginx and Apache read (where a third field is a
comment)::

    # name:hash[:role]
    alice:$2y$05$...                    (htpasswd -nB alice)
    bob:$6$rounds=100000$...:viewer     (mkpasswd -m sha-512)

`role` is `full` (the default: keyboard and mouse) or `viewer` (watch only: a viewer gets
the VNC server's view-only password).  Blank lines and lines starting with `#` are
ignored.  A user name is 1 to 64 characters: letters, digits, `.`, `@`, `-` and `_`,
starting with a letter, a digit or `_`.

Accepted hashes, checked with libxcrypt's crypt(3): bcrypt `$2a$`, `$2b$`, `$2y$`
(`htpasswd -B`), SHA-512-crypt `$6$` and SHA-256-crypt `$5$` (`mkpasswd -m sha-512`),
yescrypt `$y$` (`mkpasswd -m yescrypt`).  Refused, because they are weak: plain text
(`{PLAIN}` or no hash at all), `{SHA}`/`{SSHA}` (SHA-1), `$apr1$` (Apache MD5), `$1$`
(MD5-crypt) and 13-character DES crypt.  Also refused: a bad or repeated user name, an
unknown role, a file with no users, one larger than 1 MiB, not UTF-8, or not a regular
file (symbolic links, as Kubernetes mounts secrets, are followed).  Every refusal is one
line naming the file and line, and never shows a hash or a password.

Uses the standard library and libxcrypt through ctypes only (Python 3.13 has no `crypt`
module), so the sign-in service that imports it stays small.
"""

from __future__ import annotations

import ctypes
import functools
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from whaletopd.files import ReadRefused, read_regular

ROLES = ("full", "viewer")
MAX_FILE = 1024 * 1024
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$")
# SHA-512-crypt rounds for hash_password: one verification takes 31-35 ms on the
# development machine (5,000, crypt's default, takes 2.4 ms; 200,000 about 100 ms).
ROUNDS = 100_000
# libxcrypt refuses longer passphrases (CRYPT_MAX_PASSPHRASE_SIZE).
MAX_PASSWORD = 512
_CRYPT_DATA_SIZE = 32768  # sizeof(struct crypt_data) in libxcrypt's crypt.h
_B64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Hash kinds beyond these would make one sign-in take seconds (a typo, or a trap).
_MAX_SHA_ROUNDS = 5_000_000
_MAX_BCRYPT_COST = 15

_BCRYPT_RE = re.compile(r"^\$2[aby]\$([0-9]{2})\$[./0-9A-Za-z]{53}$")
_SHA_RE = re.compile(r"^\$([56])\$(?:rounds=([0-9]{1,10})\$)?[./0-9A-Za-z]{0,16}\$"
                     r"([./0-9A-Za-z]*)$")
_YESCRYPT_RE = re.compile(r"^\$y\$[./0-9A-Za-z]+\$[./0-9A-Za-z]*\$[./0-9A-Za-z]{43}$")
_DES_RE = re.compile(r"^[./0-9A-Za-z]{13}$")
_WEAK = (
    ("{PLAIN}", "plain-text passwords are refused"),
    ("{SHA}", "{SHA} (unsalted SHA-1) hashes are weak"),
    ("{SSHA}", "{SSHA} (salted SHA-1) hashes are weak"),
    ("$apr1$", "$apr1$ (Apache MD5) hashes are weak"),
    ("$1$", "$1$ (MD5-crypt) hashes are weak"),
)
# A well-formed setting for the work an unknown user's sign-in still costs.
_DUMMY = f"$6$rounds={ROUNDS}$whaletopdummysa$"


class WebUsersError(ValueError):
    """The users file (or a user to add) is refused; the message is one line."""


@dataclass(frozen=True)
class WebUser:
    name: str
    hash: str
    role: str = "full"

    def __repr__(self) -> str:  # keep the hash out of tracebacks and logs
        return f"WebUser(name={self.name!r}, role={self.role!r})"


def _how(name: str) -> str:
    return f"make one with htpasswd -nB {name} (or mkpasswd -m sha-512)"


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a user name, or None when it can."""
    if NAME_RE.match(name):
        return None
    return ("user names are 1 to 64 letters, digits, '.', '@', '-' and '_', starting with "
            "a letter, a digit or '_'")


def hash_problem(hashed: str) -> str | None:
    """Why `hashed` is refused (without repeating it), or None when it is accepted."""
    if not hashed:
        return "no password hash"
    for prefix, why in _WEAK:
        if hashed.startswith(prefix):
            return why
    if m := _BCRYPT_RE.match(hashed):
        if int(m.group(1)) > _MAX_BCRYPT_COST:
            return f"bcrypt cost above {_MAX_BCRYPT_COST} makes each sign-in take seconds"
        return None
    if m := _SHA_RE.match(hashed):
        if len(m.group(3)) != (43 if m.group(1) == "5" else 86):
            return f"the ${m.group(1)}$ hash is malformed (cut short?)"
        if m.group(2) and int(m.group(2)) > _MAX_SHA_ROUNDS:
            return f"more than {_MAX_SHA_ROUNDS} rounds makes each sign-in take seconds"
        return None
    if _YESCRYPT_RE.match(hashed):
        return None
    for prefix in ("$2a$", "$2b$", "$2y$", "$5$", "$6$", "$y$"):
        if hashed.startswith(prefix):
            return f"the {prefix} hash is malformed (cut short?)"
    if _DES_RE.match(hashed):
        return "DES crypt hashes (13 characters) are weak"
    if hashed.startswith("$"):
        return "this hash kind is not supported (bcrypt, $6$, $5$ or $y$ are)"
    return "this is not a password hash (plain-text passwords are refused)"


def parse(text: str, source: str) -> dict[str, WebUser]:
    """The users in `text`, by name; WebUsersError names `source` and the line."""
    users: dict[str, WebUser] = {}
    first_line: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}: line {number}"
        fields = [f.strip() for f in line.split(":")]
        if len(fields) not in (2, 3):
            raise WebUsersError(f"{where}: expected name:hash[:role], found {len(fields)} "
                                "fields separated by ':'")
        name, hashed = fields[0], fields[1]
        role = fields[2] if len(fields) == 3 and fields[2] else "full"
        if (why := name_problem(name)) is not None:
            raise WebUsersError(f"{where}: the user name is not valid: {why}")
        if name in users:
            raise WebUsersError(f"{where}: user {name!r} appears again (first on line "
                                f"{first_line[name]})")
        if (why := hash_problem(hashed)) is not None:
            raise WebUsersError(f"{where}: user {name!r}: {why}; {_how(name)}")
        if role not in ROLES:
            shown = role if re.fullmatch(r"[A-Za-z0-9_-]{1,20}", role) else "?"
            raise WebUsersError(f"{where}: user {name!r}: unknown role {shown!r} (full or "
                                "viewer)")
        users[name] = WebUser(name, hashed, role)
        first_line[name] = number
    if not users:
        raise WebUsersError(f"{source}: no users (one name:hash[:role] per line)")
    return users


def load(path: Path) -> dict[str, WebUser]:
    """Read and parse the users file.  Links are followed (Kubernetes secrets are links)
    but what they lead to must be a regular file; at most 1 MiB is read."""
    try:
        data = read_regular(path, MAX_FILE)
    except ReadRefused as e:
        raise WebUsersError({
            "open": f"{path}: cannot open: {e.strerror}",
            "kind": f"{path}: not a regular file",
            "read": f"{path}: cannot read: {e.strerror}",
            "size": f"{path}: larger than 1 MiB",
        }[e.step]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise WebUsersError(f"{path}: line {line}: not UTF-8 text") from None
    return parse(text, str(path))


@functools.cache
def _libcrypt() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libcrypt.so.1")
    except OSError:  # not libxcrypt's usual name: ask (find_library runs ldconfig)
        from ctypes.util import find_library
        lib = ctypes.CDLL(find_library("crypt") or "libcrypt.so")
    lib.crypt_r.restype = ctypes.c_char_p
    lib.crypt_r.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
    lib.crypt_gensalt_rn.restype = ctypes.c_char_p
    lib.crypt_gensalt_rn.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p,
                                     ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    return lib


def crypt(password: str, setting: str) -> str | None:
    """libxcrypt's crypt_r(3): the hash of `password` with `setting` (a salt or a whole
    hash), or None when it fails.  Thread-safe: each call has its own crypt_data."""
    phrase = password.encode("utf-8")
    if b"\0" in phrase or len(phrase) > MAX_PASSWORD:
        return None
    data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
    out: bytes | None = _libcrypt().crypt_r(phrase, setting.encode("ascii", "replace"), data)
    ctypes.memset(data, 0, _CRYPT_DATA_SIZE)  # the passphrase was copied in there
    if not out or out.startswith(b"*"):
        return None
    return out.decode("ascii", "replace")


def gensalt(prefix: str, count: int = 0) -> str:
    """libxcrypt's crypt_gensalt(3): a random setting for `prefix` ("$2b$", "$y$", "$6$"
    ...), `count` 0 for its default cost."""
    out = ctypes.create_string_buffer(192)  # CRYPT_GENSALT_OUTPUT_SIZE
    if not _libcrypt().crypt_gensalt_rn(prefix.encode("ascii"), count, None, 0, out,
                                        len(out)):
        raise WebUsersError(f"libxcrypt cannot make a {prefix} salt")
    return out.value.decode("ascii")


def hash_password(password: str) -> str:
    """A SHA-512-crypt hash ($6$, ROUNDS rounds, 16 random salt characters)."""
    if not password:
        raise WebUsersError("the password is empty")
    salt = "".join(secrets.choice(_B64) for _ in range(16))
    hashed = crypt(password, f"$6$rounds={ROUNDS}${salt}$")
    if hashed is None:
        raise WebUsersError(f"the password cannot be hashed (a NUL character, or longer "
                            f"than {MAX_PASSWORD} bytes)")
    return hashed


def cost_class(hashed: str) -> str:
    """What checking a password against `hashed` costs, as a key: its kind and cost
    without the salt (the salt does not change the work).  bcrypt's $2a$, $2b$ and $2y$
    are one algorithm; SHA-crypt without rounds= has crypt's default, 5,000."""
    if m := _BCRYPT_RE.match(hashed):
        return f"bcrypt:{int(m.group(1))}"
    if m := _SHA_RE.match(hashed):
        return f"sha{m.group(1)}:{int(m.group(2) or 5000)}"
    if hashed.startswith("$y$"):
        return "yescrypt:" + hashed.split("$")[2]
    return "other:" + hashed[:4]


# The users the last check() saw, and one hash of each cost class among them: the dict
# is held, so `is` cannot match another dict that got its id.  UsersFile hands out the
# same dict until the file changes, so this is worked out once per change.
_decoys_of: tuple[object, dict[str, str]] = (None, {})


def _decoys(users: Mapping[str, WebUser]) -> dict[str, str]:
    global _decoys_of
    held, decoys = _decoys_of
    if held is not users:
        decoys = {}
        for user in users.values():
            decoys.setdefault(cost_class(user.hash), user.hash)
        _decoys_of = (users, decoys)
    return decoys


def check(users: Mapping[str, WebUser], name: str, password: str) -> WebUser | None:
    """The user `name` when `password` is theirs, else None.  Every call does the same
    work whatever the name, so the answer's timing tells no names: one hash of each cost
    class in `users`, in the same order, the user's own for their class and another
    user's of the other classes (whose result is thrown away).  A file whose users all
    have one kind and cost (the usual: one tool made them) costs one hash."""
    user = users.get(name)
    own = cost_class(user.hash) if user is not None else None
    decoys = _decoys(users)
    if not decoys:  # no users at all (a file refused at start): still one hash
        crypt(password, _DUMMY)
        return None
    right = False
    for kind, decoy in decoys.items():
        if kind == own:
            right = verify(user, password)
        else:
            crypt(password, decoy)
    return user if right else None


def verify(user: WebUser | None, password: str) -> bool:
    """Whether `password` is `user`'s.  An unknown user (None) costs one hash too, so the
    answer's timing does not tell which names exist."""
    if user is None:
        crypt(password, _DUMMY)
        return False
    computed = crypt(password, user.hash)
    return computed is not None and hmac.compare_digest(computed.encode("ascii", "replace"),
                                                        user.hash.encode("utf-8"))


def render(users: Mapping[str, WebUser] | Iterable[WebUser]) -> str:
    """The users file's text for `users`."""
    items = users.values() if isinstance(users, Mapping) else users
    return "".join(f"{u.name}:{u.hash}:{u.role}\n" for u in items)


def from_password(name: str, password: str, role: str = "full") -> str:
    """The users file's text for one user (WEB_PASSWORD)."""
    if (why := name_problem(name)) is not None:
        raise WebUsersError(f"user name {name!r} is not valid: {why}")
    if role not in ROLES:
        raise WebUsersError(f"unknown role {role!r} (full or viewer)")
    return render([WebUser(name, hash_password(password), role)])
