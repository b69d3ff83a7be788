"""A tiny RFB 3.8 server for the tests, over TCP, a UNIX socket or a WebSocket (as
websockify serves it), with an independent VNC authentication oracle: what the health
checks (test_probes.py) and nginx in front (test_nginx_conf.py) are tried against."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

TIMEOUT = 2.0


# -- an independent VNC authentication oracle -------------------------------------------

def _reverse_bits(byte: int) -> int:
    out = 0
    for i in range(8):
        if byte & (1 << i):
            out |= 1 << (7 - i)
    return out


def vnc_key(password: str) -> bytes:
    """VNC's DES key: the first 8 password bytes, NUL-padded, each byte bit-reversed."""
    raw = password.encode("ascii")[:8]
    raw += b"\0" * (8 - len(raw))
    return bytes(_reverse_bits(b) for b in raw)


def vnc_response(password: str, challenge: bytes) -> bytes:
    key = vnc_key(password)
    # Three equal DES keys make 3DES single DES (without the deprecated 8-byte form).
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


# -- a tiny RFB 3.8 server, over TCP or over a WebSocket as websockify serves it ---------

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class _TCP:
    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn

    def recv(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.conn.recv(size - len(data))
            if not chunk:
                raise OSError("client went away")
            data += chunk
        return data

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)


class _WS(_TCP):
    """Server side of RFC 6455 binary frames: client frames are masked, ours are not.
    Each send is split in two frames with a ping between, as a real server may do."""

    def __init__(self, conn: socket.socket) -> None:
        super().__init__(conn)
        self.buffer = b""

    def recv(self, size: int) -> bytes:
        while len(self.buffer) < size:
            head = super().recv(2)
            assert head[1] & 0x80, "client frames must be masked"
            length = head[1] & 0x7F
            mask = super().recv(4)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(super().recv(length)))
            if head[0] & 0x0F == 0x2:
                self.buffer += payload
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def send(self, data: bytes) -> None:
        half = len(data) // 2
        for part in (data[:half], data[half:]):
            if part:
                self.conn.sendall(bytes([0x82, len(part)]) + part)
            self.conn.sendall(b"\x89\x00")  # a ping: carries no RFB bytes


@dataclass
class RFBServer:
    """Serves each connection according to `mode`; records what clients sent.

    transport "ws" puts a WebSocket handshake (on `ws_path`) in front, like websockify;
    with `unix` it listens on that UNIX socket instead of a TCP port (Xvnc's
    -rfbunixpath, websockify's --unix-listen).
    """

    password: str = "s3cretpw"
    mode: str = "auth"  # auth | refuse | none-only | silent | close | http | bad-accept
    transport: str = "tcp"
    ws_path: str = "/websockify"
    port: int = 0
    client_versions: list[bytes] = field(default_factory=list)
    chosen_types: list[int] = field(default_factory=list)
    results: list[int] = field(default_factory=list)
    ws_requests: list[bytes] = field(default_factory=list)
    pages: dict[str, bytes] = field(default_factory=dict)
    unix: Path | None = None

    def __post_init__(self) -> None:
        if self.unix is None:
            self._sock = socket.create_server(("127.0.0.1", 0), backlog=64)
            self.port = self._sock.getsockname()[1]
        else:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.bind(str(self.unix))
            self._sock.listen(64)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            # Each connection in its own thread: nginx in front opens several at once.
            threading.Thread(target=self._serve_one, args=(conn,), daemon=True).start()

    def _serve_one(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(TIMEOUT)
                self._handle(conn)
            except OSError:
                pass

    def _upgrade(self, conn: socket.socket) -> _TCP | None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(1)
            if not chunk:
                return None
            head += chunk
        self.ws_requests.append(head)
        path = head.split(b" ")[1].decode()
        if path in self.pages:
            body = self.pages[path]
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            return None
        if not head.startswith(f"GET {self.ws_path} ".encode()):
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return None
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        if self.mode == "bad-accept":
            accept = base64.b64encode(b"not the right digest")
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Protocol: binary\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        return _WS(conn)

    def _handle(self, conn: socket.socket) -> None:
        if self.mode == "close":
            return
        if self.mode == "silent":
            while conn.recv(1024):  # reads, never answers: the client's timeout ends it
                pass
            return
        if self.mode == "http":
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            return
        io = self._upgrade(conn) if self.transport == "ws" else _TCP(conn)
        if io is None:
            return
        io.send(b"RFB 003.008\n")
        self.client_versions.append(io.recv(12))
        if self.mode == "refuse":
            reason = b"Too many security failures"
            io.send(b"\x00" + len(reason).to_bytes(4, "big") + reason)
            return
        io.send(b"\x01\x01" if self.mode == "none-only" else b"\x02\x10\x02")
        chosen = io.recv(1)[0]
        self.chosen_types.append(chosen)
        if chosen != 2:
            return
        challenge = os.urandom(16)
        io.send(challenge)
        response = io.recv(16)
        result = 0 if response == vnc_response(self.password, challenge) else 1
        self.results.append(result)
        io.send(result.to_bytes(4, "big"))
        if result:
            reason = b"Authentication failed"
            io.send(len(reason).to_bytes(4, "big") + reason)

    def close(self) -> None:
        self._sock.close()
        if self.unix is not None:
            self.unix.unlink(missing_ok=True)
