"""Every mode a person can run the desktop in, with every feature, as that person meets
it: one container per mode, one test per feature.

Modes: the default (the VNC password), sign-in, sign-in with TLS, and rootless
(`--user 1000:1000`) with a read-only root filesystem.  Features: the page, the
desktop's WebSocket (a VNC session that gets its picture), a 64 MiB upload and its
download (sha-identical), the sound (the ticket without sign-in, the session with it),
the keyboard switch, the clipboard both ways, and /metrics.

Each cell asserts what the person sees, and what someone without the credentials sees
(refused), so a cell fails when the feature is broken or open in that mode.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.e2e import vnc
from tests.e2e.conftest import Container, docker, wait_until
from tests.e2e.test_front_door import request, ws_upgrade
from whaletopd import webusers

pytestmark = pytest.mark.e2e

HOST, PORT = "127.0.0.1", 8080
COOKIE = f"whaletop_session_{PORT}"
PASSWORD = "alice-in-wonderland"
METRICS_TOKEN = "m" * 32
READ_ONLY = ("--read-only", "--tmpfs", "/tmp", "--tmpfs", "/run/whaletop")
DESKTOP_UID = "1000:1000"  # the desktop user in every mode (made so as root)
UPLOAD = 64 * 1024 * 1024
MODES = ["default", "sign-in", "sign-in-tls", "rootless-read-only"]


@dataclass
class Mode:
    name: str
    c: Container
    tls: bool
    sign_in: bool
    auth: dict[str, str] = field(default_factory=dict)  # what the person's requests carry

    # -- HTTP as the page (or a script) speaks it --

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        answer = request(method, path, headers, body, tls=self.tls, timeout=60)
        return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.body

    def upgrade(self, path: str, headers: dict[str, str]) -> int:
        """A WebSocket upgrade as a browser asks for it (with this site's Origin): the
        status answered."""
        origin = f"{'https' if self.tls else 'http'}://{HOST}:{PORT}"
        return ws_upgrade({"Origin": origin, **headers}, path=path, tls=self.tls)

    def vnc_session(self) -> vnc.WebVNC:
        conn = vnc.WebVNC(PORT, None, tls=self.tls, headers=self.auth)
        conn.log_in(None if self.sign_in else self.c.password())
        return conn

    def desktop_exec(self, *cmd: str, check: bool = True) -> str:
        """As the desktop user, on its display (a terminal in the session)."""
        env = _session_env(self.c)
        keep = [f"{k}={env[k]}" for k in ("DISPLAY", "XAUTHORITY", "HOME", "LD_PRELOAD",
                                           "NSS_WRAPPER_PASSWD", "NSS_WRAPPER_GROUP")
                if k in env]
        out = docker("exec", "-u", DESKTOP_UID, self.c.name, "env", *keep, *cmd,
                     check=check)
        return out.stdout


def _session_env(c: Container) -> dict[str, str]:
    pid = c.exec("pgrep", "-o", "lxpanel").stdout.strip()
    raw = c.exec("cat", f"/proc/{pid}/environ", user=DESKTOP_UID).stdout  # root may not
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _sign_in(m: Mode) -> str:
    body = urlencode({"username": "alice", "password": PASSWORD, "next": ""}).encode()
    status, headers, _ = m.request("POST", "/auth/signin", body, {
        "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 303, status
    cookie = headers["set-cookie"].split(";", 1)[0]
    assert cookie.startswith(COOKIE + "=")
    return cookie


@pytest.fixture(scope="module", params=MODES)
def mode(request: pytest.FixtureRequest, image: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mode]:
    name: str = request.param
    tmp = tmp_path_factory.mktemp(name)
    state = tmp / "state"
    state.mkdir()
    state.chmod(0o1777)
    users = tmp / "users"
    users.mkdir()
    (users / "users").write_text(f"alice:{webusers.hash_password(PASSWORD)}:full\n")
    container = f"whaletop-test-{uuid.uuid4().hex[:8]}"
    volume = f"whaletop-test-home-{uuid.uuid4().hex[:8]}"
    run = ["run", "-d", "--name", container, "--network", "host", "--shm-size", "256m",
           "-v", f"{state}:/opt/whaletop"]
    args: list[str] = ["--keyboard-layout=us"]
    sign_in = name.startswith("sign-in")
    if sign_in:
        run += ["-v", f"{users}:/users:ro"]
        run += ["-e", f"METRICS_TOKEN={METRICS_TOKEN}"]  # never on a command line
        args.append("--web-users=/users/users")
    if name == "sign-in-tls":
        args.append("--enable-tls")
    if name == "rootless-read-only":
        run += [*READ_ONLY, "--user", DESKTOP_UID, "-v", f"{volume}:/home/user"]
    docker(*run, image, "/start.py", *args)
    c = Container(name=container, state_dir=state)
    try:
        c.wait_status("HEALTHY", timeout=90)
        wait_until(lambda: c.exec("pgrep", "-o", "lxpanel", check=False).returncode == 0,
                   "LXDE's panel", timeout=60)
        m = Mode(name, c, tls=name == "sign-in-tls", sign_in=sign_in)
        m.auth = {"Cookie": _sign_in(m)} if sign_in else _basic("user", c.password())
        yield m
    finally:
        docker("rm", "-f", container, check=False)
        docker("volume", "rm", "-f", volume, check=False)


# -- the cells -------------------------------------------------------------------------------

def test_the_page(mode: Mode) -> None:
    status, _, body = mode.request("GET", "/vnc.html", headers=mode.auth)
    assert status == 200
    assert b"whaletop.js" in body
    stranger, headers, _ = mode.request("GET", "/vnc.html")
    if mode.sign_in:
        assert stranger == 302, "a stranger is sent to the sign-in page"
        assert "auth/signin" in headers["location"]
    else:
        assert stranger == 200, "the page is open; the VNC password guards the desktop"


def test_the_desktop_websocket(mode: Mode) -> None:
    session = mode.vnc_session()
    try:
        assert (session.width, session.height) == (1280, 800)
        assert session.framebuffer_update(), "a picture"
    finally:
        session.close()
    if mode.sign_in:
        assert mode.upgrade("/websockify", {}) == 401
    else:
        stranger = vnc.WebVNC(PORT, None, tls=mode.tls)
        try:
            with pytest.raises(PermissionError):
                stranger.log_in("wrong-pw")
        finally:
            stranger.close()


def test_an_upload_and_a_download_are_the_same_bytes(mode: Mode, tmp_path: Path) -> None:
    data = os.urandom(UPLOAD)
    name = f"modes-{mode.name}.bin"
    status, _, body = mode.request("PUT", f"/files/Desktop/{name}", data,
                                   {**mode.auth, "Content-Type": "application/octet-stream"})
    assert status == 201, (status, body[:200])
    mode.desktop_exec("cp", f"/home/user/Desktop/{name}", f"/home/user/Downloads/{name}")
    status, headers, got = mode.request("GET", f"/files/Downloads/{name}", headers=mode.auth)
    assert status == 200
    assert "attachment" in headers.get("content-disposition", "")
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    refused, _, _ = mode.request("PUT", f"/files/Desktop/x-{name}", b"x")
    assert refused == 401, "no credentials, no upload"


def test_the_sound(mode: Mode) -> None:
    if mode.sign_in:
        assert mode.upgrade("/sound", mode.auth) == 101, "the session lets the page listen"
        assert mode.upgrade("/sound", {}) == 401
        return
    status, headers, _ = mode.request("GET", "/sound/ticket", headers=mode.auth)
    assert status == 200, "the VNC password gets the ticket"
    ticket = headers["set-cookie"].split(";", 1)[0]
    assert mode.upgrade("/sound", {"Cookie": ticket}) == 101
    assert mode.request("GET", "/sound/ticket")[0] == 401
    assert mode.upgrade("/sound", {}) == 401


def _layout(mode: Mode) -> str:
    status, _, body = mode.request("GET", "/whaletop/keyboard", headers=mode.auth)
    assert status == 200
    layout: str = json.loads(body)["layout"]
    return layout


def test_the_keyboard_switch(mode: Mode) -> None:
    assert _layout(mode) == "us"
    assert mode.request("PUT", "/whaletop/keyboard/layout", b"de")[0] == 401
    status, _, _ = mode.request("PUT", "/whaletop/keyboard/layout", b"de", mode.auth)
    assert status in (201, 204)
    wait_until(lambda: _layout(mode) == "de", "the layout switched", timeout=10)
    query = mode.desktop_exec("setxkbmap", "-query")
    assert "layout:     de" in query, query
    status, _, _ = mode.request("PUT", "/whaletop/keyboard/layout", b"us", mode.auth)
    wait_until(lambda: _layout(mode) == "us", "the layout back", timeout=10)


def test_the_clipboard_both_ways(mode: Mode) -> None:
    session = mode.vnc_session()
    try:
        text = f"from the browser, {mode.name}"
        session.send(struct.pack("!BBBBI", 6, 0, 0, 0, len(text)) + text.encode())
        session.framebuffer_update()
        wait_until(lambda: mode.desktop_exec("xclip", "-o", "-selection", "clipboard",
                                             check=False) == text,
                   "the browser's text on the desktop's clipboard", timeout=10)
        back = f"from the desktop, {mode.name}"
        mode.desktop_exec("sh", "-c", f"printf %s '{back}' | setsid xclip -selection "
                                      "clipboard -i >/dev/null 2>&1 &")
        assert _server_cut_text(session, timeout=10) == back
    finally:
        session.close()


def _server_cut_text(session: vnc.WebVNC, timeout: float) -> str:
    """Read server messages until a ServerCutText (asking for small updates meanwhile)."""
    deadline = time.monotonic() + timeout
    session.sock.settimeout(timeout)
    while time.monotonic() < deadline:
        session.send(struct.pack("!BBHHHH", 3, 1, 0, 0, 1, 1))
        kind = session.recv(1)[0]
        if kind == 0:
            session.recv(1)
            for _ in range(struct.unpack("!H", session.recv(2))[0]):
                _x, _y, w, h, _enc = struct.unpack("!HHHHi", session.recv(12))
                session.recv(w * h * session.bits_per_pixel // 8)
        elif kind == 1:
            session.recv(3)
            session.recv(struct.unpack("!H", session.recv(2))[0] * 6)
        elif kind == 3:
            session.recv(3)
            return session.recv(struct.unpack("!I", session.recv(4))[0]).decode("latin-1")
        elif kind != 2:
            raise AssertionError(f"unexpected server message {kind}")
    raise AssertionError("no clipboard text from the desktop")


def test_metrics(mode: Mode) -> None:
    if mode.sign_in:
        assert mode.request("GET", "/metrics")[0] == 401, "the token is asked for"
        status, _, body = mode.request("GET", "/metrics", headers={
            "Authorization": f"Bearer {METRICS_TOKEN}"})
    else:
        status, _, body = mode.request("GET", "/metrics")
    assert status == 200
    assert b'whaletop_state{state="HEALTHY"} 1\n' in body, body[:500]
