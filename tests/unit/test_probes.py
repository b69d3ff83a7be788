"""Health checks against real servers on 127.0.0.1: a small RFB 3.8 server (rfb.py),
http.server serving a noVNC-like page, an AF_UNIX socket standing in for the X display."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.utils import CryptographyDeprecationWarning

from whaletopd import probes
from whaletopd.events import Event, EventQueue, ProbeFailed, ProbePassed
from whaletopd.probes import Probe, ProbeError, Prober, Target
from whaletopd.programs import PROGRAMS, blame

from .helpers import wait_for
from .rfb import TIMEOUT, RFBServer, vnc_key

# -- the oracle the RFB server (rfb.py) checks logins with ---------------------------------

def test_oracle_key_matches_the_known_vnc_fixed_key() -> None:
    # VNC's fixed obfuscation key {23,82,107,6,35,78,88,7} is known bit-reversed as
    # e84ad660c4721ae0: checks the oracle, so the probe is compared to something right.
    assert vnc_key(bytes([23, 82, 107, 6, 35, 78, 88, 7]).decode("latin-1")).hex() == (
        "e84ad660c4721ae0")


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
    with pytest.raises(ProbeError, match=rf"VNC on port {rfb.port}: authentication failed"):
        probes.rfb_login("127.0.0.1", rfb.port, "wrongpw1", TIMEOUT)
    assert rfb.results == [1]


def test_rfb_login_refused_by_the_server_says_why() -> None:
    server = RFBServer(mode="refuse")
    try:
        with pytest.raises(ProbeError, match=r"refused.*Too many security failures"):
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
    with pytest.raises(ProbeError, match=f"VNC on port {port}"):
        probes.rfb_login("127.0.0.1", port, "s3cretpw", TIMEOUT)


# -- Xvnc on its UNIX socket (-rfbunixpath) ------------------------------------------------

def test_rfb_login_on_a_unix_socket(tmp_path: Path) -> None:
    server = RFBServer(unix=tmp_path / "vnc.sock")
    try:
        assert probes.rfb_login(tmp_path / "vnc.sock", None, "s3cretpw", TIMEOUT) == (
            "RFB 003.008")
        assert server.results == [0]
    finally:
        server.close()


def test_rfb_login_on_a_unix_socket_with_a_wrong_password_names_the_socket(
        tmp_path: Path) -> None:
    sock = tmp_path / "vnc.sock"
    server = RFBServer(unix=sock)
    try:
        with pytest.raises(ProbeError, match=rf"VNC on {sock}: authentication failed"):
            probes.rfb_login(sock, None, "wrongpw1", TIMEOUT)
    finally:
        server.close()


def test_rfb_login_on_a_missing_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "vnc.sock"
    with pytest.raises(ProbeError, match=rf"VNC on {sock}: .*No such file"):
        probes.rfb_login(sock, None, "s3cretpw", TIMEOUT)


def test_rfb_login_on_a_stale_unix_socket(tmp_path: Path) -> None:
    """The socket file of a dead Xvnc stays behind: nothing answers on it."""
    sock = tmp_path / "vnc.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(sock))
    with pytest.raises(ProbeError, match=rf"VNC on {sock}: .*refused"):
        probes.rfb_login(sock, None, "s3cretpw", TIMEOUT)


def test_rfb_login_uses_no_deprecated_cryptography(rfb: RFBServer) -> None:
    """cryptography deprecates 8-byte TripleDES keys and will remove them: the health
    check must not depend on them, or a library upgrade makes every desktop UNHEALTHY."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probes.rfb_login("127.0.0.1", rfb.port, "s3cretpw", TIMEOUT)
    deprecations = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
                    if issubclass(w.category, CryptographyDeprecationWarning)]
    assert deprecations == []


# -- the noVNC page ---------------------------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def web(tmp_path: Path) -> Iterator[int]:
    (tmp_path / "vnc.html").write_text("<html><title>noVNC</title></html>")
    (tmp_path / "other.html").write_text("<html>It works!</html>")
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_novnc_page_served(web: int) -> None:
    probes.novnc_page("127.0.0.1", web, TIMEOUT)


def test_novnc_page_sends_the_headers_it_is_given() -> None:
    """whaletopd's checks carry the probe header: nginx neither limits nor logs them."""
    server = RFBServer(transport="ws", pages={"/vnc.html": b"<title>noVNC</title>"})
    try:
        probes.novnc_page("127.0.0.1", server.port, TIMEOUT,
                          headers={probes.PROBE_HEADER: "0123abcd"})
        request = server.ws_requests[0].decode()
        assert request.startswith("GET /vnc.html HTTP/1.1\r\n")
        assert f"\r\nHost: 127.0.0.1:{server.port}\r\n" in request
        assert "\r\nX-Whaletop-Probe: 0123abcd\r\n" in request
        assert "\r\nConnection: close\r\n" in request
    finally:
        server.close()


def test_novnc_page_missing(web: int) -> None:
    with pytest.raises(ProbeError, match=rf"web port {web}: /nope.html answered .*404"):
        probes.novnc_page("127.0.0.1", web, TIMEOUT, path="/nope.html")


def test_novnc_page_of_another_application(web: int) -> None:
    with pytest.raises(ProbeError, match=r"answered .*200.* without noVNC"):
        probes.novnc_page("127.0.0.1", web, TIMEOUT, path="/other.html")


def test_novnc_page_on_a_closed_port() -> None:
    port = _closed_port()
    with pytest.raises(ProbeError, match=f"port {port}: .*refused"):
        probes.novnc_page("127.0.0.1", port, TIMEOUT)


def test_novnc_page_from_a_server_speaking_rfb() -> None:
    server = RFBServer(mode="silent")
    try:
        with pytest.raises(ProbeError, match=f"port {server.port}: timed out"):
            probes.novnc_page("127.0.0.1", server.port, 0.2)
    finally:
        server.close()


# -- HTTPS with a pinned certificate (--enable-tls) --------------------------------------

def _self_signed(tmp_path: Path) -> tuple[Path, str]:
    """A PEM with certificate and key, and the certificate's SHA-256 (the pin)."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    pem = tmp_path / "cert.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    der = cert.public_bytes(serialization.Encoding.DER)
    return pem, hashlib.sha256(der).hexdigest()


@pytest.fixture
def https(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """(port, pin) of an HTTPS server serving noVNC's page."""
    pem, pin = _self_signed(tmp_path)
    (tmp_path / "vnc.html").write_text("<title>noVNC</title>")
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    yield int(server.server_address[1]), pin
    server.shutdown()
    server.server_close()


def test_novnc_page_over_https_with_the_pinned_certificate(https: tuple[int, str]) -> None:
    port, pin = https
    probes.novnc_page("127.0.0.1", port, TIMEOUT, pin=pin)


def test_novnc_page_over_https_with_another_certificate(https: tuple[int, str]) -> None:
    """nginx still serving the old certificate after a rotation is a failure."""
    port, _ = https
    with pytest.raises(ProbeError, match=rf"port {port}: serves certificate .*expected"):
        probes.novnc_page("127.0.0.1", port, TIMEOUT, pin="0" * 64)


def test_novnc_page_expecting_https_from_plain_http(web: int) -> None:
    with pytest.raises(ProbeError, match=f"port {web}: "):
        probes.novnc_page("127.0.0.1", web, TIMEOUT, pin="0" * 64)


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


# -- VNC through the web port's WebSocket, as noVNC connects -----------------------------

@pytest.fixture
def ws() -> Iterator[RFBServer]:
    server = RFBServer(transport="ws")
    yield server
    server.close()


def test_websocket_login_with_the_right_password(ws: RFBServer) -> None:
    assert probes.websocket_login("127.0.0.1", ws.port, "s3cretpw", TIMEOUT) == "RFB 003.008"
    assert ws.results == [0]
    request = ws.ws_requests[0].decode()
    assert request.startswith("GET /websockify HTTP/1.1\r\n")
    assert "Upgrade: websocket" in request
    assert "Sec-WebSocket-Version: 13" in request
    assert f"\r\nHost: 127.0.0.1:{ws.port}\r\n" in request
    assert probes.PROBE_HEADER not in request, "no header unless asked"


def test_websocket_login_sends_the_headers_it_is_given(ws: RFBServer) -> None:
    probes.websocket_login("127.0.0.1", ws.port, "s3cretpw", TIMEOUT,
                           headers={probes.PROBE_HEADER: "0123abcd"})
    assert ws.results == [0]
    assert "\r\nX-Whaletop-Probe: 0123abcd\r\n" in ws.ws_requests[0].decode()


def test_websocket_login_on_a_unix_socket(tmp_path: Path) -> None:
    """websockify behind nginx listens on a UNIX socket (--unix-listen)."""
    sock = tmp_path / "websockify.sock"
    server = RFBServer(transport="ws", unix=sock)
    try:
        assert probes.websocket_login(sock, None, "s3cretpw", TIMEOUT) == "RFB 003.008"
        assert server.results == [0]
        request = server.ws_requests[0].decode()
        assert request.startswith("GET /websockify HTTP/1.1\r\n")
        assert "\r\nHost: localhost\r\n" in request
        with pytest.raises(ProbeError, match=rf"WebSocket on {sock}: authentication"):
            probes.websocket_login(sock, None, "wrongpw1", TIMEOUT)
    finally:
        server.close()


def test_websocket_login_on_a_missing_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "websockify.sock"
    with pytest.raises(ProbeError, match=rf"WebSocket on {sock}: "):
        probes.websocket_login(sock, None, "s3cretpw", TIMEOUT)


def test_websocket_login_with_a_wrong_password(ws: RFBServer) -> None:
    with pytest.raises(ProbeError, match=rf"WebSocket on port {ws.port}: authentication"):
        probes.websocket_login("127.0.0.1", ws.port, "wrongpw1", TIMEOUT)
    assert ws.results == [1]


def test_websocket_login_refused_by_vnc_says_why() -> None:
    server = RFBServer(transport="ws", mode="refuse")
    try:
        with pytest.raises(ProbeError, match="Too many security failures"):
            probes.websocket_login("127.0.0.1", server.port, "s3cretpw", TIMEOUT)
    finally:
        server.close()


def test_websocket_login_without_upgrade() -> None:
    server = RFBServer(transport="ws", ws_path="/elsewhere")
    try:
        with pytest.raises(ProbeError, match=r"no WebSocket upgrade.*404"):
            probes.websocket_login("127.0.0.1", server.port, "s3cretpw", TIMEOUT)
    finally:
        server.close()


def test_websocket_login_with_a_bad_accept_key() -> None:
    server = RFBServer(transport="ws", mode="bad-accept")
    try:
        with pytest.raises(ProbeError, match="Sec-WebSocket-Accept"):
            probes.websocket_login("127.0.0.1", server.port, "s3cretpw", TIMEOUT)
    finally:
        server.close()


@pytest.mark.parametrize("mode", ["close", "silent"])
def test_websocket_login_without_an_answer(mode: str) -> None:
    server = RFBServer(transport="ws", mode=mode)
    try:
        with pytest.raises(ProbeError, match=f"WebSocket on port {server.port}"):
            probes.websocket_login("127.0.0.1", server.port, "s3cretpw", 0.2)
    finally:
        server.close()


def test_websocket_login_on_a_closed_port() -> None:
    port = _closed_port()
    with pytest.raises(ProbeError, match=f"WebSocket on port {port}"):
        probes.websocket_login("127.0.0.1", port, "s3cretpw", TIMEOUT)


def test_websocket_login_to_a_plain_vnc_port(rfb: RFBServer) -> None:
    """The VNC port given as the web port: an RFB banner is no WebSocket upgrade."""
    with pytest.raises(ProbeError, match="WebSocket"):
        probes.websocket_login("127.0.0.1", rfb.port, "s3cretpw", 0.5)


# -- the sign-in service's answer to whaletopd's own checks ------------------------------

class SignInService:
    """An HTTP server on a UNIX socket answering /auth/check like webauth: 204 for the
    probe token, 401 otherwise (or `status` for every request)."""

    def __init__(self, path: Path, token: str = "0123abcd", status: int | None = None) -> None:
        self.path, self.token, self.status = path, token, status
        self.requests: list[bytes] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head and (chunk := conn.recv(1024)):
                    head += chunk
                if not head:
                    continue  # a bare connection (is anyone listening?), as webauth takes it
                self.requests.append(head)
                status = self.status or (
                    204 if f"{probes.PROBE_HEADER}: {self.token}".encode() in head else 401)
                with contextlib.suppress(OSError):
                    conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n"
                                 .encode())

    def close(self) -> None:
        self._sock.close()


def test_sign_in_check_passes_with_the_probe_token(tmp_path: Path) -> None:
    service = SignInService(tmp_path / "auth.sock")
    try:
        probes.sign_in_check(tmp_path / "auth.sock", "0123abcd", TIMEOUT)
        assert service.requests[0].startswith(b"GET /auth/check HTTP/1.1\r\n")
    finally:
        service.close()


def test_sign_in_check_fails_when_the_service_says_no(tmp_path: Path) -> None:
    sock = tmp_path / "auth.sock"
    service = SignInService(sock)
    try:
        with pytest.raises(ProbeError, match=rf"sign-in service {sock}: /auth/check answered "
                                             r"'HTTP/1.1 401 X'"):
            probes.sign_in_check(sock, "another", TIMEOUT)
    finally:
        service.close()


def test_sign_in_check_wants_exactly_204(tmp_path: Path) -> None:
    """200 would be a page (a sign-in form), not "let it through"."""
    sock = tmp_path / "auth.sock"
    service = SignInService(sock, status=200)
    try:
        with pytest.raises(ProbeError, match="200"):
            probes.sign_in_check(sock, "0123abcd", TIMEOUT)
    finally:
        service.close()


def test_sign_in_check_without_the_service(tmp_path: Path) -> None:
    sock = tmp_path / "auth.sock"
    with pytest.raises(ProbeError, match=str(sock)):
        probes.sign_in_check(sock, "0123abcd", TIMEOUT)


# -- all of them, as the desktop runs them ----------------------------------------------
# nginx on the web port (here: one server standing for the whole path nginx ->
# websockify -> Xvnc), websockify and Xvnc on their UNIX sockets behind it.

TOKEN = "0123abcd"


@pytest.fixture
def front() -> Iterator[RFBServer]:
    """Like nginx in front of it all: noVNC's page and VNC over a WebSocket on one port."""
    server = RFBServer(transport="ws", pages={"/vnc.html": b"<title>noVNC</title>"})
    yield server
    server.close()


@pytest.fixture
def xvnc(tmp_path: Path) -> Iterator[RFBServer]:
    server = RFBServer(unix=tmp_path / "vnc.sock")
    yield server
    server.close()


@pytest.fixture
def websockify(tmp_path: Path) -> Iterator[RFBServer]:
    server = RFBServer(transport="ws", unix=tmp_path / "websockify.sock")
    yield server
    server.close()


@pytest.fixture
def x_socket(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "X1")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(8)
        yield path


BLAME = blame(PROGRAMS)


def _checks(tmp_path: Path, web_port: int, x_path: str, password: str = "s3cretpw",
            sign_in: bool = False) -> list[Probe]:
    return probes.desktop_probes(Target(
        web_port, x_path, tmp_path / "vnc.sock", tmp_path / "websockify.sock", password,
        TIMEOUT, TOKEN, auth_socket=tmp_path / "auth.sock" if sign_in else None), BLAME)


def test_desktop_probes_pass_when_everything_answers(
        tmp_path: Path, front: RFBServer, xvnc: RFBServer, websockify: RFBServer,
        x_socket: str) -> None:
    checks = _checks(tmp_path, front.port, x_socket)
    assert [(p.name, p.part) for p in checks] == [
        ("x_display", "xvnc"), ("web_login", "nginx"), ("novnc_page", "nginx")]
    assert probes.run_all(checks) is None
    assert front.results == [0]
    # The hops behind nginx are asked only to diagnose a failed login.
    assert xvnc.results == []
    assert websockify.results == []
    # Both checks through nginx carry the probe header (never limited, never logged).
    assert len(front.ws_requests) == 2
    for request in front.ws_requests:
        assert f"\r\nX-Whaletop-Probe: {TOKEN}\r\n".encode() in request


def test_desktop_probes_blame_xvnc_for_a_wrong_password(
        tmp_path: Path, front: RFBServer, xvnc: RFBServer, websockify: RFBServer,
        x_socket: str) -> None:
    checks = _checks(tmp_path, front.port, x_socket, password="otherpw1")
    assert probes.run_all(checks) == (
        f"VNC on {tmp_path / 'vnc.sock'}: authentication failed", "xvnc")


def test_desktop_probes_blame_nginx_when_the_web_port_is_down(
        tmp_path: Path, xvnc: RFBServer, websockify: RFBServer, x_socket: str) -> None:
    port = _closed_port()
    reason, part = probes.run_all(_checks(tmp_path, port, x_socket)) or ("", "")
    assert part == "nginx"
    assert f"port {port}" in reason
    assert xvnc.results == [0], "Xvnc answered: not its fault"
    assert websockify.results == [0], "websockify answered: not its fault"


def test_desktop_probes_blame_websockify_when_its_socket_does_not_answer(
        tmp_path: Path, xvnc: RFBServer, x_socket: str) -> None:
    # A stale socket file: websockify died and left it behind.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(tmp_path / "websockify.sock"))
    reason, part = probes.run_all(_checks(tmp_path, _closed_port(), x_socket)) or ("", "")
    assert part == "websockify"
    assert str(tmp_path / "websockify.sock") in reason


def test_desktop_probes_blame_websockify_before_asking_nginx_when_its_socket_is_missing(
        tmp_path: Path, front: RFBServer, xvnc: RFBServer, x_socket: str) -> None:
    """Until websockify listens, asking nginx would only fill its error log."""
    reason, part = probes.run_all(_checks(tmp_path, front.port, x_socket)) or ("", "")
    assert part == "websockify"
    assert str(tmp_path / "websockify.sock") in reason
    assert front.ws_requests == [], "nginx was not asked"


def test_desktop_probes_blame_xvnc_when_its_socket_is_gone(
        tmp_path: Path, websockify: RFBServer, x_socket: str) -> None:
    reason, part = probes.run_all(_checks(tmp_path, _closed_port(), x_socket)) or ("", "")
    assert part == "xvnc"
    assert reason.startswith(f"VNC on {tmp_path / 'vnc.sock'}")


def test_desktop_probes_blame_xvnc_when_the_display_is_gone(
        tmp_path: Path, front: RFBServer, xvnc: RFBServer, websockify: RFBServer) -> None:
    checks = _checks(tmp_path, front.port, str(tmp_path / "X1"))
    reason, part = probes.run_all(checks) or ("", "")
    assert part == "xvnc"
    assert reason.startswith("X display")


def test_desktop_probes_blame_the_sign_in_service_when_it_refuses_whaletopd(
        tmp_path: Path, xvnc: RFBServer, websockify: RFBServer, x_socket: str) -> None:
    service = SignInService(tmp_path / "auth.sock", token="another")
    try:
        checks = _checks(tmp_path, _closed_port(), x_socket, sign_in=True)
        reason, part = probes.run_all(checks) or ("", "")
    finally:
        service.close()
    assert part == "webauth"
    assert "/auth/check answered 'HTTP/1.1 401" in reason


def test_desktop_probes_blame_the_sign_in_service_when_its_socket_is_missing(
        tmp_path: Path, front: RFBServer, xvnc: RFBServer, websockify: RFBServer,
        x_socket: str) -> None:
    checks = _checks(tmp_path, front.port, x_socket, sign_in=True)
    reason, part = probes.run_all(checks) or ("", "")
    assert part == "webauth"
    assert str(tmp_path / "auth.sock") in reason


def test_desktop_probes_blame_nginx_when_everything_behind_it_answers(
        tmp_path: Path, xvnc: RFBServer, websockify: RFBServer, x_socket: str) -> None:
    service = SignInService(tmp_path / "auth.sock")
    try:
        port = _closed_port()
        reason, part = probes.run_all(_checks(tmp_path, port, x_socket, sign_in=True)) or (
            "", "")
        assert service.requests, "the sign-in service was asked"
    finally:
        service.close()
    assert part == "nginx"
    assert f"port {port}" in reason


def test_desktop_probes_with_sign_in_pass_when_everything_answers(
        tmp_path: Path, front: RFBServer, xvnc: RFBServer, websockify: RFBServer,
        x_socket: str) -> None:
    service = SignInService(tmp_path / "auth.sock")
    try:
        assert probes.run_all(_checks(tmp_path, front.port, x_socket, sign_in=True)) is None
    finally:
        service.close()


def test_run_all_reports_the_first_failure_and_stops() -> None:
    calls: list[str] = []

    def ok(name: str) -> Probe:
        return Probe(name, "xvnc", lambda: calls.append(name))

    def bad(name: str, part: str) -> Probe:
        def check() -> None:
            calls.append(name)
            raise ProbeError(f"{name} is down")
        return Probe(name, part, check)

    assert probes.run_all([ok("a"), bad("b", "websockify"), bad("c", "xvnc")]) == (
        "b is down", "websockify")
    assert calls == ["a", "b"]
    assert probes.run_all([ok("a")]) is None


# -- the prober thread ------------------------------------------------------------------

class Script:
    """A probe whose outcomes ("p" passes, "f" fails) follow a script; after it, the
    script's last outcome repeats."""

    def __init__(self, outcomes: str) -> None:
        self.outcomes = list(outcomes)
        self.last = outcomes[-1] if outcomes else "p"
        self.calls = 0
        self.done = threading.Event()

    def __call__(self) -> None:
        self.calls += 1
        if self.outcomes:
            outcome = self.outcomes.pop(0)
        else:
            self.done.set()
            outcome = self.last
        if outcome == "f":
            raise ProbeError(f"failure at call {self.calls}")


def _drain(q: EventQueue) -> list[Event]:
    out: list[Event] = []
    while (ev := q.get(timeout=0)) is not None:
        out.append(ev)
    return out


def _join_probers() -> None:
    threads = [t for t in threading.enumerate() if t.name == "prober"]
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "prober.stop() did not end the thread"


def _run_script(outcomes: str) -> list[Event]:
    q = EventQueue()
    script = Script(outcomes)
    prober = Prober([Probe("always", "xvnc", lambda: None),
                     Probe("scripted", "websockify", script)], q, interval=0.001)
    prober.start()
    try:
        assert script.done.wait(10), "the prober stopped probing"
    finally:
        prober.stop()
        _join_probers()
    return _drain(q)


def _failed(call: int) -> ProbeFailed:
    return ProbeFailed(reason=f"failure at call {call}", part="websockify")


def test_prober_posts_passed_once_then_nothing_while_healthy() -> None:
    assert _run_script("fffp") == [ProbePassed()]


def test_prober_ignores_failures_before_the_first_pass() -> None:
    """Until HEALTHY the desktop is still starting: failures are expected, not news."""
    assert _run_script("ffffffffp") == [ProbePassed()]


def test_prober_needs_two_consecutive_failures() -> None:
    # One failure between passes is a blip; two in a row are a verdict.
    assert _run_script("pfpfpf") == [ProbePassed(), _failed(7)]


def test_prober_posts_failure_once_while_it_lasts() -> None:
    assert _run_script("pfffffffff") == [ProbePassed(), _failed(3)]


def test_prober_posts_recovery() -> None:
    assert _run_script("pffffp") == [ProbePassed(), _failed(3), ProbePassed()]


def test_prober_reset_forgets_the_verdict() -> None:
    """After a part is restarted, the next pass is news again (RECOVERING -> HEALTHY)."""
    q = EventQueue()
    script = Script("p")
    prober = Prober([Probe("scripted", "websockify", script)], q, interval=0.001)
    prober.start()
    try:
        assert q.get(timeout=10) == ProbePassed(generation=0)
        prober.reset()
        assert prober.generation == 1
        assert q.get(timeout=10) == ProbePassed(generation=1)
    finally:
        prober.stop()
        _join_probers()
    assert _drain(q) == []


def test_prober_reset_with_new_probes_uses_them() -> None:
    q = EventQueue()
    old, new = Script("p"), Script("p")
    prober = Prober([Probe("old", "websockify", old)], q, interval=0.001)
    prober.start()
    try:
        assert q.get(timeout=10) == ProbePassed(generation=0)
        prober.reset([Probe("new", "websockify", new)])
        assert q.get(timeout=10) == ProbePassed(generation=1)
        calls = old.calls
        wait_for(lambda: new.calls > 3, "the new probes to run")
        assert old.calls == calls
    finally:
        prober.stop()
        _join_probers()


def test_prober_stop_ends_the_thread() -> None:
    q = EventQueue()
    script = Script("")
    prober = Prober([Probe("scripted", "xvnc", script)], q, interval=0.001)
    prober.start()
    wait_for(lambda: script.calls > 3, "probes to run")
    prober.stop()
    _join_probers()


def test_a_verdict_from_before_a_reset_is_never_posted() -> None:
    """A round that began before reset() judged the part that was replaced: whatever it
    found, nothing of it reaches the queue; the next verdict is the new generation's."""
    q = EventQueue()
    in_round, release = threading.Event(), threading.Event()
    rounds = 0

    def check() -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 2:  # the first round after the pass: held until the test resets
            in_round.set()
            assert release.wait(10)
            raise ProbeError("the old websockify is gone")

    prober = Prober([Probe("held", "websockify", check)], q, interval=0.001,
                    failures_to_unhealthy=1)
    prober.start()
    try:
        assert q.get(timeout=10) == ProbePassed(generation=0)
        assert in_round.wait(10)
        prober.reset()
        release.set()
        assert q.get(timeout=10) == ProbePassed(generation=1)
    finally:
        prober.stop()
        _join_probers()
    assert _drain(q) == []


def test_prober_stop_interrupts_a_long_interval() -> None:
    """stop() must not wait out the interval (10 s by default): docker stop is waiting."""
    q = EventQueue()
    prober = Prober([Probe("ok", "xvnc", lambda: None)], q, interval=3600)
    prober.start()
    assert q.get(timeout=10) == ProbePassed()  # now sleeping for an hour
    prober.stop()
    _join_probers()
