"""Health checks against real servers on 127.0.0.1: a small RFB 3.8 server written here,
http.server serving a noVNC-like page, an AF_UNIX socket standing in for the X display."""

from __future__ import annotations

import functools
import http.server
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.utils import CryptographyDeprecationWarning

from whaletopd import probes
from whaletopd.events import EventQueue, ProbeFailed, ProbePassed
from whaletopd.probes import Probe, ProbeError, Prober

from .helpers import wait_for

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


def test_oracle_key_matches_the_known_vnc_fixed_key() -> None:
    # VNC's fixed obfuscation key {23,82,107,6,35,78,88,7} is known bit-reversed as
    # e84ad660c4721ae0: checks the oracle, so the probe is compared to something right.
    assert vnc_key(bytes([23, 82, 107, 6, 35, 78, 88, 7]).decode("latin-1")).hex() == (
        "e84ad660c4721ae0")


# -- a tiny RFB 3.8 server --------------------------------------------------------------

@dataclass
class RFBServer:
    """Serves each connection according to `mode`; records what clients sent."""

    password: str = "s3cretpw"
    mode: str = "auth"  # auth | refuse | none-only | silent | close | http
    port: int = 0
    client_versions: list[bytes] = field(default_factory=list)
    chosen_types: list[int] = field(default_factory=list)
    results: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                try:
                    self._handle(conn)
                except OSError:
                    pass

    @staticmethod
    def _recv(conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise OSError("client went away")
            data += chunk
        return data

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        if self.mode == "close":
            return
        if self.mode == "silent":
            self._recv(conn, 1)  # waits for the client, which waits for us: its timeout ends it
            return
        if self.mode == "http":
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            return
        conn.sendall(b"RFB 003.008\n")
        self.client_versions.append(self._recv(conn, 12))
        if self.mode == "refuse":
            reason = b"Too many security failures"
            conn.sendall(b"\x00" + len(reason).to_bytes(4, "big") + reason)
            return
        conn.sendall(b"\x01\x01" if self.mode == "none-only" else b"\x02\x10\x02")
        chosen = self._recv(conn, 1)[0]
        self.chosen_types.append(chosen)
        if chosen != 2:
            return
        challenge = os.urandom(16)
        conn.sendall(challenge)
        response = self._recv(conn, 16)
        result = 0 if response == vnc_response(self.password, challenge) else 1
        self.results.append(result)
        conn.sendall(result.to_bytes(4, "big"))
        if result:
            reason = b"Authentication failed"
            conn.sendall(len(reason).to_bytes(4, "big") + reason)

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def rfb() -> Iterator[RFBServer]:
    server = RFBServer()
    yield server
    server.close()


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def test_rfb_login_with_the_right_password(rfb: RFBServer) -> None:
    assert probes.rfb_login("127.0.0.1", rfb.port, "s3cretpw", TIMEOUT) == "RFB 003.008"
    assert rfb.client_versions == [b"RFB 003.008\n"]
    assert rfb.chosen_types == [2]
    assert rfb.results == [0]


def test_rfb_login_uses_only_the_first_eight_characters() -> None:
    server = RFBServer(password="abcdefgh")
    try:
        probes.rfb_login("127.0.0.1", server.port, "abcdefghIGNORED", TIMEOUT)
        assert server.results == [0]
    finally:
        server.close()


def test_rfb_login_with_a_short_password() -> None:
    server = RFBServer(password="abc123")
    try:
        probes.rfb_login("127.0.0.1", server.port, "abc123", TIMEOUT)
        assert server.results == [0]
    finally:
        server.close()


def test_rfb_login_with_a_wrong_password(rfb: RFBServer) -> None:
    with pytest.raises(ProbeError, match=rf"VNC port {rfb.port}: authentication failed"):
        probes.rfb_login("127.0.0.1", rfb.port, "wrongpw1", TIMEOUT)
    assert rfb.results == [1]


def test_rfb_login_refused_by_the_server_says_why() -> None:
    server = RFBServer(mode="refuse")
    try:
        with pytest.raises(ProbeError, match="refused.*Too many security failures"):
            probes.rfb_login("127.0.0.1", server.port, "s3cretpw", TIMEOUT)
    finally:
        server.close()


def test_rfb_login_without_vnc_authentication_offered() -> None:
    """A server that lets anyone in without a password is not the desktop we started."""
    server = RFBServer(mode="none-only")
    try:
        with pytest.raises(ProbeError, match="no VNC authentication offered"):
            probes.rfb_login("127.0.0.1", server.port, "s3cretpw", TIMEOUT)
    finally:
        server.close()


@pytest.mark.parametrize(("mode", "message"), [
    ("close", "connection closed after 0 of 12 bytes"),
    ("http", "no RFB banner"),
    ("silent", "timed out"),
])
def test_rfb_login_without_a_banner(mode: str, message: str) -> None:
    server = RFBServer(mode=mode)
    try:
        with pytest.raises(ProbeError, match=message):
            probes.rfb_login("127.0.0.1", server.port, "s3cretpw", 0.2)
    finally:
        server.close()


def test_rfb_login_on_a_closed_port() -> None:
    port = _closed_port()
    with pytest.raises(ProbeError, match=f"VNC port {port}"):
        probes.rfb_login("127.0.0.1", port, "s3cretpw", TIMEOUT)


def test_rfb_login_uses_no_deprecated_cryptography(rfb: RFBServer) -> None:
    """cryptography deprecates 8-byte TripleDES keys and will remove them: the health
    check must not depend on them, or a library upgrade makes every desktop UNHEALTHY."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probes.rfb_login("127.0.0.1", rfb.port, "s3cretpw", TIMEOUT)
    deprecations = [w for w in caught if issubclass(w.category, CryptographyDeprecationWarning)]
    assert deprecations == [], [str(w.message) for w in deprecations]


# -- the noVNC page ---------------------------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def web(tmp_path: Path) -> Iterator[int]:
    (tmp_path / "vnc.html").write_text("<html><title>noVNC</title></html>")
    (tmp_path / "other.html").write_text("<html>It works!</html>")
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_novnc_page_served(web: int) -> None:
    probes.novnc_page("127.0.0.1", web, TIMEOUT)


def test_novnc_page_missing(web: int) -> None:
    with pytest.raises(ProbeError, match=rf"web port {web}: /nope.html answered 404"):
        probes.novnc_page("127.0.0.1", web, TIMEOUT, path="/nope.html")


def test_novnc_page_of_another_application(web: int) -> None:
    with pytest.raises(ProbeError, match="answered 200 without noVNC"):
        probes.novnc_page("127.0.0.1", web, TIMEOUT, path="/other.html")


def test_novnc_page_on_a_closed_port() -> None:
    port = _closed_port()
    with pytest.raises(ProbeError, match=f"web port {port}"):
        probes.novnc_page("127.0.0.1", port, TIMEOUT)


def test_novnc_page_from_a_server_speaking_rfb() -> None:
    server = RFBServer(mode="silent")
    try:
        with pytest.raises(ProbeError, match=f"web port {server.port}"):
            probes.novnc_page("127.0.0.1", server.port, 0.2)
    finally:
        server.close()


# -- the X display ----------------------------------------------------------------------

def test_x_display_listening(tmp_path: Path) -> None:
    path = str(tmp_path / "X1")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)
        probes.x_display(path, TIMEOUT)


def test_x_display_missing(tmp_path: Path) -> None:
    path = str(tmp_path / "X1")
    with pytest.raises(ProbeError, match=f"X display {path}"):
        probes.x_display(path, TIMEOUT)


def test_x_display_stale_socket_file(tmp_path: Path) -> None:
    """The socket file of a dead Xvnc stays behind: it must not count as a display."""
    path = str(tmp_path / "X1")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
    assert os.path.exists(path)
    with pytest.raises(ProbeError, match="X display"):
        probes.x_display(path, TIMEOUT)


# -- all of them, as the desktop runs them ----------------------------------------------

def test_desktop_probes_pass_when_everything_answers(tmp_path: Path, rfb: RFBServer,
                                                     web: int) -> None:
    x_path = str(tmp_path / "X1")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as xsrv:
        xsrv.bind(x_path)
        xsrv.listen(4)
        checks = probes.desktop_probes(rfb.port, web, x_path, "s3cretpw", TIMEOUT)
        assert [p.name for p in checks] == ["x_display", "rfb_login", "novnc_page"]
        assert probes.run_all(checks) is None
        # A password that changed under the desktop is a failure with a reason.
        checks = probes.desktop_probes(rfb.port, web, x_path, "otherpw1", TIMEOUT)
        assert probes.run_all(checks) == f"VNC port {rfb.port}: authentication failed"


def test_run_all_reports_the_first_failure_and_stops() -> None:
    calls: list[str] = []

    def ok(name: str) -> Probe:
        return Probe(name, lambda: calls.append(name))

    def bad(name: str) -> Probe:
        def check() -> None:
            calls.append(name)
            raise ProbeError(f"{name} is down")
        return Probe(name, check)

    assert probes.run_all([ok("a"), bad("b"), bad("c")]) == "b is down"
    assert calls == ["a", "b"]
    assert probes.run_all([ok("a")]) is None


# -- the prober thread ------------------------------------------------------------------

class Script:
    """A probe whose outcomes follow a script; after the script it keeps passing."""

    def __init__(self, outcomes: str) -> None:
        self.outcomes = list(outcomes)  # "p" passes, "f" fails
        self.calls = 0
        self.done = threading.Event()

    def __call__(self) -> None:
        self.calls += 1
        if not self.outcomes:
            self.done.set()
            return
        if self.outcomes.pop(0) == "f":
            raise ProbeError(f"failure at call {self.calls}")


def _drain(q: EventQueue) -> list[object]:
    out = []
    while (ev := q.get(timeout=0)) is not None:
        out.append(ev)
    return out


def _run_script(outcomes: str) -> list[object]:
    q = EventQueue()
    script = Script(outcomes)
    prober = Prober([Probe("always", lambda: None), Probe("scripted", script)], q,
                    interval=0.001)
    prober.start()
    try:
        assert script.done.wait(10), "the prober stopped probing"
    finally:
        prober.stop()
    return _drain(q)


def test_prober_posts_passed_once_then_nothing_while_healthy() -> None:
    assert _run_script("fffpppp") == [ProbePassed()]


def test_prober_ignores_failures_before_the_first_pass() -> None:
    """Until HEALTHY the desktop is still starting: failures are expected, not news."""
    assert _run_script("ffffffffp") == [ProbePassed()]


def test_prober_needs_two_consecutive_failures() -> None:
    # One failure between passes is a blip; two in a row are a verdict.
    events = _run_script("pfpfpffff")
    assert events == [ProbePassed(), ProbeFailed(reason="failure at call 7")]


def test_prober_posts_recovery() -> None:
    events = _run_script("pffffpp")
    assert events == [ProbePassed(), ProbeFailed(reason="failure at call 3"), ProbePassed()]


def test_prober_stop_ends_the_thread() -> None:
    q = EventQueue()
    script = Script("")
    prober = Prober([Probe("scripted", script)], q, interval=0.001)
    prober.start()
    wait_for(lambda: script.calls > 3, "probes to run")
    prober.stop()
    threads = [t for t in threading.enumerate() if t.name == "prober"]
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    calls = script.calls
    assert not threading.Event().wait(0.05)
    assert script.calls == calls
