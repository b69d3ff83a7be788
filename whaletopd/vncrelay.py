"""The desktop's WebSocket relay: noVNC's WebSocket in, Xvnc's RFB socket out, with a gate.

    python3 -m whaletopd.vncrelay --socket PATH --settings FILE

The desktop user's child (programs.py row "websockify": it took websockify's place, and
noVNC still asks for /websockify).  nginx proxies /websockify to PATH, a UNIX socket, after
its own checks (sign-in, Origin, limits); the relay speaks the server side of RFC 6455
itself and opens one connection to Xvnc per client, as websockify did.  Unlike websockify
it reads what the client says:

- Every client message is parsed (RFB 3.8, client to server).  A message Xvnc does not
  know, or one malformed (a pixel format no server can serve, a count out of bounds)
  ends that connection, never the desktop.  A message the client may only send once the
  server said it understands it (the pseudo-encodings of SetEncodings) is dropped until
  then: TigerVNC 1.15 crashes on a SetDesktopSize from a client that never asked for
  ExtendedDesktopSize.
- With sign-in, the browser never learns a VNC password.  nginx passes who signed in
  (X-Whaletop-User), their role and their grant (X-Whaletop-Role/-Grant, from the sign-in
  service); the relay logs in to Xvnc itself, with the view-only password for a viewer,
  and offers the browser RFB's "None" security.  A viewer's input (keys, pointer,
  clipboard, resize) is dropped here as well.  The sign-in service publishes the grants
  that are still good (grants file: a session or a user's password, with its role);
  when one ends (sign-out, expiry, a new role or password, removal from the users file)
  its connections are closed at the next look, at most GRANTS_POLL later.
- Without sign-in, the client logs in with the VNC password as before (the original's
  promise): the relay passes the authentication through and gates only the messages.

Standard library only; one asyncio loop for every connection.  Its lines on stdout are
JSON objects (whaletopd keeps their fields).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import stat
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from whaletopd.rfbauth import PROBE_GRANT, vnc_des_response
from whaletopd.websocket import frame, parse_upgrade, switching, unmask

MAX_REQUEST = 8192
MAX_MESSAGE = 16 * 1024 * 1024  # one WebSocket message from a client (a large paste)
MAX_CUT_TEXT = 16 * 1024 * 1024
MAX_ENCODINGS = 1024
CHUNK = 256 * 1024  # read from Xvnc at once: one frame to the client per read
GRANTS_POLL = 0.3  # seconds between looks at the grants file while a grant is connected
ROLES = ("full", "viewer")

# RFB pseudo-encodings that unlock client messages (rfbproto: "Pseudo-encodings").
EXTENDED_DESKTOP_SIZE = -308
FENCE = -312
CONTINUOUS_UPDATES = -313
QEMU_EXTENDED_KEY = -258
# Client messages (rfbproto: "Client to Server Messages").
SET_PIXEL_FORMAT, SET_ENCODINGS, UPDATE_REQUEST, KEY, POINTER, CUT_TEXT = 0, 2, 3, 4, 5, 6
CONTINUOUS, FENCE_MSG, SET_DESKTOP_SIZE, QEMU = 150, 248, 251, 255
INPUT = frozenset({KEY, POINTER, CUT_TEXT, SET_DESKTOP_SIZE, QEMU})


def log(event: str, level: str = "info", **fields: object) -> None:
    print(json.dumps({"event": event, "level": level, **fields}), flush=True)


class Refused(Exception):
    """The client said something the relay does not pass on: its connection ends."""


# -- RFC 6455 (websocket.py) ---------------------------------------------------------------

def upgrade(headers: dict[str, str]) -> bytes:
    """The 101 answer, with noVNC's "binary" subprotocol when it offered it."""
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
    return switching(headers, "binary" if "binary" in offered else None)


def refusal(status: int, reason: str) -> bytes:
    body = (reason + "\n").encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def close_frame(code: int, reason: str) -> bytes:
    return frame(code.to_bytes(2, "big") + reason.encode()[:120], 0x8)


class WebSocketReader:
    """A client's messages (masked frames, fragments joined); pings answered."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def message(self) -> bytes | None:
        """The next data message's payload; None when the client closed."""
        parts: list[bytes] = []
        size = 0
        while True:
            b0, b1 = await self.reader.readexactly(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if not b1 & 0x80:
                raise Refused("an unmasked frame from a client")
            if n == 126:
                n = int.from_bytes(await self.reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self.reader.readexactly(8), "big")
            if opcode >= 0x8 and (n > 125 or not b0 & 0x80):
                raise Refused("a malformed control frame")
            size += n
            if size > MAX_MESSAGE:
                raise Refused(f"a message over {MAX_MESSAGE} bytes")
            mask = await self.reader.readexactly(4)
            payload = unmask(await self.reader.readexactly(n), mask)
            if opcode == 0x8:
                return None
            if opcode == 0x9:
                self.writer.write(frame(payload, 0xA))
                continue
            if opcode == 0xA:
                continue
            if opcode == 0x1:
                raise Refused("a text message (RFB is binary)")
            if opcode not in (0x0, 0x2) or (opcode == 0x0) != bool(parts):
                raise Refused(f"an unexpected frame (opcode {opcode})")
            parts.append(payload)
            if b0 & 0x80:
                return b"".join(parts)


# -- RFB, the client's side of the conversation ------------------------------------------

def _valid_pixel_format(pf: bytes) -> bool:
    bpp, depth, _big, true_colour = pf[0], pf[1], pf[2], pf[3]
    if bpp not in (8, 16, 32) or not 0 < depth <= bpp or true_colour > 1:
        return False
    if not true_colour:
        return True
    maxima = struct.unpack("!HHH", pf[4:10])
    shifts = pf[10:13]
    return all(m and (m & (m + 1)) == 0 and s < bpp for m, s in zip(maxima, shifts,
                                                                      strict=True))


@dataclass
class ClientMessages:
    """Splits what a client sends, once logged in, into RFB messages; passes on those
    Xvnc may see.  `viewer`: watch only (input dropped)."""

    viewer: bool
    buffer: bytearray = field(default_factory=bytearray)
    encodings: frozenset[int] = frozenset()
    dropped: int = 0

    def feed(self, data: bytes) -> bytes:
        """What to send on to Xvnc (whole messages only).  Raises Refused."""
        self.buffer += data
        out = bytearray()
        for message in self._messages():
            if self._allowed(message):
                out += message
            else:
                self.dropped += 1
        return bytes(out)

    def _messages(self) -> Iterator[bytes]:
        buf = self.buffer
        while buf:
            size = self._size(buf)
            if size is None or len(buf) < size:
                return
            message = bytes(buf[:size])
            del buf[:size]
            yield message

    def _size(self, buf: bytearray) -> int | None:
        """The whole message's length, None until enough is there to tell."""
        kind, have = buf[0], len(buf)

        def need(n: int) -> bool:
            return have >= n

        if kind == SET_PIXEL_FORMAT:
            if need(20) and not _valid_pixel_format(bytes(buf[4:20])):
                raise Refused("a pixel format no server can serve")
            return 20
        if kind == SET_ENCODINGS:
            if not need(4):
                return None
            count: int = struct.unpack_from("!H", buf, 2)[0]
            if count > MAX_ENCODINGS:
                raise Refused(f"{count} encodings")
            return 4 + 4 * count
        if kind == UPDATE_REQUEST:
            return 10
        if kind == KEY:
            return 8
        if kind == POINTER:
            return 6
        if kind == CUT_TEXT:
            if not need(8):
                return None
            length: int = struct.unpack_from("!i", buf, 4)[0]
            if abs(length) > MAX_CUT_TEXT:
                raise Refused("clipboard text over the limit")
            return 8 + abs(length)
        if kind == CONTINUOUS:
            return 10
        if kind == FENCE_MSG:
            if not need(9):
                return None
            if buf[8] > 64:
                raise Refused("a fence over 64 bytes")
            return 9 + buf[8]
        if kind == SET_DESKTOP_SIZE:
            if not need(8):
                return None
            screens = buf[6]
            if screens == 0:
                raise Refused("a desktop size with no screen")
            return 8 + 16 * screens
        if kind == QEMU:
            if not need(2):
                return None
            if buf[1] != 0:
                raise Refused(f"QEMU message {buf[1]} (only extended key events)")
            return 12
        raise Refused(f"unknown message type {kind}")

    def _allowed(self, message: bytes) -> bool:
        kind = message[0]
        if kind == SET_ENCODINGS:
            count = struct.unpack_from("!H", message, 2)[0]
            self.encodings = frozenset(struct.unpack_from(f"!{count}i", message, 4))
            return True
        if self.viewer and kind in INPUT:
            return False
        if kind == SET_DESKTOP_SIZE:
            w, h = struct.unpack_from("!HH", message, 2)
            return EXTENDED_DESKTOP_SIZE in self.encodings and 0 < w <= 16384 and 0 < h <= 16384
        if kind == FENCE_MSG:
            return FENCE in self.encodings
        if kind == CONTINUOUS:
            return CONTINUOUS_UPDATES in self.encodings
        if kind == QEMU:
            return QEMU_EXTENDED_KEY in self.encodings
        return True


# -- who may stay connected ----------------------------------------------------------------

class Grants:
    """The grants file the sign-in service keeps ({"grants": {GRANT: ROLE}}), re-read
    when it changes.  Missing or unreadable: nothing is granted (fail closed)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._key: object = ()  # never a stat's: the first look reads
        self.roles: dict[str, str] = {}

    def refresh(self) -> bool:
        """Re-read when changed; True when it was."""
        if self.path is None:
            return False
        try:
            st = os.stat(self.path)
            key: object = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            key = None
        if key == self._key:
            return False
        self._key = key
        roles: dict[str, str] = {}
        if key is not None:
            try:
                doc = json.loads(self.path.read_bytes()[:4 * 1024 * 1024])
                roles = {str(g): str(r) for g, r in doc["grants"].items() if r in ROLES}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                log("grants_unreadable", "warning", reason=type(e).__name__)
        self.roles = roles
        return True

    def role(self, grant: str) -> str | None:
        if grant == PROBE_GRANT:
            return "full"
        return self.roles.get(grant)


@dataclass(frozen=True)
class Settings:
    vnc_socket: Path
    sign_in: bool
    password: str = field(repr=False)
    view_only_password: str | None = field(repr=False)
    grants_file: Path | None

    @classmethod
    def load(cls, path: Path) -> Settings:
        doc = json.loads(path.read_text("utf-8"))
        view_only = doc.get("view_only_password")
        grants = doc.get("grants_file")
        s = cls(Path(doc["vnc_socket"]), bool(doc["sign_in"]), str(doc["password"]),
                str(view_only) if view_only else None, Path(grants) if grants else None)
        if s.sign_in and s.grants_file is None:
            raise ValueError(f"{path}: sign-in needs 'grants_file'")
        return s


# -- one connection ------------------------------------------------------------------------

@dataclass(eq=False)
class Connection:
    user: str
    role: str
    grant: str
    client: asyncio.StreamWriter
    opened: float = field(default_factory=time.monotonic)
    ended: str = ""

    def end(self, reason: str, code: int = 1008) -> None:
        """Close it from outside (access taken back): the client hears why."""
        if self.ended:
            return
        self.ended = reason
        with contextlib.suppress(Exception):
            self.client.write(close_frame(code, reason))
            self.client.close()


async def login_to_xvnc(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        password: str) -> None:
    """RFB 3.8 and VNC authentication as a client, up to (not including) ClientInit."""
    banner = await reader.readexactly(12)
    if not banner.startswith(b"RFB 003."):
        raise ConnectionError(f"no RFB banner from Xvnc ({banner!r})")
    writer.write(b"RFB 003.008\n")
    count = (await reader.readexactly(1))[0]
    if count == 0:
        size = int.from_bytes(await reader.readexactly(4), "big")
        raise ConnectionError("Xvnc refused: " + (await reader.readexactly(min(size, 1024)))
                              .decode(errors="replace"))
    if 2 not in await reader.readexactly(count):
        raise ConnectionError("Xvnc offers no VNC authentication")
    writer.write(b"\x02")
    writer.write(vnc_des_response(password, await reader.readexactly(16)))
    if await reader.readexactly(4) != b"\0\0\0\0":
        raise ConnectionError("Xvnc refused the relay's password")


class Relay:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.grants = Grants(settings.grants_file)
        self.connections: set[Connection] = set()
        self._watcher: asyncio.Future[None] | None = None

    # -- the gate --

    def who(self, headers: dict[str, str]) -> tuple[str, str, str] | str:
        """(user, role, grant) of a request nginx passed on, or why it is refused."""
        if not self.settings.sign_in:
            return "(VNC password)", "", ""
        grant = headers.get("x-whaletop-grant", "")
        role = headers.get("x-whaletop-role", "")
        user = headers.get("x-whaletop-user", "")[:64]
        if not grant or role not in ROLES:
            return "not signed in"
        self.grants.refresh()
        granted = self.grants.role(grant)
        if granted is None:
            return "access was taken back"
        if granted != role:
            return "the role changed"
        return user, role, grant

    def _signed(self) -> list[Connection]:
        return [c for c in self.connections if c.grant and c.grant != PROBE_GRANT]

    def enforce(self) -> None:
        """Ends the connections whose grant ended or whose role changed.  Every open
        one is compared each time, not only when the file just changed: a new request
        (who()) may have read the change first."""
        self.grants.refresh()
        for c in self._signed():
            role = self.grants.role(c.grant)
            if role != c.role:
                c.end("access taken back" if role is None else "role changed")

    async def watch_grants(self) -> None:
        """enforce() every GRANTS_POLL, only while a signed-in connection is open: an
        idle desktop is not woken for it."""
        while self._signed():
            self.enforce()
            await asyncio.sleep(GRANTS_POLL)

    # -- serving --

    async def serve(self, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            writer.close()
            return
        headers = parse_upgrade(request)
        if headers is None:
            writer.write(refusal(400, "Bad Request"))
            writer.close()
            return
        who = self.who(headers)
        if isinstance(who, str):
            log("desktop_refused", "warning", reason=who,
                user=headers.get("x-whaletop-user", "")[:64] or None)
            writer.write(refusal(403, "Forbidden"))
            writer.close()
            return
        user, role, grant = who
        try:
            xreader, xwriter = await asyncio.open_unix_connection(
                str(self.settings.vnc_socket), limit=CHUNK)
        except OSError as e:
            log("desktop_unreachable", "error", reason=str(e))
            writer.write(refusal(502, "Bad Gateway"))
            writer.close()
            return
        conn = Connection(user, role, grant, writer)
        self.connections.add(conn)
        if self._signed() and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.ensure_future(self.watch_grants())
        try:
            await self._relay(conn, headers, reader, writer, xreader, xwriter)
        finally:
            self.connections.discard(conn)
            xwriter.close()
            writer.close()
            if grant != PROBE_GRANT:
                log("desktop_closed", user=user, role=role or None,
                    seconds=round(time.monotonic() - conn.opened, 1),
                    reason=conn.ended or "closed")

    async def _relay(self, conn: Connection, headers: dict[str, str],
                     reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     xreader: asyncio.StreamReader, xwriter: asyncio.StreamWriter) -> None:
        sign_in = self.settings.sign_in
        if sign_in:
            password = (self.settings.view_only_password
                        if conn.role == "viewer" and self.settings.view_only_password
                        else self.settings.password)
            try:
                await asyncio.wait_for(login_to_xvnc(xreader, xwriter, password), 10)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                log("desktop_unreachable", "error", reason=str(e) or type(e).__name__)
                writer.write(refusal(502, "Bad Gateway"))
                conn.ended = "Xvnc did not let the relay in"
                return
        writer.write(upgrade(headers))
        if conn.grant != PROBE_GRANT:
            log("desktop_opened", user=conn.user, role=conn.role or None)
        ws = WebSocketReader(reader, writer)
        messages = ClientMessages(viewer=conn.role == "viewer")
        tasks: set[asyncio.Future[None]] = set()
        try:
            if sign_in:
                rest = await self._none_security(ws, writer, xwriter)
            tasks.add(asyncio.ensure_future(self._to_client(xreader, writer)))
            if not sign_in:
                rest = await self._pass_authentication(ws, xwriter)
            tasks.add(asyncio.ensure_future(self._to_xvnc(ws, messages, rest, xwriter)))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if (exc := task.exception()) is not None:
                    raise exc
        except Refused as e:
            log("desktop_message_refused", "warning", user=conn.user,
                role=conn.role or None, reason=str(e))
            conn.end(f"refused: {e}")
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, OSError) as e:
            if not conn.ended:
                conn.ended = str(e) or type(e).__name__
        finally:
            for task in tasks:
                task.cancel()

    async def _client_bytes(self, ws: WebSocketReader, buffer: bytearray, n: int) -> bytes:
        while len(buffer) < n:
            message = await ws.message()
            if message is None:
                raise ConnectionError("the client closed")
            buffer += message
        data = bytes(buffer[:n])
        del buffer[:n]
        return data

    async def _none_security(self, ws: WebSocketReader, writer: asyncio.StreamWriter,
                             xwriter: asyncio.StreamWriter) -> bytes:
        """The browser's side with sign-in: RFB 3.8 (or 3.7), security None; its
        ClientInit goes on to Xvnc.  What it sent after that is returned."""
        buf = bytearray()
        writer.write(frame(b"RFB 003.008\n"))
        version = await self._client_bytes(ws, buf, 12)
        if version not in (b"RFB 003.008\n", b"RFB 003.007\n"):
            raise Refused(f"RFB version {version!r} (3.7 or 3.8 only)")
        writer.write(frame(b"\x01\x01"))
        if await self._client_bytes(ws, buf, 1) != b"\x01":
            raise Refused("a security type that was not offered")
        if version == b"RFB 003.008\n":
            writer.write(frame(b"\0\0\0\0"))
        await self._client_bytes(ws, buf, 1)
        xwriter.write(b"\x01")  # ClientInit, shared (Xvnc runs -AlwaysShared anyway)
        return bytes(buf)

    async def _pass_authentication(self, ws: WebSocketReader,
                                   xwriter: asyncio.StreamWriter) -> bytes:
        """Without sign-in: the client logs in to Xvnc with the VNC password itself
        (Xvnc's side goes to it as it comes); its own side is checked on the way."""
        buf = bytearray()
        version = await self._client_bytes(ws, buf, 12)
        if version not in (b"RFB 003.008\n", b"RFB 003.007\n"):
            raise Refused(f"RFB version {version!r} (3.7 or 3.8 only)")
        xwriter.write(version)
        if await self._client_bytes(ws, buf, 1) != b"\x02":
            raise Refused("a security type other than VNC authentication")
        xwriter.write(b"\x02")
        xwriter.write(await self._client_bytes(ws, buf, 16))
        xwriter.write(await self._client_bytes(ws, buf, 1))  # ClientInit
        return bytes(buf)

    async def _to_xvnc(self, ws: WebSocketReader, messages: ClientMessages, rest: bytes,
                       xwriter: asyncio.StreamWriter) -> None:
        data: bytes | None = rest
        while data is not None:
            out = messages.feed(data)
            if out:
                xwriter.write(out)
                await xwriter.drain()
            data = await ws.message()

    async def _to_client(self, xreader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        while data := await xreader.read(CHUNK):
            writer.write(frame(data))
            await writer.drain()

    async def run(self, socket_path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(socket_path).st_mode):
                socket_path.unlink()  # left by a previous run
        server = await asyncio.start_unix_server(self.serve, path=str(socket_path),
                                                 limit=MAX_REQUEST)
        # nginx's workers (another account) connect: the desktop's folder gives the
        # socket their group (frontdoor.py), and nobody else gets through the folder.
        os.chmod(socket_path, 0o660)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            log("relay_ready", socket=str(socket_path), sign_in=self.settings.sign_in)
            await stop.wait()
        if self._watcher is not None:
            self._watcher.cancel()
        for c in list(self.connections):
            c.end("the desktop is stopping", 1001)


def name_process(name: bytes = b"vncrelay") -> None:
    """What `ps` shows (comm), instead of "python3" like every other Python child."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(15, name, 0, 0, 0)  # PR_SET_NAME


def main(argv: list[str] | None = None) -> int:
    name_process()
    parser = argparse.ArgumentParser(prog="python3 -m whaletopd.vncrelay",
                                     description="whaletop's WebSocket relay to Xvnc")
    parser.add_argument("--socket", required=True, type=Path,
                        help="the UNIX socket nginx proxies /websockify to")
    parser.add_argument("--settings", required=True, type=Path,
                        help="JSON settings written by whaletopd (mode 0600)")
    args = parser.parse_args(argv)
    try:
        relay = Relay(Settings.load(args.settings))
        asyncio.run(relay.run(args.socket))
    except (OSError, ValueError, KeyError, TypeError) as e:
        log("relay_failed", "error", reason=str(e))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
