"""Health checks that speak the protocols a user's connection needs, and their thread.

HEALTHY means a user can connect now, so each check is what a client would do: the
X display accepts a connection; a VNC login through nginx's WebSocket (nginx,
websockify, Xvnc: the user's whole path) succeeds; nginx serves noVNC's page.
Logging in (not just reading the banner) proves the password file and the server's
authentication.  The checks carry a per-start secret header that nginx knows, so no
client's flood can get them limited, and they are not logged.

They reach nginx on its UNIX socket for them (Target.front_socket, in a folder only
whaletopd's account enters), not on the web port: a flood of half-open connections on
the web port (its accept queue full, its address's limits reached) must not make a
healthy desktop RECOVERING, and restarting nginx would only drop every session without
ending the flood.  It is the same server block as the web port's (same locations, TLS
and certificate), so the check still proves what a user's request meets; what it does
not prove, that the TCP port accepts, the light round checks (port_accepts), and a
failure there makes the full round judge.

What a round costs is what an idle desktop costs, so there are two kinds.  The full
round above forks a websockify handler, runs a VNC login and fetches a page: ~17 ms of
CPU over the container.  The light round asks only what is cheap and still proves a
server answers: the X server replies to a connection setup (Xvnc's loop runs), and the
web port accepts (nginx listens).  A dead child is an event already (supervisor.py); a
hung one is what these rounds are for.  The prober runs a full round until the first
pass and after every reset() (a part was replaced: its repair is proved the user's way),
whenever a light check fails (to judge, and to blame the right part), after a failed
full round (two in a row are the verdict), and otherwise
every `full_interval` seconds; light rounds every `interval` seconds in between.  The
price: a server that hangs behind nginx while the X server answers (websockify, the
sign-in service, nginx's workers) is found by the next full round, not the next light one.

The prober runs in its own thread with socket timeouts, so a hung server costs a probe
timeout, never the machine's attention.  It posts only when its verdict changes, so an
idle healthy desktop puts nothing on the queue.  How long each check took goes to an
observer after each round (metrics.py), not through the queue.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from whaletopd.events import EventQueue, ProbeFailed, ProbePassed
from whaletopd.rfbauth import PROBE_RELAY_HEADERS
from whaletopd.rfbauth import vnc_des_response as _vnc_des_response

if TYPE_CHECKING:
    import ssl

# Poll quickly until the first pass, so HEALTHY follows readiness within this delay.
STARTUP_INTERVAL = 0.02
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PROBE_HEADER = "X-Whaletop-Probe"  # nginx knows its value (nginx_conf.py)


class ProbeError(Exception):
    def __init__(self, message: str, part: str | None = None) -> None:
        super().__init__(message)
        self.part = part  # the child to blame, when the check found out itself


class _Stream(Protocol):
    def recv_exact(self, size: int) -> bytes: ...
    def sendall(self, data: bytes) -> None: ...


class _SocketStream:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def recv_exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self._sock.recv(size - len(data))
            if not chunk:
                raise ProbeError(f"connection closed after {len(data)} of {size} bytes")
            data += chunk
        return data

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)


class _WebSocketStream:
    """The binary payload of a client WebSocket (RFC 6455) as a byte stream."""

    def __init__(self, sock: socket.socket) -> None:
        self._raw = _SocketStream(sock)
        self._sock = sock
        self._buffer = b""

    def recv_exact(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._buffer += self._frame()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _frame(self) -> bytes:
        head = self._raw.recv_exact(2)
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._raw.recv_exact(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._raw.recv_exact(8))[0]
        payload = self._raw.recv_exact(length) if length else b""
        if opcode == 0x8:
            raise ProbeError("the server closed the WebSocket")
        return payload if opcode in (0x0, 0x2) else b""  # pings and text carry no RFB

    def sendall(self, data: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self._sock.sendall(bytes([0x82, 0x80 | len(data)]) + mask + masked)


def _rfb_login(stream: _Stream, password: str, none_ok: bool = False) -> str:
    banner = stream.recv_exact(12)
    if not banner.startswith(b"RFB "):
        raise ProbeError(f"no RFB banner (got {banner!r})")
    stream.sendall(b"RFB 003.008\n")
    count = stream.recv_exact(1)[0]
    if count == 0:
        size = int.from_bytes(stream.recv_exact(4), "big")
        raise ProbeError("server refused the connection: "
                         + stream.recv_exact(size).decode(errors="replace"))
    types = stream.recv_exact(count)
    if 2 in types:
        stream.sendall(b"\x02")
        stream.sendall(_vnc_des_response(password, stream.recv_exact(16)))
    elif none_ok and list(types) == [1]:
        # With sign-in the relay logs in to Xvnc itself and offers None: the relay's
        # own login with the password is what this proves.
        stream.sendall(b"\x01")
    else:
        raise ProbeError(f"no VNC authentication offered (security types {list(types)})")
    if int.from_bytes(stream.recv_exact(4), "big") != 0:
        raise ProbeError("authentication failed")
    return banner.decode("ascii", errors="replace").strip()


Host = str | Path  # a TCP host, or the path of a UNIX socket (then the port is None)


def _where(host: Host, port: int | None) -> str:
    return str(host) if isinstance(host, Path) else f"port {port}"


def _connect(host: Host, port: int | None, timeout: float,
             pin: str | None = None) -> socket.socket:
    """TCP, a UNIX socket, or TLS when `pin` (the SHA-256 of the certificate that must be
    served) is set.

    Pinning checks exactly what matters here, that nginx serves the certificate
    whaletopd installed, without judging its dates: expiry is the machine's business."""
    if isinstance(host, Path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(host))
        except BaseException:
            sock.close()
            raise
    else:
        assert port is not None
        sock = socket.create_connection((host, port), timeout=timeout)
    if pin is None:
        return sock
    try:
        tls_sock = _tls_context().wrap_socket(
            sock, server_hostname=None if isinstance(host, Path) else host)
    except BaseException:
        sock.close()
        raise
    served = hashlib.sha256(tls_sock.getpeercert(binary_form=True) or b"").hexdigest()
    if served != pin:
        tls_sock.close()
        raise ProbeError(f"serves certificate {served[:16]}..., expected {pin[:16]}...")
    return tls_sock


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Made once: the certificate is pinned, so no CA store is loaded (that costs about
    9 ms of CPU each time, every probe round)."""
    import ssl  # only with TLS: it costs the daemon megabytes of memory

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _request(host: Host, port: int | None, method: str, path: str,
             headers: Mapping[str, str]) -> bytes:
    name = "localhost" if isinstance(host, Path) else f"{host}:{port}"
    lines = [f"{method} {path} HTTP/1.1", f"Host: {name}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def rfb_login(host: Host, port: int | None, password: str, timeout: float) -> str:
    """Log in to the VNC server as a client would; return its banner."""
    try:
        with _connect(host, port, timeout) as sock:
            return _rfb_login(_SocketStream(sock), password)
    except (OSError, ProbeError) as exc:
        raise ProbeError(f"VNC on {_where(host, port)}: {exc}") from None


def websocket_login(host: Host, port: int | None, password: str, timeout: float,
                    pin: str | None = None, path: str = "/websockify",
                    headers: Mapping[str, str] | None = None, none_ok: bool = False) -> str:
    """What noVNC does: open the WebSocket and log in to VNC through it (`none_ok`: with
    sign-in, where the relay offers only "None" and logs in to Xvnc itself)."""
    key = base64.b64encode(os.urandom(16))
    request = _request(host, port, "GET", path, {
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Protocol": "binary", "Sec-WebSocket-Key": key.decode(),
        **(headers or {})})
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    try:
        with _connect(host, port, timeout, pin) as sock:
            sock.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(1)
                if not chunk:
                    raise ProbeError("connection closed during the WebSocket handshake")
                head += chunk
            status = head.split(b"\r\n", 1)[0]
            if b" 101 " not in status + b" ":
                raise ProbeError(f"no WebSocket upgrade ({status.decode(errors='replace')})")
            if accept not in head:
                raise ProbeError("bad Sec-WebSocket-Accept")
            return _rfb_login(_WebSocketStream(sock), password, none_ok)
    except (OSError, ProbeError) as exc:
        raise ProbeError(f"WebSocket on {_where(host, port)}: {exc}") from None


def _http_status(host: Host, port: int | None, path: str, timeout: float,
                 pin: str | None, headers: Mapping[str, str] | None) -> tuple[str, bytes]:
    request = _request(host, port, "GET", path, {"Connection": "close", **(headers or {})})
    try:
        with _connect(host, port, timeout, pin) as sock:
            sock.sendall(request)
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
    except (OSError, ProbeError) as exc:
        raise ProbeError(f"{_where(host, port)}: {exc}") from None
    return response.split(b"\r\n", 1)[0].decode(errors="replace"), response


def novnc_page(host: Host, port: int | None, timeout: float, path: str = "/vnc.html",
               pin: str | None = None, headers: Mapping[str, str] | None = None) -> None:
    status, response = _http_status(host, port, path, timeout, pin, headers)
    if " 200 " not in status + " " or b"noVNC" not in response:
        raise ProbeError(f"web {_where(host, port)}: {path} answered {status!r} without noVNC")


def sign_in_check(socket_path: Path, token: str, timeout: float) -> None:
    """The sign-in service answers nginx's question for whaletopd's own checks."""
    status, _ = _http_status(socket_path, None, "/auth/check", timeout, None,
                             {PROBE_HEADER: token})
    if " 204 " not in status + " ":
        raise ProbeError(f"sign-in service {socket_path}: /auth/check answered {status!r}")


def _listening(path: Path, timeout: float) -> bool:
    try:
        _connect(path, None, timeout).close()
    except OSError:
        return False
    return True


def x_display(socket_path: str, timeout: float) -> None:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
    except OSError as exc:
        raise ProbeError(f"X display {socket_path}: {exc}") from None


# An X11 connection setup request (little-endian, protocol 11.0, no authorization): any
# answer (Success, Failed, Authenticate) proves the server's loop runs.
_X_SETUP = struct.pack("<cxHHHHxx", b"l", 11, 0, 0, 0)


def x_answers(socket_path: str, timeout: float) -> None:
    """The X server answers a connection setup: the cheap proof that Xvnc is not hung
    (connecting alone proves nothing: the kernel completes it into the backlog)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(_X_SETUP)
            status = _SocketStream(sock).recv_exact(8)[0]
    except (OSError, ProbeError) as exc:
        raise ProbeError(f"X display {socket_path}: {exc}") from None
    if status not in (0, 1, 2):
        raise ProbeError(f"X display {socket_path}: not an X server (setup status {status})")


def port_accepts(host: str, port: int, timeout: float) -> None:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ProbeError(f"web port {port}: {exc}") from None


@dataclass(frozen=True)
class Probe:
    name: str
    part: str  # the child whose failure this check reveals
    check: Callable[[], object]


@dataclass(frozen=True)
class Target:
    """Where a user's connection goes, and what it logs in with."""

    web_port: int
    x_socket: str
    vnc_socket: Path
    websockify_socket: Path
    password: str
    timeout: float
    probe_token: str
    pin: str | None = None  # with TLS: the SHA-256 of the certificate that must be served
    auth_socket: Path | None = None  # with sign-in: the sign-in service
    # nginx's listener for these checks (module docstring); None: the web port.
    front_socket: Path | None = None


def desktop_probes(target: Target, blame: Mapping[str, str]) -> list[Probe]:
    """In dependency order: a failure is blamed on the first part that fails.  `blame`
    (from the programs table) names the child each check points at."""
    t = target
    host: Host = t.front_socket or "127.0.0.1"
    port = None if t.front_socket else t.web_port
    # nginx knows this header's value: whaletopd's checks are never limited or logged,
    # and the sign-in service lets them through.
    headers = {PROBE_HEADER: t.probe_token}
    signed = t.auth_socket is not None  # sign-in: the relay logs in for the browser

    def login_through_the_front_door() -> None:
        # While a server behind nginx does not listen (starting, or dead: its socket
        # file stays), asking nginx only fills nginx's error log, every round.  A bare
        # connection is cheap and neither server logs it.
        for name, sock in (("websockify_login", t.websockify_socket),
                           ("sign_in_check", t.auth_socket)):
            if sock is not None and not _listening(sock, t.timeout):
                raise ProbeError(f"nothing listens on {sock}", part=blame.get(name))
        # The user's path, nginx -> websockify -> Xvnc, proves them all at once; only
        # when it fails do the checks of each hop behind it tell which one is at fault.
        try:
            websocket_login(host, port, t.password, t.timeout, t.pin, headers=headers,
                            none_ok=signed)
        except ProbeError:
            behind: list[tuple[str, Callable[[], object]]] = [
                ("x_display", lambda: rfb_login(t.vnc_socket, None, t.password, t.timeout)),
                ("websockify_login", lambda: websocket_login(
                    t.websockify_socket, None, t.password, t.timeout,
                    headers=PROBE_RELAY_HEADERS, none_ok=signed)),
            ]
            auth = t.auth_socket
            if auth is not None:
                behind.append(("sign_in_check",
                               lambda: sign_in_check(auth, t.probe_token, t.timeout)))
            for name, check in behind:
                try:
                    check()
                except ProbeError as exc:
                    raise ProbeError(str(exc), part=blame.get(name)) from None
            raise

    checks: list[tuple[str, Callable[[], object]]] = [
        ("x_display", lambda: x_display(t.x_socket, t.timeout)),
        ("web_login", login_through_the_front_door),
        ("novnc_page", lambda: novnc_page(host, port, t.timeout, pin=t.pin,
                                          headers=headers)),
    ]
    return [Probe(name, blame[name], check) for name, check in checks]


def light_probes(target: Target, blame: Mapping[str, str]) -> list[Probe]:
    """The cheap round between full ones (see the module's docstring); a failure here
    only makes the prober run the full round, which judges and blames."""
    t = target
    return [Probe("x_answers", blame["x_display"], lambda: x_answers(t.x_socket, t.timeout)),
            Probe("web_port", blame["web_login"],
                  lambda: port_accepts("127.0.0.1", t.web_port, t.timeout))]


def run_all(probes: Sequence[Probe],
            seconds: dict[str, float] | None = None) -> tuple[str, str] | None:
    """None when every probe passed, else (reason, part) of the first failure.  How
    long each check that ran took (passed or failed) goes into `seconds`."""
    for probe in probes:
        t0 = time.monotonic()
        try:
            probe.check()
        except ProbeError as exc:
            return str(exc), exc.part or probe.part
        except Exception as exc:  # a bug in a check must not end the prober silently
            return f"{probe.name}: {type(exc).__name__}: {exc}", probe.part
        finally:
            if seconds is not None:
                seconds[probe.name] = time.monotonic() - t0
    return None


class Prober:
    """Runs the probes on an interval in its own thread; posts ProbePassed / ProbeFailed
    when the verdict changes.  Each verdict carries the generation of the checks it
    came from: reset() (a part was replaced) starts a new generation, and the machine
    ignores verdicts of an older one, however late they arrive.

    `light` probes, when given, run every `interval` seconds between full rounds of
    `probes`, which run every `full_interval` seconds, until the first pass of each
    generation, while the verdict is a failure, after a failed full round, and whenever
    a light check fails."""

    def __init__(self, probes: Sequence[Probe], events: EventQueue, interval: float,
                 failures_to_unhealthy: int = 2,
                 observe: Callable[[Mapping[str, float]], None] | None = None,
                 light: Sequence[Probe] = (), full_interval: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._probes = list(probes)
        self._light = list(light)
        self._full_interval = full_interval
        self._clock = clock
        self.rounds = {"full": 0, "light": 0}  # how many of each ran (tests, bench)
        self._observe = observe  # after each round: how long each check took (metrics)
        self._events = events
        self._interval = interval
        self._threshold = failures_to_unhealthy
        self._lock = threading.Lock()
        self._generation = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    @property
    def generation(self) -> int:
        with self._lock:
            return self._generation

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def reset(self, probes: Sequence[Probe] | None = None,
              light: Sequence[Probe] | None = None) -> None:
        """Forget the verdict (a part was restarted): full rounds, fast, until the next pass."""
        with self._lock:
            self._generation += 1
            if probes is not None:
                self._probes = list(probes)
            if light is not None:
                self._light = list(light)
        self._wake.set()

    def _round(self, full: Sequence[Probe], light: Sequence[Probe], thorough: bool,
               seconds: dict[str, float]) -> tuple[str, str] | None:
        if not thorough:
            self.rounds["light"] += 1
            if run_all(light, seconds) is None:
                return None
            # A cheap check failed: the full round judges, and names the part to blame.
        self.rounds["full"] += 1
        return run_all(full, seconds)

    def _run(self) -> None:
        healthy: bool | None = None
        failures = 0
        seen = -1
        last_full = -math.inf
        while not self._stop.is_set():
            with self._lock:
                generation, checks, light = self._generation, self._probes, self._light
            if generation != seen:
                healthy, failures, seen, last_full = None, 0, generation, -math.inf
            # A failed full round is confirmed by a full one: a light pass would forget
            # it, and a hang behind nginx would never be a verdict.
            thorough = (healthy is not True or failures > 0 or not light
                        or self._clock() - last_full >= self._full_interval)
            seconds: dict[str, float] = {}
            rounds = self.rounds["full"]
            failure = self._round(checks, light, thorough, seconds)
            if self.rounds["full"] != rounds:
                last_full = self._clock()
            if self._observe is not None and not self._stop.is_set():
                self._observe(seconds)
            if self._stop.is_set() or generation != self.generation:
                continue  # a verdict about a part that was just replaced: not news
            if failure is None:
                failures = 0
                if healthy is not True:
                    healthy = True
                    self._events.post(ProbePassed(generation=generation))
            elif healthy:
                failures += 1
                if failures >= self._threshold:
                    healthy = False
                    self._events.post(ProbeFailed(reason=failure[0], part=failure[1],
                                                  generation=generation))
            self._wake.wait(self._interval if healthy is not None else STARTUP_INTERVAL)
            self._wake.clear()
