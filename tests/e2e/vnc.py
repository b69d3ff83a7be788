"""VNC clients for the e2e tests: a real one (vncdotool) on a raw VNC port, and noVNC's
connection without the browser (a WebSocket to /websockify, VNC through it)."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

VNCDO = str(Path(sys.executable).parent / "vncdo")


def capture(password: str, out: Path, port: int) -> subprocess.CompletedProcess[str]:
    """Log in on 127.0.0.1:`port` with `password` and save the screen; returncode 0 only
    on success.  The desktop has no TCP VNC port unless --expose-vnc: pass
    Container.vnc_port() (a bridge to Xvnc's UNIX socket) otherwise."""
    return subprocess.run(
        [VNCDO, "-s", f"127.0.0.1::{port}", "-p", password, "capture", str(out)],
        capture_output=True, text=True, timeout=60, check=False)


def capture_drawn(password: str, out: Path, port: int, attempts: int = 40) -> bool:
    """HEALTHY means a client can log in; the session paints a moment later: retry."""
    for _ in range(attempts):
        if capture(password, out, port).returncode == 0 and looks_drawn(out):
            return True
        time.sleep(0.5)
    return False


def looks_drawn(png: Path) -> bool:
    """A desktop, not a black or grey screen: many colours, and a panel at the bottom."""
    with Image.open(png) as img:
        rgb = img.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        panel = rgb.crop((0, rgb.height - 30, rgb.width, rgb.height))
        panel_colours = panel.getcolors(maxcolors=1 << 16) or []
    return len(colours) > 200 and len(panel_colours) > 10


def _des_response(password: str, challenge: bytes) -> bytes:
    """VNC authentication: the challenge DES-encrypted with the bit-reversed password."""
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode("latin-1")[:8].ljust(8, b"\0"))
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # 3 equal keys: DES
    return encryptor.update(challenge) + encryptor.finalize()


class WebVNC:
    """What noVNC does on 127.0.0.1:`port`: open the WebSocket /websockify (over TLS when
    `tls`, with extra request `headers` such as a sign-in cookie), log in to VNC through
    it (at once when `password` is given, else with log_in()), and keep the connection
    for input events and framebuffer updates."""

    def __init__(self, port: int, password: str | None, tls: bool = False,
                 timeout: float = 10, headers: dict[str, str] | None = None,
                 source: str = "127.0.0.1") -> None:
        # `source`: another loopback address (127.0.0.2) is another client for nginx.
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                       source_address=(source, 0))
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            self.sock: socket.socket = context.wrap_socket(raw)
            self.certificate = hashlib.sha256(
                self.sock.getpeercert(binary_form=True) or b"").hexdigest()
        else:
            self.sock = raw
            self.certificate = ""
        self._buffer = b""
        self.rectangles = 0  # in the last FramebufferUpdate
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET /websockify HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                 "Sec-WebSocket-Protocol: binary", f"Sec-WebSocket-Key: {key}",
                 *(f"{k}: {v}" for k, v in (headers or {}).items())]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError(f"closed during the WebSocket handshake: {head!r}")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            self.sock.close()
            raise ConnectionError(f"no WebSocket upgrade: {status.decode(errors='replace')}")
        if password is not None:
            self.log_in(password)

    # -- the WebSocket's binary stream -------------------------------------------------

    def _read_socket(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
        return data

    def recv(self, size: int) -> bytes:
        while len(self._buffer) < size:
            head = self._read_socket(2)
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._read_socket(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._read_socket(8))[0]
            payload = self._read_socket(length) if length else b""
            if opcode == 0x8:
                raise ConnectionError("the server closed the WebSocket")
            if opcode in (0x0, 0x2):
                self._buffer += payload
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def send(self, data: bytes) -> None:
        mask = os.urandom(4)
        n = len(data)
        length = (bytes([0x80 | n]) if n < 126
                  else bytes([0x80 | 126]) + struct.pack("!H", n) if n < 65536
                  else bytes([0x80 | 127]) + struct.pack("!Q", n))
        self.sock.sendall(b"\x82" + length + mask
                          + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    # -- RFB ---------------------------------------------------------------------------

    def log_in(self, password: str | None) -> tuple[int, int]:
        """RFB 3.8, VNC authentication with `password` (None: the "None" security type
        the relay offers a signed-in browser), ClientInit (shared: others stay
        connected); the screen's size from ServerInit."""
        if not self.recv(12).startswith(b"RFB "):
            raise ConnectionError("no RFB banner")
        self.send(b"RFB 003.008\n")
        types = self.recv(self.recv(1)[0])
        if password is None:
            if 1 not in types:
                raise ConnectionError(f"no None security offered: {list(types)}")
            self.send(b"\x01")
        else:
            if 2 not in types:
                raise ConnectionError(f"no VNC authentication offered: {list(types)}")
            self.send(b"\x02")
            self.send(_des_response(password, self.recv(16)))
        if self.recv(4) != b"\0\0\0\0":
            reason = self.recv(struct.unpack("!I", self.recv(4))[0])
            raise PermissionError(f"VNC authentication failed: {reason!r}")
        self.send(b"\x01")
        self.width, self.height = struct.unpack("!HH", self.recv(4))
        self.bits_per_pixel = self.recv(16)[0]
        self.name = self.recv(struct.unpack("!I", self.recv(4))[0]).decode()
        return self.width, self.height

    def wait_closed(self, timeout: float) -> str:
        """Read (and drop) what the server sends until it closes the connection: the
        reason its close frame gave ("" for none).  TimeoutError if it stays open."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                head = self._read_socket(2)
                length = head[1] & 0x7F
                if length == 126:
                    length = struct.unpack("!H", self._read_socket(2))[0]
                elif length == 127:
                    length = struct.unpack("!Q", self._read_socket(8))[0]
                payload = self._read_socket(length) if length else b""
            except ConnectionError:
                return ""
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"still open after {timeout} s") from None
                continue
            if head[0] & 0x0F == 0x8:
                return payload[2:].decode(errors="replace")

    def pointer(self, x: int, y: int, buttons: int = 0) -> None:
        self.send(b"\x05" + bytes([buttons]) + struct.pack("!HH", x, y))

    def key(self, keysym: int) -> None:
        for down in (1, 0):
            self.send(b"\x04" + bytes([down]) + b"\0\0" + struct.pack("!I", keysym))

    def framebuffer_update(self) -> bytes:
        """Ask for the top-left pixel (raw encoding, the default) and return it.  The
        server handles a client's messages in order: everything sent before this has
        been dealt with once it returns."""
        return self._update(False, 0, 0, 1, 1)

    def screen_changes(self) -> int:
        """An incremental request for the whole screen, as noVNC sends them: the server
        answers only once something on it changed.  How many rectangles came."""
        self._update(True, 0, 0, self.width, self.height)
        return self.rectangles

    def _update(self, incremental: bool, x: int, y: int, w: int, h: int) -> bytes:
        self.send(struct.pack("!BBHHHH", 3, int(incremental), x, y, w, h))
        while True:
            kind = self.recv(1)[0]
            if kind == 0:
                self.recv(1)
                pixels = b""
                self.rectangles = struct.unpack("!H", self.recv(2))[0]
                for _ in range(self.rectangles):
                    _x, _y, w, h, encoding = struct.unpack("!HHHHi", self.recv(12))
                    assert encoding == 0, encoding
                    pixels += self.recv(w * h * self.bits_per_pixel // 8)
                return pixels
            if kind == 1:  # SetColourMapEntries
                self.recv(3)
                self.recv(struct.unpack("!H", self.recv(2))[0] * 6)
            elif kind == 2:  # Bell
                continue
            elif kind == 3:  # ServerCutText
                self.recv(3)
                self.recv(struct.unpack("!I", self.recv(4))[0])
            else:
                raise ConnectionError(f"unexpected server message {kind}")

    def close(self) -> None:
        self.sock.close()
