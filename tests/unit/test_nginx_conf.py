"""nginx's configuration as nginx itself judges it (`nginx -t`), then a real nginx run
from it in a temporary prefix, with a small RFB server behind it on websockify's UNIX
socket: what a browser, an attacker, a reverse proxy and whaletopd's own health checks
see on the web port.

nginx listens on all interfaces (as in the container); the tests talk to 127.0.0.1 only
(from 127.0.0.2 too, for a second client address on the same machine).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench import certgen
from whaletopd import filedav, frontdoor, link, metrics, nginx_conf, probes
from whaletopd.children import RunAs
from whaletopd.config import Config
from whaletopd.nginx_conf import (
    CONNECTION_BURST,
    CONNECTION_BURST_UNDELAYED,
    CONNECTIONS_PER_ADDRESS,
    FrontDoorSpec,
    render,
)
from whaletopd.paths import Paths

from .. import tools
from .helpers import wait_for
from .rfb import RFBServer

NGINX = tools.NGINX.path
needs_nginx = tools.NGINX.needed
pytestmark = needs_nginx
TOKEN = "0123456789abcdef0123456789abcdef"
PASSWORD = "s3cretpw"
# nginx's workers drop to this account when the master runs as root (as in the image).
WORKER = "www-data" if os.geteuid() == 0 else None
VNC_HTML = ("<!DOCTYPE html><html><head><title>noVNC</title></head><body>"
            + "<!-- noVNC's page, long enough to be compressed -->" * 40 + "</body></html>")


def _paths(base: Path) -> Paths:
    return Paths(state_dir=base / "state", run_dir=base / "run", tmpfs_dir=base / "shm",
                 x11_socket_dir=base / "x11",
                 x_lock_dir=base / "xlock", home_root=base / "home",
                 sudoers_file=base / "sudoers", novnc_dir=base / "novnc",
                 apps_root=base / "Apps", applications_dir=base / "applications")


@pytest.fixture
def base() -> Iterator[Path]:
    """A prefix nginx's workers (another account) can reach: pytest's own temporary
    folders are root's alone."""
    path = Path(tempfile.mkdtemp(prefix="whaletop-nginx-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def paths(base: Path) -> Paths:
    p = _paths(base)
    for folder in (p.run_dir, p.desktop_dir, p.nginx_dir, p.nginx_dir / "tmp", p.novnc_dir,
                   p.novnc_dir / "app", p.web_dir):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
    p.probe_dir.mkdir()
    p.probe_dir.chmod(0o700)  # as frontdoor.py makes it: whaletopd's account's alone
    if WORKER is not None:
        entry = pwd.getpwnam(WORKER)
        os.chown(p.nginx_dir / "tmp", entry.pw_uid, entry.pw_gid)
        # As the front door makes it: only the workers' group passes, and each socket
        # made in it gets that group (setgid), so 0660 sockets are theirs to reach.
        mode, gid = frontdoor.desktop_dir_mode(
            RunAs(uid=entry.pw_uid, gid=entry.pw_gid, groups=(), home="/"))
        os.chown(p.desktop_dir, -1, gid if gid is not None else -1)
        p.desktop_dir.chmod(mode)
    (p.novnc_dir / "vnc.html").write_text(VNC_HTML)
    (p.novnc_dir / "app" / "ui.js").write_text("export const secretName = 1;\n")
    return p


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def _write(paths: Paths, text: str) -> Path:
    paths.nginx_conf.write_text(text)
    paths.nginx_conf.chmod(0o600)
    return paths.nginx_conf


def nginx_t(paths: Paths) -> subprocess.CompletedProcess[str]:
    assert NGINX is not None
    return subprocess.run([NGINX, "-t", "-q", "-c", str(paths.nginx_conf), "-p",
                           str(paths.nginx_dir), "-e", "stderr"],
                          capture_output=True, text=True, check=False, timeout=30)


def _tls_pem(paths: Paths) -> tuple[Path, str]:
    cert, key = certgen.make(names=("127.0.0.1", "localhost"))
    paths.tls_pem.parent.mkdir(parents=True, exist_ok=True)
    paths.tls_pem.write_bytes(certgen.pem(cert, key))
    paths.tls_pem.chmod(0o600)
    return paths.tls_pem, certgen.fingerprint(cert)


def _spec(tls_pem: Path | None = None) -> FrontDoorSpec:
    return FrontDoorSpec(probe_token=TOKEN, tls_pem=tls_pem, worker_user=WORKER)


# -- what nginx -t says of each configuration ------------------------------------------

CONFIGS = {
    "plain": Config(),
    "tls": Config(enable_tls=True),
    "sign-in": Config(web_password_from_env=True, web_password="correct horse"),
    "web-users": Config(web_users="/data/users", enable_tls=True),
    "trusted-proxies": Config(trusted_proxy="10.0.0.0/8, 2001:db8::/32,192.168.1.7,::1"),
    "connection-rate": Config(connection_rate=6000),
    "expose-vnc": Config(expose_vnc=True, web_port=443, vnc_port=5900),
    "everything": Config(web_users="/data/users", enable_tls=True, connection_rate=1,
                         trusted_proxy="172.16.0.0/12,fd00::/8", web_port=9443,
                         metrics_token="0123456789abcdef+/=._~-"),
    "metrics-token": Config(metrics_token="0123456789abcdef"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_nginx_accepts_the_configuration(name: str, paths: Paths) -> None:
    config = CONFIGS[name]
    tls_pem = _tls_pem(paths)[0] if config.tls else None
    _write(paths, render(config, paths, _spec(tls_pem)))
    result = nginx_t(paths)
    assert result.returncode == 0, result.stderr
    assert "[emerg]" not in result.stderr
    assert "[warn]" not in result.stderr, "nginx warns about its configuration"


def test_plain_configuration(paths: Paths) -> None:
    conf = render(Config(web_port=8181), paths, _spec())
    assert "listen 8181;" in conf
    assert "ssl" not in conf
    assert "Strict-Transport-Security" not in conf
    assert "auth_request" not in conf
    assert "set_real_ip_from" not in conf
    assert f"server unix:{paths.websockify_socket};" in conf
    assert f"root {paths.novnc_dir};" in conf
    assert "daemon off;" in conf, "a child of whaletopd, in the foreground"
    assert "server_tokens off;" in conf
    assert f"include {nginx_conf.MIME_TYPES};" in conf


def test_tls_configuration(paths: Paths) -> None:
    conf = render(Config(web_port=8443, enable_tls=True), paths, _spec(paths.tls_pem))
    assert "listen 8443 ssl;" in conf
    assert f"ssl_certificate {paths.tls_pem};" in conf
    assert f"ssl_certificate_key {paths.tls_pem};" in conf
    assert "Strict-Transport-Security" in conf


@pytest.mark.parametrize("name", list(CONFIGS))
def test_half_open_connections_are_capped_by_time_in_every_mode(name: str,
                                                                 paths: Paths) -> None:
    """What caps a slowloris and a slow body (nginx_conf's docstring), and the health
    checks' own listener, in every mode: TLS on it too when the web port has it."""
    config = CONFIGS[name]
    lines = [line.strip() for line in render(config, paths, _spec(paths.tls_pem)).splitlines()]
    ssl = " ssl" if config.tls else ""
    for line in (f"listen {config.web_port}{ssl};", f"listen unix:{paths.probe_socket}{ssl};",
                 f"client_header_timeout {nginx_conf.HEADER_TIMEOUT};",
                 f"client_body_timeout {nginx_conf.BODY_TIMEOUT};",
                 f"lingering_time {nginx_conf.LINGER_TIME};",
                 "reset_timedout_connection on;",
                 "limit_conn_zone $whaletop_client zone=requests:1m;",
                 f"limit_conn requests {nginx_conf.REQUESTS_PER_ADDRESS};",
                 f"worker_connections {nginx_conf.WORKER_CONNECTIONS};",
                 f"worker_rlimit_nofile {nginx_conf.WORKER_FILES};"):
        assert lines.count(line) == 1, line
    assert [line for line in lines if line.startswith("listen ")] == [
        f"listen {config.web_port}{ssl};", f"listen unix:{paths.probe_socket}{ssl};"]
    # Room for slowhttptest's 2,000 (200 a second for HEADER_TIMEOUT) several times.
    assert 4 * 200 * int(nginx_conf.HEADER_TIMEOUT[:-1]) <= nginx_conf.WORKER_CONNECTIONS
    assert nginx_conf.WORKER_FILES >= 2 * nginx_conf.WORKER_CONNECTIONS


def test_sign_in_configuration(paths: Paths) -> None:
    conf = render(Config(web_users="/data/users"), paths, _spec())
    assert f"server unix:{paths.auth_socket};" in conf
    # Every location that reaches the desktop asks the sign-in service first (the page,
    # the WebSocket, /whaletop/keyboard, /files/, /sound).
    assert conf.count("auth_request /auth/check;") == 5
    assert "internal;" in conf


@pytest.mark.parametrize(("given", "lines"), [
    ("10.0.0.0/8", ["10.0.0.0/8"]),
    ("10.1.2.3/8", ["10.0.0.0/8"]),  # host bits set: the network is meant
    ("192.168.1.7", ["192.168.1.7/32"]),
    ("2001:db8::/32, ::1", ["2001:db8::/32", "::1/128"]),
    ("172.16.0.0/12,fd00::/8", ["172.16.0.0/12", "fd00::/8"]),
])
def test_trusted_proxies_are_believed_for_x_forwarded_for(paths: Paths, given: str,
                                                          lines: list[str]) -> None:
    conf = render(Config(trusted_proxy=given), paths, _spec())
    assert [line.strip() for line in conf.splitlines() if "set_real_ip_from" in line] == [
        f"set_real_ip_from {cidr};" for cidr in lines]
    assert "real_ip_header X-Forwarded-For;" in conf
    assert "real_ip_recursive on;" in conf


def test_connection_rate(paths: Paths) -> None:
    conf = render(Config(connection_rate=120), paths, _spec())
    assert "zone=connections:1m rate=120r/m;" in conf


@pytest.mark.parametrize("user", ["www-data", None])
def test_worker_user_line(paths: Paths, user: str | None) -> None:
    spec = FrontDoorSpec(probe_token=TOKEN, worker_user=user)
    lines = [line for line in render(Config(), paths, spec).splitlines()
             if line.startswith("user ")]
    assert lines == ([f"user {user};"] if user else [])


@pytest.mark.parametrize("token", ["", "abc def", 'abc";', "abc;\nuser root", "a}b", "a$b"])
def test_a_probe_token_that_could_change_the_configuration_is_refused(
        paths: Paths, token: str) -> None:
    with pytest.raises(ValueError, match="alphanumeric"):
        render(Config(), paths, FrontDoorSpec(probe_token=token))


# -- a real nginx ------------------------------------------------------------------------

@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Door:
    """A running nginx from render(), with the access log (stdout) and error log
    (stderr) it wrote, and the RFB server standing for websockify behind it."""

    paths: Paths
    config: Config
    proc: subprocess.Popen[bytes]
    backend: RFBServer
    tls: bool = False
    access: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    opened: list[socket.socket] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.config.web_port

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    def get(self, path: str, headers: Mapping[str, str] | None = None,
            source: str = "127.0.0.1") -> Response:
        conn: http.client.HTTPConnection
        if self.tls:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=5,
                                               source_address=(source, 0),
                                               context=self._context())
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5,
                                              source_address=(source, 0))
        try:
            conn.request("GET", path, headers=dict(headers or {}))
            response = conn.getresponse()
            body = response.read()
            raw = response.getheaders()
            return Response(response.status, {k.lower(): v for k, v in raw}, body, raw)
        finally:
            conn.close()

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", self.port))
        if self.tls:
            sock = self._context().wrap_socket(sock)
        self.opened.append(sock)
        return sock

    def websocket_request(self, sock: socket.socket,
                          headers: Mapping[str, str] | None = None) -> None:
        lines = ["GET /websockify HTTP/1.1", f"Host: 127.0.0.1:{self.port}",
                 "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                 *(f"{k}: {v}" for k, v in (headers or {}).items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    @staticmethod
    def status_of(sock: socket.socket, timeout: float = 5) -> tuple[int | None, str]:
        """The response's status and head; None when nothing came within `timeout`."""
        sock.settimeout(timeout)
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(1)
                if not chunk:
                    break
                head += chunk
        except (TimeoutError, ssl.SSLError):
            return None, head.decode(errors="replace")
        text = head.decode(errors="replace")
        return (int(text.split(" ", 2)[1]) if text.startswith("HTTP/") else None), text

    def websocket(self, headers: Mapping[str, str] | None = None,
                  source: str = "127.0.0.1") -> tuple[int | None, str]:
        """Open the desktop's WebSocket as a browser would; the answer's status (the
        connection stays open until the test ends, as a viewer's would)."""
        sock = self.connect(source)
        self.websocket_request(sock, headers)
        return self.status_of(sock)

    def burst(self, count: int, headers: Mapping[str, str] | None = None,
              source: str = "127.0.0.1") -> list[int | None]:
        """`count` WebSocket requests sent at once from one address; their statuses
        (None: held back by nginx, still waiting half a second later)."""
        socks = [self.connect(source) for _ in range(count)]
        for sock in socks:
            self.websocket_request(sock, headers)
        deadline = time.monotonic() + 0.5
        return [self.status_of(sock, timeout=max(0.01, deadline - time.monotonic()))[0]
                for sock in socks]

    def hang_up(self) -> None:
        """Close every connection the test opened (a WebSocket is logged when it ends)."""
        for sock in self.opened:
            sock.close()

    def log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.access)]

    def wait_logged(self, count: int) -> list[dict[str, Any]]:
        wait_for(lambda: len(self.access) >= count, f"{count} access log lines")
        return self.log()


def _pump(stream: Any, into: list[str]) -> None:
    for raw in stream:
        into.append(raw.decode(errors="replace").rstrip("\n"))


StartDoor = Callable[..., Door]


@pytest.fixture
def start(paths: Paths) -> Iterator[StartDoor]:
    doors: list[Door] = []

    def start(config: Config | None = None, **kwargs: Any) -> Door:
        config = config or Config()
        config = Config(**{**config.__dict__, "web_port": _free_port(), **kwargs})
        tls_pem = _tls_pem(paths)[0] if config.tls else None
        _write(paths, render(config, paths, _spec(tls_pem)))
        checked = nginx_t(paths)
        assert checked.returncode == 0, checked.stderr
        backend = RFBServer(transport="ws", password=PASSWORD, unix=paths.websockify_socket)
        paths.websockify_socket.chmod(0o660)  # websockify's --unix-listen-mode
        assert NGINX is not None
        proc = subprocess.Popen([NGINX, "-c", str(paths.nginx_conf), "-p",
                                 str(paths.nginx_dir), "-e", "stderr"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        door = Door(paths, config, proc, backend, tls=config.tls)
        doors.append(door)
        for stream, into in ((proc.stdout, door.access), (proc.stderr, door.errors)):
            threading.Thread(target=_pump, args=(stream, into), daemon=True).start()

        def listening() -> bool:
            assert proc.poll() is None, f"nginx exited: {door.errors}"
            try:
                socket.create_connection(("127.0.0.1", door.port), timeout=1).close()
            except OSError:
                return False
            return True

        wait_for(listening, "nginx to listen")
        return door

    yield start
    for door in doors:
        door.hang_up()
        if door.proc.poll() is None:
            os.killpg(door.proc.pid, signal.SIGTERM)
            try:
                door.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(door.proc.pid, signal.SIGKILL)
                door.proc.wait()
        door.backend.close()


# -- noVNC's files ---------------------------------------------------------------------

def test_the_page_is_served_compressed_when_asked(start: StartDoor) -> None:
    door = start()
    plain = door.get("/vnc.html")
    assert plain.status == 200
    assert plain.body.decode() == VNC_HTML
    assert "content-encoding" not in plain.headers
    assert plain.headers["content-type"].startswith("text/html")
    packed = door.get("/vnc.html", {"Accept-Encoding": "gzip"})
    assert packed.status == 200
    assert packed.headers["content-encoding"] == "gzip"
    assert "Accept-Encoding" in packed.headers["vary"]
    assert len(packed.body) < len(VNC_HTML) / 2
    assert gzip.decompress(packed.body).decode() == VNC_HTML


def test_the_root_serves_the_index(start: StartDoor, paths: Paths) -> None:
    (paths.novnc_dir / "index.html").write_text("<title>whaletop</title>")
    door = start()
    assert door.get("/").body == b"<title>whaletop</title>"


@pytest.mark.parametrize("sign_in", [False, True])
@pytest.mark.parametrize("name", sorted(link.LINKS))
def test_novnc_defaults_follow_the_link(start: StartDoor, paths: Paths, name: str,
                                        sign_in: bool) -> None:
    """noVNC reads defaults.json at start: --link's quality and compression levels,
    answered by nginx itself (the file in the image says {}), also with sign-in on."""
    (paths.novnc_dir / "defaults.json").write_text("{}")
    door = start(CONFIGS["sign-in"] if sign_in else Config(), link=name)
    answer = door.get("/defaults.json")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.headers["cache-control"] == "no-cache"
    chosen = link.LINKS[name]
    assert json.loads(answer.body) == {"quality": chosen.quality,
                                       "compression": chosen.compression}


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_the_page_is_revalidated_not_sent_again(start: StartDoor, encoding: str) -> None:
    """Cache-Control no-cache with validators: an upgraded image's files are seen at
    once, and an unchanged page costs a 304."""
    door = start()
    first = door.get("/vnc.html", {"Accept-Encoding": encoding})
    assert first.headers["cache-control"] == "no-cache"
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    by_etag = door.get("/vnc.html", {"Accept-Encoding": encoding, "If-None-Match": etag})
    assert (by_etag.status, by_etag.body) == (304, b"")
    by_date = door.get("/vnc.html", {"Accept-Encoding": encoding,
                                     "If-Modified-Since": modified})
    assert (by_date.status, by_date.body) == (304, b"")
    assert door.get("/vnc.html", {"If-None-Match": '"not-this-one"'}).status == 200


def test_a_changed_page_is_sent_again(start: StartDoor, paths: Paths) -> None:
    door = start()
    etag = door.get("/vnc.html").headers["etag"]
    page = paths.novnc_dir / "vnc.html"
    page.write_text(VNC_HTML + "<!-- upgraded -->")
    os.utime(page, (page.stat().st_atime, page.stat().st_mtime + 10))
    again = door.get("/vnc.html", {"If-None-Match": etag})
    assert again.status == 200
    assert again.body.endswith(b"<!-- upgraded -->")


def test_no_folder_is_listed(start: StartDoor) -> None:
    door = start()
    listing = door.get("/app/")
    assert listing.status in (403, 404)
    assert b"ui.js" not in listing.body
    assert door.get("/app/ui.js").status == 200
    assert door.get("/nope.html").status == 404


def test_redirects_are_relative(start: StartDoor) -> None:
    """Behind a proxy on a sub-path, an absolute redirect would name nginx's own port."""
    moved = start().get("/app")
    assert moved.status == 301
    assert moved.headers["location"] == "/app/"


def test_the_server_does_not_say_its_version(start: StartDoor) -> None:
    response = start().get("/nope.html")
    assert response.headers["server"] == "nginx"
    assert b"nginx/" not in response.body


# -- browser safety headers, HSTS ----------------------------------------------------------

SAFETY = {
    "x-frame-options": "SAMEORIGIN",
    "content-security-policy": "frame-ancestors 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


@pytest.mark.parametrize("path", ["/vnc.html", "/nope.html", "/app/"])
def test_no_other_site_can_frame_the_desktop(start: StartDoor, path: str) -> None:
    """Clickjacking: a page of another site must not show the desktop in a frame."""
    response = start().get(path)
    for name, value in SAFETY.items():
        assert response.headers.get(name) == value, (path, name)
    names = [k.lower() for k, _ in response.raw_headers]
    assert names.count("x-frame-options") == 1, "one header, not one per block"
    assert "strict-transport-security" not in response.headers, "HSTS without TLS"


def test_the_websocket_answer_carries_the_safety_headers(start: StartDoor) -> None:
    status, head = start().websocket()
    assert status == 101
    assert "X-Frame-Options: SAMEORIGIN" in head


def test_with_tls_hsts_and_the_certificate_served(start: StartDoor, paths: Paths) -> None:
    door = start(Config(enable_tls=True))
    response = door.get("/vnc.html")
    assert response.status == 200
    assert response.headers["strict-transport-security"] == "max-age=31536000"
    for name, value in SAFETY.items():
        assert response.headers.get(name) == value
    served = certgen.served_fingerprint(door.port)
    assert served == certgen.fingerprint(certgen.x509.load_pem_x509_certificate(
        paths.tls_pem.read_bytes()))
    # The WebSocket over TLS, and a whole VNC login through it, as noVNC does it.
    assert probes.websocket_login("127.0.0.1", door.port, PASSWORD, 5, pin=served,
                                  headers={probes.PROBE_HEADER: TOKEN}) == "RFB 003.008"


def _desktop_checks(door: Door, pin: str | None = None) -> list[probes.Probe]:
    """whaletopd's full round (probes.desktop_probes) against this nginx, through its
    listener for them; the X display is not nginx's business here."""
    paths = door.paths
    target = probes.Target(door.port, "", paths.desktop_dir / "vnc.sock",
                           paths.websockify_socket, PASSWORD, 5, TOKEN, pin=pin,
                           front_socket=paths.probe_socket)
    blame = {"x_display": "xvnc", "web_login": "nginx", "novnc_page": "nginx"}
    return [p for p in probes.desktop_probes(target, blame) if p.name != "x_display"]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_the_health_checks_pass_on_their_own_socket(start: StartDoor, paths: Paths,
                                                    tls: bool) -> None:
    door = start(Config(enable_tls=tls))
    pin = (certgen.fingerprint(certgen.x509.load_pem_x509_certificate(
        paths.tls_pem.read_bytes())) if tls else None)
    assert probes.run_all(_desktop_checks(door, pin)) is None
    assert door.backend.results == [0], "one VNC login, through nginx"
    if tls:  # the certificate is pinned there too: another one fails
        with pytest.raises(probes.ProbeError, match="expected 0000000000000000"):
            probes.novnc_page(paths.probe_socket, None, 5, pin="0" * 64,
                              headers={probes.PROBE_HEADER: TOKEN})
    # Only whaletopd's account may enter the socket's folder.
    assert paths.probe_dir.stat().st_mode & 0o777 == 0o700


def test_slow_bodies_from_one_address_are_capped_and_spare_the_others(
        start: StartDoor) -> None:
    """A slow body (slowhttptest -B): a header, then a byte now and then.  Once headers
    are read, requests in progress count per address: the address gets 429 past
    REQUESTS_PER_ADDRESS; another address and the health checks are served."""
    door = start()
    head = (f"POST /vnc.html HTTP/1.1\r\nHost: 127.0.0.1:{door.port}\r\n"
            "Content-Length: 100000\r\n\r\nx").encode()
    for _ in range(nginx_conf.REQUESTS_PER_ADDRESS):
        door.connect().sendall(head)
    extra = door.connect()
    extra.sendall(head)
    assert door.status_of(extra)[0] == 429
    assert door.get("/vnc.html", source="127.0.0.2").status == 200
    assert probes.run_all(_desktop_checks(door)) is None


def _tls12_handshake(port: int, ciphers: str) -> str | None:
    """The suite nginx picks for a TLS 1.2 client offering only `ciphers`; None when it
    refuses them all."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw) as tls:
            cipher = tls.cipher()
            return cipher[0] if cipher else None
    except ssl.SSLError:
        return None


def test_with_tls_only_mozilla_intermediate_suites(start: StartDoor) -> None:
    """TLS 1.2 with AEAD and forward secrecy only: a client offering only CBC suites
    (LUCKY13's kind) or RSA key exchange gets no connection; one offering Mozilla's
    intermediate suites does."""
    door = start(Config(enable_tls=True))
    for refused in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384",
                    "ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA",
                    "AES128-GCM-SHA256", "AES256-SHA"):
        assert _tls12_handshake(door.port, refused) is None, refused
    for suite in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                  "ECDHE-ECDSA-CHACHA20-POLY1305"):
        assert _tls12_handshake(door.port, suite) == suite
    assert door.get("/vnc.html").status == 200, "TLS 1.3, as browsers speak it"


def test_with_tls_plain_http_is_sent_to_https(start: StartDoor) -> None:
    door = start(Config(enable_tls=True))
    sock = socket.create_connection(("127.0.0.1", door.port), timeout=5)
    door.opened.append(sock)
    sock.sendall(f"GET /vnc.html?x=1 HTTP/1.1\r\nHost: desk.example:{door.port}\r\n"
                 "Connection: close\r\n\r\n".encode())
    status, head = Door.status_of(sock)
    assert status == 301
    assert f"Location: https://desk.example:{door.port}/vnc.html?x=1" in head


# -- the WebSocket: Origin, limits, the health checks ---------------------------------------

def test_a_vnc_login_through_nginx(start: StartDoor) -> None:
    """The user's whole path: nginx, the WebSocket proxied to the UNIX socket, RFB."""
    door = start()
    assert probes.websocket_login("127.0.0.1", door.port, PASSWORD, 5) == "RFB 003.008"
    assert door.backend.results == [0]
    probes.novnc_page("127.0.0.1", door.port, 5)


@pytest.mark.parametrize("origin", [
    "http://evil.example",
    "https://evil.example",
    "http://127.0.0.1:1",  # another port is another origin
    "http://127.0.0.1.evil.example",
    "http://evil.example/http://127.0.0.1",
    "null",  # a sandboxed frame or a file: page
    "file://",
])
def test_a_websocket_from_another_site_is_refused(start: StartDoor, origin: str) -> None:
    """A page of another site must not open the desktop with this browser's
    credentials (cookies, TLS client state): browsers always send Origin."""
    door = start()
    status, _ = door.websocket({"Origin": origin})
    assert status == 403
    assert door.backend.ws_requests == [], "the request reached websockify"


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_websocket_from_the_desktop_s_own_page_is_served(start: StartDoor,
                                                           tls: bool) -> None:
    """Its own page: the same host and port, over the scheme the desktop serves.  The
    other scheme is another origin (a page on http:// is anyone's on the network)."""
    door = start(Config(enable_tls=tls))
    scheme, other = ("https", "http") if tls else ("http", "https")
    status, head = door.websocket({"Origin": f"{scheme}://127.0.0.1:{door.port}"})
    assert status == 101, head
    assert "Upgrade: websocket" in head
    assert door.websocket({"Origin": f"{other}://127.0.0.1:{door.port}"})[0] == 403
    # What the client claims about the scheme is believed from a trusted proxy only.
    forged = {"Origin": f"{other}://127.0.0.1:{door.port}", "X-Forwarded-Proto": other}
    assert door.websocket(forged)[0] == 403
    assert len(door.backend.ws_requests) == 1, "refused ones never reached websockify"


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_behind_a_trusted_proxy_its_scheme_is_the_browser_s(start: StartDoor,
                                                            tls: bool) -> None:
    """A reverse proxy that terminates TLS speaks plain HTTP to the desktop: the scheme
    the browser used is the one it forwards (X-Forwarded-Proto), the connection's when
    it says nothing."""
    door = start(Config(trusted_proxy="127.0.0.1/32", enable_tls=tls))
    here = f"127.0.0.1:{door.port}"
    own = "https" if tls else "http"
    assert door.websocket({"Origin": f"https://{here}", "X-Forwarded-Proto": "https"})[0] == 101
    assert door.websocket({"Origin": f"http://{here}", "X-Forwarded-Proto": "http"})[0] == 101
    assert door.websocket({"Origin": f"http://{here}", "X-Forwarded-Proto": "https"})[0] == 403
    assert door.websocket({"Origin": f"https://{here}", "X-Forwarded-Proto": "http"})[0] == 403
    assert door.websocket({"Origin": f"{own}://{here}"})[0] == 101
    assert door.websocket({"Origin": f"{own}://{here}", "X-Forwarded-Proto": "gopher"})[0] == 101


def test_an_untrusted_proxy_s_scheme_is_not_believed(start: StartDoor) -> None:
    door = start(Config(trusted_proxy="10.0.0.0/8, 2001:db8::/32"))
    here = f"127.0.0.1:{door.port}"
    assert door.websocket({"Origin": f"https://{here}", "X-Forwarded-Proto": "https"})[0] == 403
    assert door.websocket({"Origin": f"http://{here}", "X-Forwarded-Proto": "https"})[0] == 101


def test_a_websocket_without_origin_is_served(start: StartDoor) -> None:
    """Not a browser (a VNC client, a script): nothing to forge with."""
    status, _ = start().websocket()
    assert status == 101


def test_a_burst_of_connections_is_refused_and_the_health_checks_still_pass(
        start: StartDoor) -> None:
    """One address opening connections faster than --connection-rate: a burst is let
    through (some slowed), then 429.  whaletopd's own checks carry the probe header:
    never limited (a flood cannot make the desktop UNHEALTHY), never logged."""
    door = start(Config(connection_rate=1))
    statuses = door.burst(CONNECTION_BURST + 15)
    # At one a minute nothing is refilled during the test: the first and the burst's
    # undelayed part at once, the rest of the burst held back, then refusals.
    assert statuses.count(101) == 1 + CONNECTION_BURST_UNDELAYED
    assert statuses.count(None) == CONNECTION_BURST - CONNECTION_BURST_UNDELAYED
    assert statuses.count(429) == 15 - 1
    assert door.websocket()[0] == 429, "still refused"
    # The health checks, while the address is refused.
    headers = {probes.PROBE_HEADER: TOKEN}
    for _ in range(3):
        assert probes.websocket_login("127.0.0.1", door.port, PASSWORD, 5,
                                      headers=headers) == "RFB 003.008"
        probes.novnc_page("127.0.0.1", door.port, 5, headers=headers)
    # A wrong token is no token.
    assert door.websocket({probes.PROBE_HEADER: "0" * 32})[0] == 429
    # Another address is not refused for this one's flood.
    assert door.websocket(source="127.0.0.2")[0] == 101


def test_open_connections_per_address_are_limited(start: StartDoor) -> None:
    door = start(Config(connection_rate=6000))
    statuses = [door.websocket()[0] for _ in range(CONNECTIONS_PER_ADDRESS + 3)]
    assert statuses[:CONNECTIONS_PER_ADDRESS] == [101] * CONNECTIONS_PER_ADDRESS
    assert statuses[CONNECTIONS_PER_ADDRESS:] == [429] * 3
    assert door.websocket({probes.PROBE_HEADER: TOKEN})[0] == 101


# -- the access log ---------------------------------------------------------------------

def test_requests_are_logged_as_json_without_the_query(start: StartDoor) -> None:
    door = start()
    door.get("/vnc.html?autoconnect=1&password=secret", {"User-Agent": "tester/1.0"})
    door.get("/nope.html?password=secret")
    door.websocket({"Origin": "http://evil.example"})
    lines = door.wait_logged(3)
    assert [(e["path"], e["status"], e["method"]) for e in lines] == [
        ("/vnc.html", 200, "GET"), ("/nope.html", 404, "GET"), ("/websockify", 403, "GET")]
    first = lines[0]
    assert (first["event"], first["level"], first["client"]) == ("request", "info",
                                                                 "127.0.0.1")
    assert first["user_agent"] == "tester/1.0"
    assert first["bytes"] == len(VNC_HTML)
    assert first["user"] == ""
    assert isinstance(first["seconds"], float)
    assert not any("secret" in line for line in door.access + door.errors)


def test_a_crafted_request_cannot_forge_log_fields(start: StartDoor) -> None:
    door = start()
    door.get("/vnc.html", {"User-Agent": 'x", "status": 200, "event": "forged'})
    entry = door.wait_logged(1)[0]
    assert entry["event"] == "request"
    assert entry["user_agent"] == 'x", "status": 200, "event": "forged'


def test_the_health_checks_are_not_logged(start: StartDoor) -> None:
    door = start()
    headers = {probes.PROBE_HEADER: TOKEN}
    probes.novnc_page("127.0.0.1", door.port, 5, headers=headers)
    probes.websocket_login("127.0.0.1", door.port, PASSWORD, 5, headers=headers)
    door.get("/vnc.html")  # then one that is
    lines = door.wait_logged(1)
    assert [(e["path"], e["status"]) for e in lines] == [("/vnc.html", 200)]
    assert not any(TOKEN in line for line in door.access + door.errors)


# -- behind a reverse proxy (--trusted-proxy) ---------------------------------------------

def test_a_trusted_proxy_s_forwarded_address_is_the_client(start: StartDoor) -> None:
    door = start(Config(trusted_proxy="127.0.0.1/32", connection_rate=1))
    door.get("/vnc.html", {"X-Forwarded-For": "198.51.100.7"})
    # A client may put anything first: the address the proxy saw is the last one.
    door.get("/vnc.html", {"X-Forwarded-For": "192.0.2.1, 203.0.113.9"})
    assert [e["client"] for e in door.wait_logged(2)] == ["198.51.100.7", "203.0.113.9"]
    # Limits are per forwarded address: one flooding does not lock out the others.
    flood = {"X-Forwarded-For": "198.51.100.7"}
    statuses = door.burst(CONNECTION_BURST + 15, flood)
    assert statuses.count(429) == 15 - 1
    assert door.websocket(flood)[0] == 429
    assert door.websocket({"X-Forwarded-For": "203.0.113.9"})[0] == 101


def test_without_a_trusted_proxy_x_forwarded_for_changes_nothing(start: StartDoor) -> None:
    """A client cannot dodge its limits by making up addresses."""
    door = start(Config(connection_rate=1))
    door.get("/vnc.html", {"X-Forwarded-For": "198.51.100.7"})
    assert door.wait_logged(1)[0]["client"] == "127.0.0.1"
    socks = [door.connect() for _ in range(CONNECTION_BURST + 5)]
    for i, sock in enumerate(socks):
        door.websocket_request(sock, {"X-Forwarded-For": f"198.51.100.{i}"})
    assert 429 in [Door.status_of(sock, timeout=0.5)[0] for sock in socks[-4:]]


def test_an_untrusted_proxy_is_not_believed(start: StartDoor) -> None:
    door = start(Config(trusted_proxy="10.0.0.0/8, 2001:db8::/32"))
    door.get("/vnc.html", {"X-Forwarded-For": "198.51.100.7"})
    assert door.wait_logged(1)[0]["client"] == "127.0.0.1"


# -- with sign-in ------------------------------------------------------------------------

class SignInService:
    """Stands for webauth on its UNIX socket: /auth/check says 204 (with the user) for
    the probe token or the cookie "ok", else 401; /auth/redirect sends to the page."""

    def __init__(self, path: Path) -> None:
        self.requests: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        path.chmod(0o666)
        self._sock.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head and (chunk := conn.recv(4096)):
                    head += chunk
                text = head.decode(errors="replace")
                self.requests.append(text)
                if text.startswith("GET /auth/check "):
                    if f"X-Whaletop-Probe: {TOKEN}" in text:
                        answer = "204 No Content\r\n"
                    elif "Cookie: session=ok" in text or "Authorization: Basic " in text:
                        answer = "204 No Content\r\nX-Whaletop-User: alice\r\n"
                    else:
                        answer = "401 Unauthorized\r\n"
                else:
                    answer = "302 Found\r\nLocation: /auth/sign-in\r\n"
                conn.sendall(f"HTTP/1.1 {answer}Content-Length: 0\r\n"
                             "Connection: close\r\n\r\n".encode())

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def sign_in(paths: Paths) -> Iterator[SignInService]:
    service = SignInService(paths.auth_socket)
    yield service
    service.close()


def test_with_sign_in_nothing_is_served_before_signing_in(
        start: StartDoor, sign_in: SignInService) -> None:
    door = start(Config(web_users="/data/users"))
    page = door.get("/vnc.html")
    assert page.status == 302
    assert page.headers["location"] == "/auth/sign-in"
    assert b"noVNC" not in page.body
    assert door.websocket()[0] == 401
    assert door.backend.ws_requests == []
    # Signed in: the page and the desktop, and the log names who.
    assert door.get("/vnc.html", {"Cookie": "session=ok"}).status == 200
    assert door.websocket({"Cookie": "session=ok"})[0] == 101
    door.hang_up()
    signed = [e for e in door.wait_logged(4) if e["status"] in (200, 101)]
    assert [e["user"] for e in signed] == ["alice", "alice"]


@pytest.mark.parametrize(("config", "sent", "told"), [
    (Config(web_users="/data/users"), "https", "http"),
    (Config(web_users="/data/users", enable_tls=True), "http", "https"),
    (Config(web_users="/data/users", trusted_proxy="127.0.0.1/32"), "https", "https"),
], ids=["plain", "tls", "trusted-proxy"])
def test_the_sign_in_service_is_told_the_browser_s_scheme(
        start: StartDoor, sign_in: SignInService, config: Config, sent: str,
        told: str) -> None:
    """The sign-in page compares a form's Origin with the scheme nginx tells it; what a
    client sends is replaced, unless a trusted proxy sent it."""
    door = start(config)
    door.get("/auth/signin", {"X-Forwarded-Proto": sent})
    (request,) = [r for r in sign_in.requests if r.startswith("GET /auth/signin")]
    assert [line for line in request.split("\r\n")
            if line.lower().startswith("x-forwarded-proto:")] == [f"X-Forwarded-Proto: {told}"]


def test_with_sign_in_the_health_checks_pass(start: StartDoor,
                                             sign_in: SignInService) -> None:
    door = start(Config(web_password_from_env=True, web_password="correct horse"))
    headers = {probes.PROBE_HEADER: TOKEN}
    probes.novnc_page("127.0.0.1", door.port, 5, headers=headers)
    assert probes.websocket_login("127.0.0.1", door.port, PASSWORD, 5,
                                  headers=headers) == "RFB 003.008"
    probes.sign_in_check(door.paths.auth_socket, TOKEN, 5)


def test_with_sign_in_websockify_gets_no_credentials(start: StartDoor,
                                                     sign_in: SignInService) -> None:
    """websockify runs as the desktop user, whose programs can read its memory: the
    credentials that opened the door are not its business."""
    door = start(Config(web_users="/data/users"))
    basic = "Basic YWxpY2U6YWxpY2UncyBwYXNzd29yZA=="  # alice:alice's password
    assert door.websocket({"Authorization": basic})[0] == 101
    assert door.websocket({"Cookie": "session=ok"})[0] == 101
    assert door.websocket({probes.PROBE_HEADER: TOKEN})[0] == 101
    wait_for(lambda: len(door.backend.ws_requests) == 3, "three upgrades at websockify")
    seen = b"".join(door.backend.ws_requests).decode()
    assert "Authorization" not in seen
    assert "session=ok" not in seen
    assert TOKEN not in seen


# -- /metrics ----------------------------------------------------------------------------

METRICS_TOKEN = "scrape.Token_0123456789+/="


def _metrics_written(paths: Paths) -> str:
    """The file as whaletopd writes it (the real part, not a copy of its text)."""
    numbers = metrics.Metrics(paths.metrics_file, ["websockify", "nginx"])
    numbers.publish("HEALTHY")
    return paths.metrics_file.read_text()


def test_metrics_are_open_like_the_page_without_sign_in_or_token(
        start: StartDoor, paths: Paths) -> None:
    text = _metrics_written(paths)
    door = start()
    answer = door.get("/metrics")
    assert answer.status == 200
    assert answer.body.decode() == text
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert 'whaletop_state{state="HEALTHY"} 1' in text


def test_metrics_before_whaletopd_wrote_them_are_not_found(start: StartDoor) -> None:
    assert start().get("/metrics").status == 404


@pytest.mark.parametrize("config", [Config(), Config(web_users="/data/users")],
                         ids=["open", "sign-in"])
def test_metrics_behind_a_token_need_exactly_that_token(
        start: StartDoor, paths: Paths, sign_in: SignInService, config: Config) -> None:
    """With a token, /metrics asks nothing of the sign-in service (a scraper has no
    session) and answers 401 to any request without the token."""
    text = _metrics_written(paths)
    door = start(config, metrics_token=METRICS_TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                    {"Authorization": f"Bearer {METRICS_TOKEN}x"},
                    {"Authorization": f"Bearer {METRICS_TOKEN[:-1]}"},
                    {"Authorization": f"Basic {METRICS_TOKEN}"},
                    {"Authorization": f"Bearer {METRICS_TOKEN.swapcase()}"},
                    {"Cookie": "session=ok"}):
        denied = door.get("/metrics", headers)
        assert denied.status == 401, headers
        assert denied.headers["www-authenticate"] == 'Bearer realm="whaletop metrics"'
        assert text.encode() not in denied.body
    allowed = door.get("/metrics", {"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert (allowed.status, allowed.body.decode()) == (200, text)
    assert not [r for r in sign_in.requests if "/metrics" in r], "the sign-in service was asked"
    # The page itself still needs signing in (with sign-in) whatever the token.
    if config.sign_in:
        assert door.get("/vnc.html", {"Authorization": f"Bearer {METRICS_TOKEN}"}).status == 302
    logged = door.wait_logged(8)
    assert [e["path"] for e in logged[:8]] == ["/metrics"] * 8
    assert [e["status"] for e in logged[:8]] == [401] * 7 + [200]
    assert not [line for line in door.access + door.errors if METRICS_TOKEN in line]


def test_metrics_with_sign_in_and_no_token_are_off(start: StartDoor, paths: Paths,
                                                   sign_in: SignInService) -> None:
    _metrics_written(paths)
    door = start(Config(web_users="/data/users"))
    for headers in ({}, {"Cookie": "session=ok"}):
        answer = door.get("/metrics", headers)
        assert answer.status == 404
        assert b"whaletop_state" not in answer.body
    assert not [r for r in sign_in.requests if "/metrics" in r]


@pytest.mark.parametrize("token", ['abc";\n}', "a b c d e f g h i j", "$http_host_0123456789"])
def test_a_metrics_token_that_could_change_the_configuration_is_refused(
        paths: Paths, token: str) -> None:
    with pytest.raises(ValueError, match="metrics token"):
        render(Config(metrics_token=token), paths, _spec())


# -- /sound: nginx in front of the real sound bridge (whaletopd/sound.py) ---------------

@pytest.fixture
def bridge(paths: Paths, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The real bridge on its socket; no sound server yet (it waits for one)."""
    paths.desktop_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "xdg"), "PULSE_SERVER": ""}
    proc = subprocess.Popen([sys.executable, "-m", "whaletopd.sound", "--socket",
                             str(paths.sound_socket)], env=env,
                            stdout=subprocess.DEVNULL, start_new_session=True)
    wait_for(paths.sound_socket.exists, "the bridge's socket")
    yield proc
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait()


def _sound_request(door_port: int, origin: str | None = None, cookie: str = "") -> bytes:
    key = base64.b64encode(b"0123456789abcdef").decode()
    lines = ["GET /sound HTTP/1.1", f"Host: 127.0.0.1:{door_port}", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Version: 13", f"Sec-WebSocket-Key: {key}"]
    if origin:
        lines.append(f"Origin: {origin}")
    if cookie:
        lines.append(f"Cookie: {cookie}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _sound_ticket(door: Door) -> str:
    """The default mode's cookie for /sound, from /sound/ticket and the VNC password."""
    web = None
    if WORKER is not None:
        entry = pwd.getpwnam(WORKER)
        web = RunAs(uid=entry.pw_uid, gid=entry.pw_gid, groups=(), home="/")
    filedav.write_credentials(door.config, door.paths, web, "secret1")
    assert door.get("/sound/ticket").status == 401
    wrong = door.get("/sound/ticket", _basic("user", "secret2"))
    assert wrong.status == 401
    assert "set-cookie" not in wrong.headers
    answer = door.get("/sound/ticket", _basic("user", "secret1"))
    assert answer.status == 200
    cookie = answer.headers["set-cookie"]
    assert cookie.endswith("; HttpOnly; SameSite=Strict"), cookie
    return cookie.split(";", 1)[0]


def test_nginx_opens_the_bridge_s_websocket(start: StartDoor,
                                            bridge: subprocess.Popen[bytes]) -> None:
    door = start()
    origin = f"http://127.0.0.1:{door.port}"
    # Without the VNC password's ticket: 401, the bridge never asked.
    sock = door.connect()
    sock.sendall(_sound_request(door.port, origin=origin))
    assert door.status_of(sock)[0] == 401
    sock = door.connect()
    name = f"whaletop_sound_{door.config.web_port}"
    sock.sendall(_sound_request(door.port, origin=origin, cookie=f"{name}=guess"))
    assert door.status_of(sock)[0] == 401
    cookie = _sound_ticket(door)
    sock = door.connect()
    sock.sendall(_sound_request(door.port, origin=origin, cookie=cookie))
    status, head = door.status_of(sock)
    assert status == 101
    accept = base64.b64encode(hashlib.sha1(
        base64.b64encode(b"0123456789abcdef") + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
        .digest()).decode()
    assert f"Sec-WebSocket-Accept: {accept}" in head
    # The page's question (a plain GET): not 404 (sound is on).
    assert door.get("/sound").status == 401
    assert door.get("/sound", {"Cookie": cookie}).status == 400  # the bridge's answer


def test_another_site_cannot_open_the_sound(start: StartDoor,
                                            bridge: subprocess.Popen[bytes]) -> None:
    door = start()
    sock = door.connect()
    sock.sendall(_sound_request(door.port, origin="https://evil.example"))
    assert door.status_of(sock)[0] == 403


def test_no_sound_is_404(start: StartDoor) -> None:
    door = start(Config(no_sound=True))
    assert door.get("/sound").status == 404


def test_sound_location_behind_sign_in(paths: Paths) -> None:
    conf = render(Config(web_users="/data/users"), paths, _spec())
    block = conf[conf.index("location = /sound"):]
    block = block[:block.index("location", 1)]
    assert "auth_request /auth/check;" in block
    assert f"proxy_pass http://unix:{paths.sound_socket}:;" in block
    assert "$whaletop_cross_origin" in block
    # The session is the ticket: no VNC password asked, no cookie of its own.
    assert "/sound/ticket" not in conf
    assert "$cookie_whaletop_sound" not in conf
