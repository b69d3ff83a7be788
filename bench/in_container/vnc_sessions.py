"""VNC sessions through the web port, as noVNC opens them, kept open across a change.

    python3 -c SOURCE PORT COUNT [--tls] [--password-file FILE]

Opens COUNT WebSocket connections to 127.0.0.1:PORT/websockify (TLS with --tls, not
verified: the bench's own certificates), logs in to VNC through each (VNC
authentication, the password from the state folder), asks for a screen update and
reads it, then keeps reading like a client: after each update it asks for the next
(incremental).  Prints {"ready": COUNT, ...} once every session has had its first
update, then waits for a line on stdin; on it, asks each session for a full update
(non-incremental) of a corner of the screen and waits for one to arrive, and prints
{"opened", "alive", "dropped", "sessions": [...], "nginx_workers": [...]}.  A session
is dropped when its connection ended or it got no update within the limit.

The standard library and cryptography (VNC authentication's DES) only: the runner
hands the source to the image's python3.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PASSWORD_FILE = Path("/opt/whaletop/vnc_passwd")
CORNER = (0, 0, 64, 64)  # the region asked for: small, so the reads cost little
CHECK_LIMIT = 10.0


class SessionError(Exception):
    pass


def des_response(password: str, challenge: bytes) -> bytes:
    """VNC authentication: DES-encrypt the challenge with the bit-reversed password."""
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    try:  # cryptography >= 43 keeps (3)DES in "decrepit"
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    except ImportError:  # pragma: no cover - depends on the installed version
        from cryptography.hazmat.primitives.ciphers.algorithms import (  # type: ignore[attr-defined,no-redef,unused-ignore]
            TripleDES,
        )
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode("latin-1")[:8].ljust(8, b"\0"))
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # 3 equal keys: DES
    return encryptor.update(challenge) + encryptor.finalize()


def ws_frame(payload: bytes) -> bytes:
    """A masked binary frame, as a client sends."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = bytes([0x82, 0x80 | size])
    elif size < 1 << 16:
        head = bytes([0x82, 0x80 | 126]) + struct.pack("!H", size)
    else:
        head = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", size)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Session:
    """One VNC client over a WebSocket; its reader thread counts the updates."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._raw = b""
        self._payload = b""
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self.updates = 0
        self.last_update = 0.0
        self.error: str | None = None
        self.closed = False
        self.bytes_per_pixel = 4
        self.size = (0, 0)
        self._thread = threading.Thread(target=self._read_loop, daemon=True)

    # -- bytes ---------------------------------------------------------------------------

    def _recv_raw(self, size: int) -> bytes:
        while len(self._raw) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SessionError("connection closed")
            self._raw += chunk
        data, self._raw = self._raw[:size], self._raw[size:]
        return data

    def _frame(self) -> bytes:
        head = self._recv_raw(2)
        opcode, size = head[0] & 0x0F, head[1] & 0x7F
        if size == 126:
            size = struct.unpack("!H", self._recv_raw(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", self._recv_raw(8))[0]
        mask = self._recv_raw(4) if head[1] & 0x80 else b""
        payload = self._recv_raw(size) if size else b""
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        if opcode == 0x8:
            raise SessionError("the server closed the WebSocket")
        if opcode == 0x9:  # ping: answer as a client must
            self.send(payload, opcode=0xA)
            return b""
        return payload if opcode in (0x0, 0x2) else b""

    def recv(self, size: int) -> bytes:
        """`size` bytes of the RFB stream (the WebSocket frames' payloads)."""
        while len(self._payload) < size:
            self._payload += self._frame()
        data, self._payload = self._payload[:size], self._payload[size:]
        return data

    def skip(self, size: int) -> None:
        while size > 0:
            if not self._payload:
                self._payload = self._frame()
            taken = min(size, len(self._payload))
            self._payload = self._payload[taken:]
            size -= taken

    def send(self, data: bytes, opcode: int = 0x2) -> None:
        frame = ws_frame(data)
        if opcode != 0x2:
            frame = bytes([0x80 | opcode]) + frame[1:]
        with self._send_lock:
            self.sock.sendall(frame)

    # -- the protocols -------------------------------------------------------------------

    def upgrade(self, host: str, port: int, path: str = "/websockify") -> None:
        key = base64.b64encode(os.urandom(16))
        request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                   f"Sec-WebSocket-Protocol: binary\r\nSec-WebSocket-Key: {key.decode()}\r\n"
                   "\r\n")
        self.sock.sendall(request.encode())
        while b"\r\n\r\n" not in self._raw:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise SessionError("connection closed during the WebSocket handshake")
            self._raw += chunk
        head, self._raw = self._raw.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise SessionError(f"no WebSocket upgrade: {status.decode(errors='replace')}")
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        if accept not in head:
            raise SessionError("bad Sec-WebSocket-Accept")

    def login(self, password: str) -> str:
        banner = self.recv(12)
        if not banner.startswith(b"RFB "):
            raise SessionError(f"no RFB banner: {banner!r}")
        self.send(b"RFB 003.008\n")
        count = self.recv(1)[0]
        if count == 0:
            reason = self.recv(int.from_bytes(self.recv(4), "big"))
            raise SessionError(f"refused: {reason.decode(errors='replace')}")
        if 2 not in self.recv(count):
            raise SessionError("no VNC authentication offered")
        self.send(b"\x02")
        self.send(des_response(password, self.recv(16)))
        if int.from_bytes(self.recv(4), "big") != 0:
            raise SessionError("authentication failed")
        self.send(b"\x01")  # ClientInit: shared, as noVNC
        width, height = struct.unpack("!HH", self.recv(4))
        pixel_format = self.recv(16)
        self.recv(int.from_bytes(self.recv(4), "big"))  # the desktop's name
        self.size = (width, height)
        self.bytes_per_pixel = max(1, pixel_format[0] // 8)
        self.send(struct.pack("!BBHi", 2, 0, 1, 0))  # SetEncodings: Raw only
        return banner.decode(errors="replace").strip()

    def request(self, incremental: bool, region: tuple[int, int, int, int] = CORNER) -> None:
        x, y, w, h = region
        w, h = min(w, self.size[0] - x), min(h, self.size[1] - y)
        self.send(struct.pack("!BBHHHH", 3, int(incremental), x, y, w, h))

    def read_message(self) -> None:
        kind = self.recv(1)[0]
        if kind == 0:  # FramebufferUpdate
            rects = struct.unpack("!xH", self.recv(3))[0]
            for _ in range(rects):
                _, _, w, h, encoding = struct.unpack("!HHHHi", self.recv(12))
                if encoding != 0:
                    raise SessionError(f"encoding {encoding} was not asked for")
                self.skip(w * h * self.bytes_per_pixel)
            with self._cond:
                self.updates += 1
                self.last_update = time.time()
                self._cond.notify_all()
            self.request(incremental=True)  # and the next one, as a client does
        elif kind == 1:  # SetColourMapEntries
            colours = struct.unpack("!xHH", self.recv(5))[1]
            self.skip(6 * colours)
        elif kind == 2:  # Bell
            pass
        elif kind == 3:  # ServerCutText
            self.recv(3)
            self.skip(int.from_bytes(self.recv(4), "big"))
        else:
            raise SessionError(f"unexpected server message {kind}")

    # -- running -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def _read_loop(self) -> None:
        try:
            while True:
                self.read_message()
        except (OSError, SessionError, struct.error) as exc:
            with self._cond:
                self.error = f"{type(exc).__name__}: {exc}"
                self.closed = True
                self._cond.notify_all()

    def wait_update(self, after: int, limit: float) -> bool:
        """Whether an update beyond the first `after` came within `limit` seconds."""
        deadline = time.monotonic() + limit
        with self._cond:
            while self.updates <= after and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return self.updates > after

    def check(self, limit: float = CHECK_LIMIT) -> bool:
        """A full update of the corner, asked for now, arrives."""
        if self.closed:
            return False
        with self._cond:
            seen = self.updates
        try:
            self.request(incremental=False)
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return False
        return self.wait_update(seen, limit)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def open_session(host: str, port: int, password: str, tls: bool,
                 timeout: float = 10.0) -> Session:
    """Connected, logged in, first update read, reader running."""
    sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(sock, server_hostname=host)
    session = Session(sock)
    try:
        session.upgrade(host, port)
        session.login(password)
        session.request(incremental=False)
        session.read_message()  # the first update (and the next incremental request)
    except BaseException:
        session.close()
        raise
    sock.settimeout(None)  # from now on it waits for the server like a client does
    session.start()
    return session


def nginx_workers(proc: Path = Path("/proc")) -> list[str]:
    """Titles of nginx's worker processes: after a reload, an old one that still serves
    a connection says it is shutting down."""
    out = []
    for cmdline in proc.glob("[0-9]*/cmdline"):
        try:
            title = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if title.startswith("nginx: worker process"):
            out.append(title)
    return sorted(out)


def run(port: int, count: int, tls: bool, password: str, stdin: TextIO = sys.stdin,
        out: TextIO = sys.stdout, host: str = "127.0.0.1",
        limit: float = CHECK_LIMIT) -> dict[str, Any]:
    sessions = [open_session(host, port, password, tls) for _ in range(count)]
    print(json.dumps({"ready": len(sessions), "t": time.time(),
                      "screen": list(sessions[0].size) if sessions else None,
                      "nginx_workers": nginx_workers()}), file=out, flush=True)
    stdin.readline()
    t_check = time.time()
    alive = [s.check(limit) for s in sessions]
    result = {
        "opened": len(sessions), "alive": sum(alive), "dropped": len(sessions) - sum(alive),
        "t_check": t_check,
        "sessions": [{"alive": ok, "updates": s.updates, "error": s.error,
                      "last_update_s": round(s.last_update - t_check, 3) if s.updates else None}
                     for s, ok in zip(sessions, alive, strict=True)],
        "nginx_workers": nginx_workers()}
    print(json.dumps(result), file=out, flush=True)
    for s in sessions:
        s.close()
    return result


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="vnc_sessions")
    p.add_argument("port", type=int)
    p.add_argument("count", type=int)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--password-file", type=Path, default=PASSWORD_FILE)
    args = p.parse_args(argv)
    run(args.port, args.count, args.tls, args.password_file.read_text().strip())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
