"""The server's side of RFC 6455 that whaletop's WebSocket children share: the sound
bridge (sound.py) and the desktop's relay (vncrelay.py), each behind nginx on a UNIX
socket.  Standard library only."""

from __future__ import annotations

import base64
import hashlib

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def parse_upgrade(request: bytes) -> dict[str, str] | None:
    """The headers of a WebSocket upgrade request (names lower-case); None if not one."""
    lines = request.decode("latin-1").split("\r\n")
    if not lines[0].startswith("GET "):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if ("websocket" not in headers.get("upgrade", "").lower()
            or len(headers.get("sec-websocket-key", "")) != 24):
        return None
    return headers


def switching(headers: dict[str, str], protocol: str | None = None) -> bytes:
    """The 101 answer to an upgrade parse_upgrade() took, with `protocol` when given."""
    chosen = f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else ""
    return ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\n" + chosen
            + f"Sec-WebSocket-Accept: {accept_key(headers['sec-websocket-key'])}\r\n\r\n"
            ).encode()


def frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One unmasked, final frame (servers never mask)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
    return head + payload


def unmask(data: bytes, mask: bytes) -> bytes:
    """A client's payload, XORed with its 4-byte mask (one big-integer XOR, not a loop
    over bytes)."""
    n = len(data)
    if not n:
        return data
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
