"""No client message can end the desktop: what a client sends is read by the relay
(vncrelay.py) before Xvnc sees it.  The sequence that crashed TigerVNC 1.15 (a
SetDesktopSize from a client that never sent SetEncodings), then thousands of random
and malformed RFB messages from full clients; Xvnc stays the same process and the
desktop HEALTHY throughout, and a new client still logs in and gets its picture."""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e import vnc
from tests.e2e.conftest import Container

pytestmark = pytest.mark.e2e

PORT = 8080
CONNECTIONS = 150
MESSAGES = 40  # per connection: 6,000 in all
PSEUDO = (-308, -312, -313, -258, -223, -224, -239, -307, 0, 1, 5, 7, 16, 21)


def xvnc_pid(c: Container) -> int:
    pid: int = c.status_json()["children"]["xvnc"]["pid"]
    return pid


def crash_sequence(conn: vnc.WebVNC) -> None:
    """SetDesktopSize, one screen, before any SetEncodings (TigerVNC 1.15 SIGSEGV in
    rfb::SMsgWriter::writeDesktopSize)."""
    conn.send(struct.pack("!BBHHBB", 251, 0, 1024, 768, 1, 0)
              + struct.pack("!IHHHHI", 1, 0, 0, 1024, 768, 0))


def random_message(rng: random.Random) -> bytes:
    """One client message, well-formed or not.  Input stays harmless (pointer moves
    without buttons, key releases): the point is the protocol, not clicking around."""
    u8, u16, u32 = (lambda: rng.randrange(256)), (lambda: rng.randrange(65536)), (
        lambda: rng.randrange(1 << 32))
    kinds: list[Callable[[], bytes]] = [
        lambda: bytes([0, 0, 0, 0]) + rng.randbytes(16),
        lambda: bytes([0, 0, 0, 0, rng.choice((8, 16, 32)), rng.randrange(1, 33), u8() & 1, 1])
        + struct.pack("!HHH", *(rng.choice((1, 3, 7, 31, 63, 255, 1023)) for _ in "rgb"))
        + bytes(rng.randrange(32) for _ in "rgb") + bytes(3),
        lambda: struct.pack("!BBH", 2, 0, n := rng.randrange(12))
        + b"".join(struct.pack("!i", rng.choice(PSEUDO) if rng.random() < 0.8
                               else rng.randrange(-(1 << 31), 1 << 31)) for _ in range(n)),
        lambda: struct.pack("!BBHHHH", 3, u8(), u16(), u16(), u16(), u16()),
        lambda: struct.pack("!BBHHHH", 3, 1, 0, 0, rng.randrange(2000), rng.randrange(2000)),
        lambda: struct.pack("!BBHI", 4, 0, 0, u32()),
        lambda: struct.pack("!BBHH", 5, 0, u16(), u16()),
        lambda: struct.pack("!BBBBi", 6, 0, 0, 0, len(t := rng.randbytes(rng.randrange(64))))
        + t,
        lambda: struct.pack("!BBBBi", 6, 0, 0, 0, -len(t := rng.randbytes(rng.randrange(4, 64))))
        + t,
        lambda: struct.pack("!BBHHHH", 150, u8(), u16(), u16(), u16(), u16()),
        lambda: struct.pack("!BBBBIB", 248, 0, 0, 0, u32(), n := rng.randrange(70))
        + rng.randbytes(n),
        lambda: struct.pack("!BBHHBB", 251, 0, rng.randrange(4096), rng.randrange(4096),
                            n := rng.randrange(4), 0)
        + b"".join(struct.pack("!IHHHHI", u32(), u16() % 4096, u16() % 4096, u16() % 4096,
                               u16() % 4096, u32()) for _ in range(n)),
        lambda: struct.pack("!BBHII", 255, rng.choice((0, 0, 0, 1, 2)), 0, u32(), u32()),
        lambda: rng.randbytes(rng.randrange(1, 48)),  # garbage
    ]
    message = rng.choice(kinds)()
    if rng.random() < 0.05:  # truncated, the next message read as its rest
        message = message[:rng.randrange(1, len(message) + 1)]
    return message


@pytest.mark.parametrize("mode", ["default", "sign-in"])
def test_the_crashing_sequence_does_not_end_the_desktop(desktop, tmp_path: Path, mode: str):
    args: tuple[str, ...] = ()
    headers: dict[str, str] = {}
    if mode == "sign-in":
        args = ("--web-users=/users/users",)
        from tests.e2e.test_front_door import COOKIE, PASSWORDS, sign_in, users_text
        users = tmp_path / "users"
        users.mkdir()
        (users / "users").write_text(users_text(alice="full"))
        c = desktop(*args, volumes=(f"{users}:/users:ro",))
    else:
        c = desktop()
    c.wait_status("HEALTHY")
    if mode == "sign-in":
        cookie = sign_in("alice", PASSWORDS["alice"]).cookie()
        headers = {"Cookie": f"{COOKIE}={cookie}"}
    before = xvnc_pid(c)
    for _ in range(3):
        conn = vnc.WebVNC(PORT, None, headers=headers)
        conn.log_in(None if mode == "sign-in" else c.password())
        crash_sequence(conn)
        conn.framebuffer_update()  # Xvnc answered after the message: it read and lived
        conn.close()
    assert c.status() == "HEALTHY\n"
    assert xvnc_pid(c) == before, "the same X server: nothing crashed or restarted"
    assert "HEALTHY" in c.status()


def test_thousands_of_random_messages_leave_xvnc_and_the_desktop_alone(desktop):
    c = desktop()
    c.wait_status("HEALTHY")
    before = xvnc_pid(c)
    password = c.password()
    rng = random.Random(23)
    sent = 0
    for _ in range(CONNECTIONS):
        conn = vnc.WebVNC(PORT, None)
        try:
            conn.log_in(password)
            batch = [random_message(rng) for _ in range(MESSAGES)]
            for message in batch:
                conn.send(message)
                sent += 1
        except OSError:
            pass  # the relay (or Xvnc) ended this connection: the point
        finally:
            conn.close()
        assert c.running(), f"the container stopped after {sent} messages"
    assert sent >= CONNECTIONS * MESSAGES // 2
    refused = [e for e in c.log_lines() if e.get("event") == "desktop_message_refused"]
    assert refused, "malformed messages met the relay's refusal"
    assert xvnc_pid(c) == before, "the same X server: nothing crashed or restarted"
    c.wait_status("HEALTHY", timeout=30)
    assert "RECOVERING" not in c.transitions()
    fresh = vnc.WebVNC(PORT, None)
    try:
        width, height = fresh.log_in(password)
        assert width > 0
        assert height > 0
        assert fresh.framebuffer_update()
    finally:
        fresh.close()
    print(json.dumps({"messages": sent, "refused_connections": len(refused)}))
