"""Who reaches which socket inside the container, on the real image.

Every listening UNIX socket of a running desktop (with sign-in, so the sign-in service's
is there too) is found in /proc/net/unix and must be one this file knows: a new socket
fails the test until someone says who may reach it, and so does an abstract one (its
name starts with "@": with --network host it would be the host's to reach).  Each one is
then tried from the accounts of the container: the one that must reach it is let in (so
a refusal cannot come from a dead server), every other one is refused.

- The X display (its socket is 0777, as X's are): `xdotool mousemove` with the cookie
  the image's XAUTHORITY names; only the desktop user moves the pointer.
- The session's D-Bus: `dbus-send`; its own authentication lets only its uid in.
- Every other socket: connect(); refused means EACCES (the folder, or the socket's mode).

As root: the desktop user, nginx's workers (www-data) and `nobody`.  Without root (one
uid for the desktop, nginx and the sign-in service, a read-only root): that uid reaches
everything, www-data and nobody nothing.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.conftest import Container, docker, wait_until

pytestmark = pytest.mark.e2e

DESKTOP, WEB, NOBODY = "desktop", "web", "nobody"
RUNTIME = r"(/run/user/\d+|/run/whaletop/xdg)"


@dataclass(frozen=True)
class Kind:
    pattern: str
    probe: str  # "x", "dbus" or "connect"
    reach: frozenset[str]  # who must reach it (as root); the others are refused


KINDS = (
    Kind(r"/tmp/\.X11-unix/X1", "x", frozenset({DESKTOP})),
    Kind(r"/tmp/dbus-\w+", "dbus", frozenset({DESKTOP})),
    # The relay (websockify's socket) is Xvnc's only client.
    Kind(r"/run/whaletop/desktop/vnc\.sock", "connect", frozenset({DESKTOP})),
    # The desktop user's servers whose clients are nginx's workers.
    Kind(r"/run/whaletop/desktop/(websockify|sound|files)\.sock", "connect",
         frozenset({DESKTOP, WEB})),
    Kind(r"/run/whaletop/web/auth\.sock", "connect", frozenset({WEB})),
    # nginx's listener for whaletopd's health checks (root's; HEALTHY says it serves).
    Kind(r"/run/whaletop/nginx/probe/probe\.sock", "connect", frozenset()),
    # The session's: PipeWire, its Pulse interface, LXDE's menu cache and file manager.
    Kind(RUNTIME + r"/(pipewire-0|pipewire-0-manager|pulse/native|menu-cached-:1"
         r"|pcmanfm-socket--1)", "connect", frozenset({DESKTOP})),
)
# The ones a started desktop always has (the session's others come moments later).
ALWAYS = ("/tmp/.X11-unix/X1", "/run/whaletop/desktop/vnc.sock",
          "/run/whaletop/desktop/websockify.sock", "/run/whaletop/desktop/sound.sock",
          "/run/whaletop/desktop/files.sock", "/run/whaletop/web/auth.sock")

# The listening sockets of this container's processes (with --network host,
# /proc/net/unix lists the host's too): each process's descriptors, as far as this
# account may read them.  An abstract socket's name starts with "@".
LISTENING = r"""
import json, os
listening = {}
with open("/proc/net/unix") as f:
    for line in f.readlines()[1:]:
        fields = line.split()
        if int(fields[3], 16) & 0x10000 and len(fields) > 7:  # __SO_ACCEPTCON
            listening[fields[6]] = fields[7]
held = set()
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        continue
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            held.add(target[8:-1])
print(json.dumps(sorted(listening[inode] for inode in held & listening.keys())))
"""

CONNECT = r"""
import json, socket, sys
out = {}
for path in sys.argv[1:]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        try:
            s.connect(path)
            out[path] = "connected"
        except OSError as e:
            out[path] = e.strerror or type(e).__name__
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Mode:
    extra: tuple[str, ...]
    accounts: dict[str, str]  # role -> what docker exec -u takes


AS_ROOT = Mode((), {DESKTOP: "user", WEB: "www-data", NOBODY: "nobody"})
# One uid for everything: its role is every role.
ROOTLESS = Mode(("--read-only", "--tmpfs", "/tmp", "--tmpfs", "/run/whaletop",
                 "--user", "1000:1000"),
                {DESKTOP: "1000:1000", WEB: "www-data", NOBODY: "nobody"})


@pytest.fixture
def home_volume() -> Iterator[str]:
    name = f"whaletop-test-home-{uuid.uuid4().hex[:8]}"
    yield name
    docker("volume", "rm", "-f", name, check=False)


def _listening(c: Container, mode: Mode) -> set[str]:
    """As root, then as each account (root may not read other uids' descriptors)."""
    found: set[str] = set()
    for account in ("0", *mode.accounts.values()):
        found.update(json.loads(c.exec("python3", "-c", LISTENING, user=account).stdout))
    return found


def _session_up(sockets: set[str]) -> bool:
    return (set(ALWAYS) <= sockets
            and any(re.fullmatch(RUNTIME + "/pulse/native", p) for p in sockets)
            and any(p.startswith("/tmp/dbus-") for p in sockets))


def _kind(path: str) -> Kind | None:
    return next((k for k in KINDS if re.fullmatch(k.pattern, path)), None)


def _allowed(mode: Mode, kind: Kind, role: str) -> bool:
    if mode is ROOTLESS:
        return role == DESKTOP  # the container's uid is the desktop, nginx and sign-in
    return role in kind.reach


def _pointer(c: Container, desktop: str) -> str:
    out = c.exec("env", "DISPLAY=:1", "xdotool", "getmouselocation", user=desktop)
    return " ".join(out.stdout.split()[:2])


def _try_x(c: Container, mode: Mode) -> list[str]:
    """The pointer moves for the desktop user only; nobody else reads the cookie."""
    wrong = []
    desktop = mode.accounts[DESKTOP]
    for n, (role, account) in enumerate(sorted(mode.accounts.items())):
        before = _pointer(c, desktop)
        x, y = 100 + 10 * n, 200 + 10 * n
        moved = c.exec("env", "DISPLAY=:1", "xdotool", "mousemove", str(x), str(y),
                       user=account, check=False)
        after = _pointer(c, desktop)
        allowed = role == DESKTOP
        if allowed and (moved.returncode != 0 or after != f"x:{x} y:{y}"):
            wrong.append(f"X: {account} (the desktop user) could not move the pointer: "
                         f"{moved.stderr.strip()!r}, at {after}")
        if not allowed and (moved.returncode == 0 or after != before):
            wrong.append(f"X: {account} moved the pointer ({before} -> {after})")
        cookie = c.exec("sh", "-c", 'cat -- "$XAUTHORITY" >/dev/null', user=account, check=False)
        if not allowed and cookie.returncode == 0:
            wrong.append(f"X: {account} read the cookie")
    return wrong


def _try_dbus(c: Container, mode: Mode, path: str) -> list[str]:
    wrong = []
    for role, account in sorted(mode.accounts.items()):
        call = c.exec("dbus-send", f"--bus=unix:path={path}", "--print-reply",
                      "--reply-timeout=5000", "--dest=org.freedesktop.DBus",
                      "/org/freedesktop/DBus", "org.freedesktop.DBus.GetId",
                      user=account, check=False)
        if (call.returncode == 0) != (role == DESKTOP):
            wrong.append(f"D-Bus {path}: {account} "
                         f"{'reached' if call.returncode == 0 else 'was refused'} it")
    return wrong


def _try_connect(c: Container, mode: Mode, kinds: dict[str, Kind]) -> list[str]:
    wrong = []
    for role, account in sorted(mode.accounts.items()):
        out = c.exec("python3", "-c", CONNECT, *kinds, user=account)
        for path, result in json.loads(out.stdout).items():
            allowed = _allowed(mode, kinds[path], role)
            want = "connected" if allowed else "Permission denied"
            if result != want:
                wrong.append(f"{path}: {account} ({role}): {result}, not {want}")
    return wrong


@pytest.mark.parametrize("mode", [AS_ROOT, ROOTLESS], ids=["root", "rootless-read-only"])
def test_each_socket_is_reached_only_by_who_needs_it(desktop, home_volume: str,
                                                     mode: Mode) -> None:
    c: Container = desktop("--web-password-from-env",
                           env={"WEB_PASSWORD": "correct horse battery"},
                           extra=mode.extra, volumes=(f"{home_volume}:/home/user",))
    c.wait_status("HEALTHY")
    wait_until(lambda: _session_up(_listening(c, mode)),
               "the desktop's and the session's sockets", timeout=30)
    sockets = sorted(_listening(c, mode))
    unknown = [path for path in sockets if _kind(path) is None]
    assert not unknown, f"sockets nobody said who may reach: {unknown}"
    kinds = {path: kind for path in sockets if (kind := _kind(path)) is not None}

    wrong = _try_x(c, mode)
    for path in (p for p, k in kinds.items() if k.probe == "dbus"):
        wrong += _try_dbus(c, mode, path)
    wrong += _try_connect(c, mode, {p: k for p, k in kinds.items() if k.probe == "connect"})
    assert not wrong, "\n".join(wrong)
    assert c.status() == "HEALTHY\n"
