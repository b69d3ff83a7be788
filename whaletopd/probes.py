"""Health checks that speak the protocols a user's connection needs, and their thread.

HEALTHY means a user can connect now, so each check is what a client would do:
the VNC port logs a client in with the desktop's password, the web port serves
noVNC's page, the X display accepts a connection.  The prober runs in its own thread
with socket timeouts, so a hung server costs a probe timeout, never the machine's
attention; it posts only when the verdict changes, so an idle healthy desktop puts
nothing on the queue.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from whaletopd.events import EventQueue, ProbeFailed, ProbePassed

# Poll quickly until the first pass, so HEALTHY follows readiness within this delay.
STARTUP_INTERVAL = 0.02


class ProbeError(Exception):
    pass


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ProbeError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def _vnc_des_response(password: str, challenge: bytes) -> bytes:
    """VNC authentication: DES-encrypt the challenge with the bit-reversed password."""
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    try:  # cryptography >= 43 keeps (3)DES in "decrepit"; older ones in algorithms
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    except ImportError:  # pragma: no cover - depends on the installed version
        from cryptography.hazmat.primitives.ciphers.algorithms import (  # type: ignore[attr-defined,no-redef,unused-ignore]
            TripleDES,
        )
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode("latin-1")[:8].ljust(8, b"\0"))
    # A 64-bit key makes TripleDES single DES, which is what VNC authentication uses.
    encryptor = Cipher(TripleDES(key), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


def rfb_login(host: str, port: int, password: str, timeout: float) -> str:
    """Connect as a VNC client would and authenticate; return the server's banner.

    Reading the banner alone is not enough: a server that rejects every client (Xvnc
    blacklists an address after a few unauthenticated connections) still sends one.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            return _rfb_handshake(sock, password)
    except (OSError, ProbeError) as exc:
        raise ProbeError(f"VNC port {port}: {exc}") from None


def _rfb_handshake(sock: socket.socket, password: str) -> str:
    banner = _recv_exact(sock, 12)
    if not banner.startswith(b"RFB "):
        raise ProbeError(f"no RFB banner (got {banner!r})")
    sock.sendall(b"RFB 003.008\n")
    count = _recv_exact(sock, 1)[0]
    if count == 0:
        size = int.from_bytes(_recv_exact(sock, 4), "big")
        raise ProbeError("server refused the connection: "
                         + _recv_exact(sock, size).decode(errors="replace"))
    types = _recv_exact(sock, count)
    if 2 not in types:
        raise ProbeError(f"no VNC authentication offered (security types {list(types)})")
    sock.sendall(b"\x02")
    sock.sendall(_vnc_des_response(password, _recv_exact(sock, 16)))
    if int.from_bytes(_recv_exact(sock, 4), "big") != 0:
        raise ProbeError("authentication failed")
    return banner.decode("ascii", errors="replace").strip()


def novnc_page(host: str, port: int, timeout: float, path: str = "/vnc.html") -> None:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise ProbeError(f"web port {port}: {exc}") from None
    finally:
        conn.close()
    if resp.status != 200 or b"noVNC" not in body:
        raise ProbeError(f"web port {port}: {path} answered {resp.status} without noVNC")


def x_display(socket_path: str, timeout: float) -> None:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
    except OSError as exc:
        raise ProbeError(f"X display {socket_path}: {exc}") from None


Check = Callable[[], object]


@dataclass(frozen=True)
class Probe:
    name: str
    check: Check


def desktop_probes(vnc_port: int, web_port: int, x_socket: str, password: str,
                   timeout: float) -> list[Probe]:
    return [
        Probe("x_display", lambda: x_display(x_socket, timeout)),
        Probe("rfb_login", lambda: rfb_login("127.0.0.1", vnc_port, password, timeout)),
        Probe("novnc_page", lambda: novnc_page("127.0.0.1", web_port, timeout)),
    ]


def run_all(probes: Sequence[Probe]) -> str | None:
    """None when every probe passed, else the first failure's reason."""
    for probe in probes:
        try:
            probe.check()
        except ProbeError as exc:
            return str(exc)
    return None


class Prober:
    """Runs the probes on an interval; posts ProbePassed / ProbeFailed on a change."""

    def __init__(self, probes: Sequence[Probe], events: EventQueue, interval: float,
                 failures_to_unhealthy: int = 2) -> None:
        self._probes = list(probes)
        self._events = events
        self._interval = interval
        self._threshold = failures_to_unhealthy
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        healthy: bool | None = None
        failures = 0
        while not self._stop.is_set():
            reason = run_all(self._probes)
            if reason is None:
                failures = 0
                if healthy is not True:
                    healthy = True
                    self._events.post(ProbePassed())
            elif healthy:
                failures += 1
                if failures >= self._threshold:
                    healthy = False
                    self._events.post(ProbeFailed(reason=reason))
            self._stop.wait(self._interval if healthy is not None else STARTUP_INTERVAL)
