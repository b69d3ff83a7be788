"""Switching the keyboard's layout from the page (kbswitch.py): the request files nginx's
WebDAV PUT leaves, their watch, the checks, setxkbmap, the file the page reads; and the
nginx locations that take the PUT (a real nginx, a stand-in sign-in service)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import pwd
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from tests.unit.helpers import wait_for
from tests.unit.test_nginx_conf import (
    NGINX,
    WORKER,
    _free_port,
    _paths,
    _spec,
    _write,
    base,  # noqa: F401  (a fixture: a folder nginx's workers can reach)
    needs_nginx,
    nginx_t,
)
from whaletopd import filedav, kbswitch
from whaletopd.children import RunAs
from whaletopd.config import Config
from whaletopd.deadlines import Deadlines
from whaletopd.desktop import Desktop
from whaletopd.events import EventQueue, KeyboardAsked, KeyboardSwitched
from whaletopd.machine import HEALTHY
from whaletopd.nginx_conf import render
from whaletopd.paths import Paths
from whaletopd.programs import Launch, session_argv
from whaletopd.provision import Account

from .. import tools

needs_xkb = tools.XKB_DATA.needed
SIGNED = Config(web_users="/data/users")


def _switch(paths: Paths, config: Config = SIGNED) -> kbswitch.KeyboardSwitch:
    switch = kbswitch.KeyboardSwitch(config, paths, EventQueue())
    switch.prepare(None)
    return switch


def _ask(paths: Paths, body: bytes, who: str = "alice") -> Path:
    path = paths.requests_dir / f"layout.{who}"
    path.write_bytes(body)
    return path


@needs_xkb
@pytest.mark.parametrize(("body", "ok"), [
    (b"us", True), (b"de\n", True), (b"fr\r\n", True),
    (b"gb", False),  # a layout, but not one the page tells apart
    (b"de(nodeadkeys)", False), (b"xx", False), (b"", False), (b"us; rm", False),
    (b"-option", False), ("dé".encode(), False), (b"\xff", False),
])
def test_only_the_pages_layouts_pass(body: bytes, ok: bool) -> None:
    assert (kbswitch.check(body) is None) is ok


def test_the_served_file_says_the_layout_and_how_to_switch(paths: Paths) -> None:
    switch = _switch(paths, Config(keyboard_layout="de", dpi=144, username="ann"))
    assert json.loads(paths.keyboard_file.read_text()) == {
        "layout": "de", "dpi": 144, "switch": True, "choices": ["us", "de", "fr"],
        "auth": "vnc-password", "user": "ann"}
    assert paths.requests_dir.is_dir(), "the default mode switches too (the VNC password)"
    _switch(paths, replace(SIGNED, keyboard_layout="de"))
    assert json.loads(paths.keyboard_file.read_text())["auth"] == "sign-in"
    assert "user" not in json.loads(paths.keyboard_file.read_text())
    assert oct(paths.keyboard_file.stat().st_mode & 0o777) == "0o644"
    switch.switched("fr", "")
    assert json.loads(paths.keyboard_file.read_text())["layout"] == "fr"


def test_a_previous_runs_requests_are_dropped(paths: Paths) -> None:
    paths.requests_dir.mkdir(parents=True)
    _ask(paths, b"fr")
    _switch(paths)
    assert list(paths.requests_dir.iterdir()) == []
    assert oct(paths.requests_dir.stat().st_mode & 0o777) == "0o700"
    assert json.loads(paths.keyboard_file.read_text())["switch"] is True


@needs_xkb
def test_a_request_is_taken_and_removed(paths: Paths) -> None:
    switch = _switch(paths)
    _ask(paths, b"us\n", "alice")
    assert switch.take() == kbswitch.Asked("us", "alice")
    assert list(paths.requests_dir.iterdir()) == []
    assert switch.take() == kbswitch.Asked(None)


@needs_xkb
def test_the_newest_request_wins(paths: Paths) -> None:
    switch = _switch(paths)
    old = _ask(paths, b"fr", "alice")
    os.utime(old, (1, 1))
    _ask(paths, b"de", "carol")
    assert switch.take() == kbswitch.Asked("de", "carol")


@needs_xkb
def test_a_bad_body_is_one_warning_and_nothing_changes(paths: Paths) -> None:
    switch = _switch(paths)
    _ask(paths, b"xx")
    with capture_logs() as logs:
        assert switch.take() == kbswitch.Asked(None)
    assert [(e["event"], e["who"], e["layout"], e["log_level"]) for e in logs] == [
        ("keyboard_request_refused", "alice", "xx", "warning")]
    assert "names no layout of xkb-data" in logs[0]["reason"]
    assert list(paths.requests_dir.iterdir()) == []
    assert switch.layout == "us"


def test_a_link_or_a_large_file_is_refused_unread(paths: Paths, tmp_path: Path) -> None:
    switch = _switch(paths)
    secret = tmp_path / "secret"
    secret.write_text("de")  # would pass: a link must not be followed at all
    (paths.requests_dir / "layout.alice").symlink_to(secret)
    _ask(paths, b"d" * (kbswitch.MAX_BODY + 1), "bob")
    (paths.requests_dir / "layout.carol").mkdir()
    with capture_logs() as logs:
        assert switch.take() == kbswitch.Asked(None)
    reasons = {e["who"]: e["reason"] for e in logs}
    assert set(reasons) == {"alice", "bob", "carol"}, logs
    assert reasons["carol"] == "not a regular file"
    assert "unreadable" in reasons["alice"]
    assert reasons["bob"] == f"over {kbswitch.MAX_BODY} bytes"
    assert secret.read_text() == "de"
    assert not any(e.get("layout") == "de" for e in logs)


def test_a_request_file_posts_keyboard_asked(paths: Paths) -> None:
    events = EventQueue()
    switch = kbswitch.KeyboardSwitch(SIGNED, paths, events)
    switch.prepare(None)
    switch.watch()
    try:
        # As nginx's PUT leaves it: a temporary file renamed into place.
        tmp = paths.requests_dir.parent / "body.tmp"
        tmp.write_bytes(b"de")
        os.replace(tmp, paths.requests_dir / "layout.alice")
        assert events.get(timeout=10) == KeyboardAsked()
    finally:
        switch.stop()


def test_the_default_mode_watches_too(paths: Paths) -> None:
    events = EventQueue()
    switch = kbswitch.KeyboardSwitch(Config(), paths, events)
    switch.prepare(None)
    switch.watch()
    try:
        _ask(paths, b"fr", "user")
        assert events.get(timeout=10) == KeyboardAsked()
    finally:
        switch.stop()


def _fake_setxkbmap(bin_dir: Path, record: Path, code: int = 0) -> dict[str, str]:
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / "setxkbmap"
    tool.write_text(f'#!/bin/sh\necho "$DISPLAY $*" >> {record}\n'
                    f'[ {code} = 0 ] || echo "Error loading new keyboard description" >&2\n'
                    f"exit {code}\n")
    tool.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "DISPLAY": ":1"}


def test_setxkbmap_applies_it_on_the_display(paths: Paths, run_as: RunAs,
                                             tmp_path: Path) -> None:
    record = tmp_path / "record"
    env = _fake_setxkbmap(tmp_path / "bin", record)
    assert _switch(paths).apply("de", run_as, env)
    assert record.read_text() == ":1 -layout de -variant  -option \n"


def test_a_failing_setxkbmap_is_a_warning_and_changes_nothing(paths: Paths, run_as: RunAs,
                                                              tmp_path: Path) -> None:
    env = _fake_setxkbmap(tmp_path / "bin", tmp_path / "record", code=1)
    switch = _switch(paths)
    with capture_logs() as logs:
        assert not switch.apply("de", run_as, env)
    assert [(e["event"], e["error"]) for e in logs] == [
        ("keyboard_layout_failed", "Error loading new keyboard description")]
    assert switch.layout == "us"


def test_the_change_is_one_line_and_a_fresh_session_gets_it(paths: Paths) -> None:
    switch = _switch(paths)
    with capture_logs() as logs:
        switch.switched("de", "alice")
    assert [(e["event"], e["old"], e["new"], e["who"], e["log_level"]) for e in logs] == [
        ("keyboard_layout_changed", "us", "de", "alice", "info")]
    # What Desktop._launch_context gives the session's row.
    launch = Launch(replace(SIGNED, keyboard_layout=switch.layout), paths)
    argv = session_argv(launch)
    assert argv[argv.index("whaletop-session") + 1] == "de"


# -- nginx's locations ---------------------------------------------------------------------

def _keyboard_blocks(conf: str) -> str:
    start = conf.index("location = /whaletop/keyboard/layout")
    return conf[start:conf.index("\n        }", start)]


def test_without_sign_in_the_put_asks_for_the_vnc_password(paths: Paths) -> None:
    conf = render(Config(no_file_transfer=True), paths, _spec(None))
    block = _keyboard_blocks(conf)
    for line in ('auth_basic "whaletop (the VNC password)";',
                 f"auth_basic_user_file {filedav.htpasswd_path(paths)};",
                 "dav_methods PUT;", f"client_max_body_size {kbswitch.MAX_BODY};",
                 f"alias {paths.requests_dir}/layout.$remote_user;",
                 "limit_req zone=signin burst=20 nodelay;",
                 "if ($whaletop_cross_origin) { return 403; }", "limit_except PUT {"):
        assert line in block


def test_with_sign_in_only_full_access_may_put(paths: Paths) -> None:
    conf = render(SIGNED, paths, _spec(None))
    block = _keyboard_blocks(conf)
    for line in ("auth_request /auth/check-full;", "dav_methods PUT;",
                 f"client_max_body_size {kbswitch.MAX_BODY};",
                 f"alias {paths.requests_dir}/layout.$whaletop_user;",
                 "if ($whaletop_cross_origin) { return 403; }", "limit_except PUT {"):
        assert line in block
    assert "proxy_pass http://webauth/auth/check?need=full;" in conf


class FullOrViewer:
    """Stands for the sign-in service: the cookie "full" is alice (full access), the
    cookie "viewer" bob; /auth/check?need=full says 403 to bob."""

    def __init__(self, path: Path) -> None:
        self.asked: list[str] = []
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
                self.asked.append(text.split("\r\n", 1)[0])
                need_full = text.startswith("GET /auth/check?need=full ")
                if "session=full" in text:
                    answer = "204 No Content\r\nX-Whaletop-User: alice\r\n"
                elif "session=viewer" in text:
                    answer = ("403 Forbidden\r\n" if need_full
                              else "204 No Content\r\nX-Whaletop-User: bob\r\n")
                else:
                    answer = "401 Unauthorized\r\n"
                conn.sendall(f"HTTP/1.1 {answer}Content-Length: 0\r\n"
                             "Connection: close\r\n\r\n".encode())

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def web_paths(base: Path) -> Paths:  # noqa: F811
    """As the image has them: nginx's folders, its workers' account (root's tests)."""
    p = _paths(base)
    for folder in (p.run_dir, p.nginx_dir, p.nginx_dir / "tmp", p.probe_dir, p.novnc_dir,
                   p.web_dir):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
    if WORKER is not None:
        entry = pwd.getpwnam(WORKER)
        os.chown(p.nginx_dir / "tmp", entry.pw_uid, entry.pw_gid)
    return p


@pytest.fixture
def door(web_paths: Paths) -> Iterator[tuple[int, FullOrViewer]]:
    with _door(web_paths, SIGNED) as answer:
        yield answer


@contextlib.contextmanager
def _door(paths: Paths, config: Config) -> Iterator[tuple[int, FullOrViewer]]:
    """A real nginx with `config` (its port a free one), and a stand-in sign-in
    service; the default mode's credentials: user "user", password "secret1"."""
    assert NGINX is not None
    port = _free_port()
    config = replace(config, web_port=port)
    web = None
    if WORKER is not None:
        entry = pwd.getpwnam(WORKER)
        web = RunAs(uid=entry.pw_uid, gid=entry.pw_gid, groups=(), home="/")
    kbswitch.KeyboardSwitch(config, paths, EventQueue()).prepare(web)
    filedav.write_credentials(config, paths, web, "secret1")
    _write(paths, render(config, paths, _spec(None)))
    checked = nginx_t(paths)
    assert checked.returncode == 0, checked.stderr
    service = FullOrViewer(paths.auth_socket)
    proc = subprocess.Popen([NGINX, "-c", str(paths.nginx_conf), "-p", str(paths.nginx_dir),
                             "-e", "stderr"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)

    def listening() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    wait_for(listening, "nginx to listen")
    try:
        yield port, service
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        service.close()


def _request(port: int, method: str, path: str, body: bytes | None = None,
             **headers: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_nginx_writes_a_full_users_put_and_refuses_the_others(
        door: tuple[int, FullOrViewer], web_paths: Paths) -> None:
    port, service = door
    paths = web_paths
    put = "/whaletop/keyboard/layout"
    assert _request(port, "PUT", put, b"de", Cookie="session=viewer")[0] == 403
    assert _request(port, "PUT", put, b"de")[0] == 401
    assert _request(port, "PUT", put, b"de", Cookie="session=full",
                    Origin="http://evil.example")[0] == 403
    assert list(paths.requests_dir.iterdir()) == []
    assert _request(port, "PUT", put, b"d" * 65, Cookie="session=full")[0] == 413
    assert _request(port, "GET", put, Cookie="session=full")[0] == 403
    assert _request(port, "DELETE", put, Cookie="session=full")[0] == 403
    assert _request(port, "PUT", put, b"de\n", Cookie="session=full")[0] in (201, 204)
    assert (paths.requests_dir / "layout.alice").read_bytes() == b"de\n"
    assert "GET /auth/check?need=full HTTP/1.0" in service.asked
    # The layout the page reads: whaletopd's file, behind the same sign-in.
    status, body = _request(port, "GET", "/whaletop/keyboard", Cookie="session=viewer")
    assert status == 200
    assert json.loads(body)["layout"] == "us"
    assert _request(port, "GET", "/whaletop/keyboard")[0] == 401


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@needs_nginx
def test_by_default_nginx_takes_a_put_with_the_vnc_password_only(web_paths: Paths) -> None:
    paths = web_paths
    put = "/whaletop/keyboard/layout"
    with _door(paths, Config(no_file_transfer=True)) as (port, service):
        assert _request(port, "PUT", put, b"de")[0] == 401
        assert _request(port, "PUT", put, b"de",
                        Authorization=_basic("user", "wrong"))[0] == 401
        assert _request(port, "PUT", put, b"de",
                        Authorization=_basic("root", "secret1"))[0] == 401
        assert _request(port, "PUT", put, b"de", Authorization=_basic("user", "secret1"),
                        Origin="http://evil.example")[0] == 403
        assert list(paths.requests_dir.iterdir()) == []
        assert _request(port, "PUT", put, b"de\n",
                        Authorization=_basic("user", "secret1"))[0] in (201, 204)
        assert (paths.requests_dir / "layout.user").read_bytes() == b"de\n"
        assert service.asked == [], "no sign-in service in the default mode"
        status, body = _request(port, "GET", "/whaletop/keyboard")
        assert status == 200
        assert json.loads(body)["auth"] == "vnc-password"


# -- the desktop: a request taken off the loop, its result back on it -----------------------

@needs_xkb
def test_the_desktop_applies_a_request_and_a_fresh_session_gets_it(
        paths: Paths, run_as: RunAs, tmp_path: Path) -> None:
    record = tmp_path / "record"
    env = _fake_setxkbmap(tmp_path / "bin", record)
    events = EventQueue()
    desktop = Desktop(SIGNED, events, Deadlines(), paths)
    desktop.keyboard.prepare(None)
    desktop.account = Account(run_as, env, "password")
    desktop.state = HEALTHY
    _ask(paths, b"de", "alice")
    desktop.switch_keyboard(SimpleNamespace(kwargs={}))  # type: ignore[arg-type]
    desktop.switch_keyboard(SimpleNamespace(kwargs={}))  # type: ignore[arg-type]  # busy
    done = events.get(timeout=10)
    assert done == KeyboardSwitched(layout="de", who="alice")
    assert record.read_text() == ":1 -layout de -variant  -option \n"
    with capture_logs() as logs:
        desktop.keyboard_switched_done(SimpleNamespace(kwargs={"event": done}))  # type: ignore[arg-type]
    assert [(e["event"], e["old"], e["new"]) for e in logs] == [
        ("keyboard_layout_changed", "us", "de")]
    assert json.loads(paths.keyboard_file.read_text())["layout"] == "de"
    assert desktop._launch_context().config.keyboard_layout == "de"
    # The request seen while the first was taken: taken now, nothing left, nothing changes.
    assert events.get(timeout=10) == KeyboardSwitched(layout=None)
    assert record.read_text().count("\n") == 1
