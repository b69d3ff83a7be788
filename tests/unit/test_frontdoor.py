"""The front door's part: nginx's configuration written and checked by the real
`nginx -t`, the folders and files of the web side with their owners and modes, the
users file (WEB_PASSWORD or --web-users) validated at start and reloaded while the
desktop runs, and what status.json says of it."""

from __future__ import annotations

import functools
import json
import os
import pwd
import re
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from whaletopd import frontdoor, nginx_conf, webusers
from whaletopd.children import RunAs
from whaletopd.config import Config
from whaletopd.events import EventQueue, WebUsersChanged
from whaletopd.frontdoor import FrontDoor, FrontDoorError
from whaletopd.paths import Paths

from .. import tools
from .helpers import WAIT

needs_nginx = tools.NGINX.needed
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="owners are set as root only")
# Hashing costs about 35 ms each: made once.
ALICE = webusers.hash_password("alice's password")
BOB = webusers.hash_password("bob's password")


@pytest.fixture(autouse=True)
def nginx_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """whaletopd runs `nginx` from its PATH; Debian keeps it in /usr/sbin."""
    monkeypatch.setenv("PATH", f"{os.environ.get('PATH', '')}:/usr/sbin")


@pytest.fixture
def desktop(run_as: RunAs) -> RunAs:
    """The desktop user: as root someone else, so that owners are seen to be set."""
    if os.geteuid() == 0:
        return RunAs(uid=54321, gid=54322, groups=(), home=run_as.home)
    return run_as


@pytest.fixture
def web() -> RunAs | None:
    return frontdoor.web_account()


@pytest.fixture
def q() -> EventQueue:
    return EventQueue()


@pytest.fixture
def doors() -> Iterator[list[FrontDoor]]:
    made: list[FrontDoor] = []
    yield made
    for door in made:
        door.stop()


def _door(config: Config, paths: Paths, q: EventQueue, web: RunAs | None,
          doors: list[FrontDoor]) -> FrontDoor:
    door = FrontDoor(config, paths, q, web)
    doors.append(door)
    return door


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _owner(path: Path) -> tuple[int, int]:
    return path.stat().st_uid, path.stat().st_gid


def _refusal(message: str) -> str:
    """What nginx said, after whaletopd's words; one line."""
    assert "\n" not in message
    prefix = "nginx refused its configuration: "
    assert message.startswith(prefix)
    return message.removeprefix(prefix)


def _users_file(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "secrets"
    folder.mkdir(exist_ok=True)
    path = folder / "users"
    _replace(path, text)
    return path


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_text(text)
    tmp.replace(path)


# -- the accounts ------------------------------------------------------------------------

def test_the_web_side_s_account() -> None:
    account = frontdoor.web_account()
    if os.geteuid() != 0:
        assert account is None, "without root, everything runs as whaletopd's user"
        return
    assert account is not None
    entry = pwd.getpwnam(frontdoor.WEB_ACCOUNT)
    assert (account.uid, account.gid, account.groups) == (entry.pw_uid, entry.pw_gid, ())
    assert account.uid != 0
    assert frontdoor.root_account().uid == os.geteuid()
    assert "/usr/sbin" in frontdoor.web_env()["PATH"].split(":")


# -- prepare(): folders, nginx.conf, nginx -t --------------------------------------------

@needs_nginx
def test_prepare_writes_a_configuration_nginx_accepts(
        paths: Paths, q: EventQueue, web: RunAs | None, desktop: RunAs,
        doors: list[FrontDoor]) -> None:
    door = _door(Config(web_port=8181), paths, q, web, doors)
    with capture_logs() as logs:
        door.prepare(desktop, None, "vncpass1", None)
    conf = paths.nginx_conf.read_text()
    assert _mode(paths.nginx_conf) == 0o600, "it holds the probe token"
    assert "listen 8181;" in conf
    assert f'"{door.probe_token}" 1;' in conf
    assert len(door.probe_token) == 32
    assert ("user www-data;" in conf) == (web is not None)
    assert "auth_request" not in conf
    assert [e["step"] for e in logs if e["event"] == "step"] == ["files_folders", "nginx_check"]
    # The desktop user's folder holds Xvnc's and websockify's sockets, and only nginx's
    # workers pass it (their group, setgid: every socket made in it gets that group);
    # without root, one uid: its own.  nginx's folder is root's.
    if web is not None:
        assert _mode(paths.desktop_dir) == 0o2750
        assert _owner(paths.desktop_dir) == (desktop.uid, web.gid)
    else:
        assert _mode(paths.desktop_dir) == 0o700
        assert _owner(paths.desktop_dir)[0] == desktop.uid
    assert _owner(paths.nginx_dir) == (os.geteuid(), os.getegid())
    tmp = paths.nginx_dir / "tmp"
    assert _mode(tmp) == 0o700
    if web is not None:
        assert _owner(tmp) == (web.uid, web.gid), "nginx's workers write there"
    assert not paths.web_dir.exists(), "no sign-in, no sign-in files"


def test_each_start_has_its_own_probe_token(paths: Paths, q: EventQueue) -> None:
    first, second = FrontDoor(Config(), paths, q), FrontDoor(Config(), paths, q)
    assert first.probe_token != second.probe_token
    assert first.probe_token.isalnum()


@needs_nginx
def test_prepare_removes_sockets_a_killed_desktop_left(
        paths: Paths, q: EventQueue, web: RunAs | None, desktop: RunAs,
        doors: list[FrontDoor]) -> None:
    """A server cannot listen on a path that exists (docker kill, then start)."""
    paths.desktop_dir.mkdir(parents=True)
    stale = []
    for name in ("vnc.sock", "websockify.sock"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(str(paths.desktop_dir / name))
        stale.append(paths.desktop_dir / name)
    (paths.desktop_dir / "keep.txt").write_text("not a socket")
    _door(Config(), paths, q, web, doors).prepare(desktop, None, "vncpass1", None)
    assert not any(path.exists() for path in stale)
    assert (paths.desktop_dir / "keep.txt").exists()


@needs_nginx
def test_prepare_with_tls_names_the_certificate(
        paths: Paths, q: EventQueue, web: RunAs | None, desktop: RunAs,
        doors: list[FrontDoor]) -> None:
    from bench import certgen

    paths.run_dir.mkdir()
    paths.tls_pem.parent.mkdir(mode=0o700)
    cert, key = certgen.make()
    paths.tls_pem.write_bytes(certgen.pem(cert, key))
    paths.tls_pem.chmod(0o600)
    _door(Config(enable_tls=True), paths, q, web, doors).prepare(desktop, paths.tls_pem,
                                                                 "vncpass1", None)
    assert f"ssl_certificate {paths.tls_pem};" in paths.nginx_conf.read_text()


@needs_nginx
def test_a_certificate_nginx_cannot_read_is_refused_with_its_words(
        paths: Paths, q: EventQueue, web: RunAs | None, desktop: RunAs,
        doors: list[FrontDoor]) -> None:
    paths.run_dir.mkdir()
    paths.tls_pem.parent.mkdir(mode=0o700)
    paths.tls_pem.write_text("not a certificate\n")
    door = _door(Config(enable_tls=True), paths, q, web, doors)
    with pytest.raises(FrontDoorError) as info:
        door.prepare(desktop, paths.tls_pem, "vncpass1", None)
    said = _refusal(str(info.value))
    assert "[emerg]" in said
    assert str(paths.tls_pem) in said


@needs_nginx
def test_a_configuration_nginx_refuses_is_an_error_in_nginx_s_words(
        paths: Paths, q: EventQueue, web: RunAs | None, desktop: RunAs, tmp_path: Path,
        doors: list[FrontDoor], monkeypatch: pytest.MonkeyPatch) -> None:
    garbage = tmp_path / "mime.types"
    garbage.write_text("types { text/html html\n")  # cut short
    monkeypatch.setattr(nginx_conf, "FrontDoorSpec",
                        functools.partial(nginx_conf.FrontDoorSpec, mime_types=garbage))
    door = _door(Config(), paths, q, web, doors)
    with pytest.raises(FrontDoorError) as info:
        door.prepare(desktop, None, "vncpass1", None)
    said = _refusal(str(info.value))
    assert "[emerg]" in said
    assert f"unexpected end of file, expecting \";\" or \"}}\" in {garbage}:" in said


@needs_nginx
def test_check_reports_the_emerg_line_of_a_damaged_file(
        paths: Paths, q: EventQueue, web: RunAs | None, desktop: RunAs,
        doors: list[FrontDoor]) -> None:
    door = _door(Config(), paths, q, web, doors)
    door.prepare(desktop, None, "vncpass1", None)
    door.check()  # as written: accepted
    paths.nginx_conf.write_text(paths.nginx_conf.read_text().replace(
        "server_tokens off;", "server_tokens off;\n    whaletop_bogus on;"))
    with pytest.raises(FrontDoorError) as info:
        door.check()
    said = _refusal(str(info.value))
    assert re.search(rf'\[emerg\] .*unknown directive "whaletop_bogus" in '
                     rf'{re.escape(str(paths.nginx_conf))}:\d+$', said)


@needs_nginx
def test_the_refusal_reads_as_nginx_s_message_alone(
        paths: Paths, q: EventQueue, web: RunAs | None, desktop: RunAs,
        doors: list[FrontDoor]) -> None:
    door = _door(Config(), paths, q, web, doors)
    door.prepare(desktop, None, "vncpass1", None)
    paths.nginx_conf.write_text(paths.nginx_conf.read_text().replace(
        "server_tokens off;", "server_tokens off;\n    whaletop_bogus on;"))
    with pytest.raises(FrontDoorError) as info:
        door.check()
    assert _refusal(str(info.value)).startswith('[emerg] unknown directive "whaletop_bogus"')


def test_check_without_nginx_says_so(paths: Paths, q: EventQueue, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty-bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(FrontDoorError, match=r"^nginx -t: .*No such file"):
        FrontDoor(Config(), paths, q).check()


# -- the users file ------------------------------------------------------------------------

def _web_owner(web: RunAs | None) -> tuple[int, int]:
    return (web.uid, web.gid) if web is not None else (os.geteuid(), os.getegid())


@needs_nginx
def test_web_password_makes_a_users_file_for_the_desktop_user(
        paths: Paths, q: EventQueue, web: RunAs | None, desktop: RunAs,
        doors: list[FrontDoor]) -> None:
    config = Config(username="alice", web_password_from_env=True,
                    web_password="correct horse", web_port=8443, enable_tls=True,
                    sign_in_attempts=4, sign_in_lockout=60.0)
    paths.run_dir.mkdir()
    paths.tls_pem.parent.mkdir(mode=0o700)
    from bench import certgen

    cert, key = certgen.make()
    paths.tls_pem.write_bytes(certgen.pem(cert, key))
    door = _door(config, paths, q, web, doors)
    door.users_valid()
    with capture_logs() as logs:
        door.prepare(desktop, paths.tls_pem, "vncpass1", "viewer11")
    installed = webusers.load(door.users_file)
    assert list(installed) == ["alice"]
    assert installed["alice"].role == "full"
    assert webusers.verify(installed["alice"], "correct horse")
    assert "correct horse" not in door.users_file.read_text()
    assert [(e["event"], e["users"], e["viewers"]) for e in logs
            if e["event"] == "web_users"] == [("web_users", ["alice"], [])]
    assert "correct horse" not in repr(logs)
    settings = json.loads((paths.web_dir / "auth.json").read_text())
    assert settings == {
        "users_file": str(door.users_file),
        "sessions_file": str(paths.web_dir / "sessions.json"),
        "grants_file": str(paths.grants_file),
        "probe_token": door.probe_token,
        "attempts": 4,
        "lockout_s": 60.0,
        "secure_cookie": True,
        "cookie_name": "whaletop_session_8443",
        "session_hours": frontdoor.SESSION_HOURS,
    }
    # Only the sign-in service reads them: its folder and files are its own.
    for path in (paths.web_dir, door.users_file, paths.web_dir / "auth.json"):
        assert _owner(path) == _web_owner(web), path
        assert _mode(path) & 0o077 == 0, path
    conf = paths.nginx_conf.read_text()
    assert f"server unix:{paths.auth_socket};" in conf
    assert door.describe()["sign_in"] == {"users": 1, "viewers": 0, "source": "WEB_PASSWORD"}


@needs_nginx
def test_web_users_file_is_installed_with_its_roles(
        paths: Paths, q: EventQueue, web: RunAs | None, desktop: RunAs, tmp_path: Path,
        doors: list[FrontDoor]) -> None:
    source = _users_file(tmp_path, f"# the team\nalice:{ALICE}\n\nbob:{BOB}:viewer\n")
    door = _door(Config(web_users=str(source)), paths, q, web, doors)
    door.users_valid()
    door.prepare(desktop, None, "vncpass1", "viewer11")
    assert door.users_file.read_text() == f"alice:{ALICE}:full\nbob:{BOB}:viewer\n"
    settings = json.loads((paths.web_dir / "auth.json").read_text())
    assert settings["secure_cookie"] is False
    assert door.describe()["sign_in"] == {"users": 1, "viewers": 1, "source": str(source)}


@pytest.mark.parametrize(("text", "why"), [
    (None, "cannot open"),
    ("alice:plain-secret\n", "line 1"),
    (f"alice:{'$1$'}abcdefgh$0123456789abcdefghijkl\n", "weak"),
    ("# nobody\n", "no users"),
    (f"alice:{ALICE}\nalice:{ALICE}\n", "appears again"),
    (f"alice:{ALICE}:admin\n", "unknown role"),
])
def test_a_bad_web_users_file_is_refused_naming_it(
        paths: Paths, q: EventQueue, tmp_path: Path, text: str | None, why: str) -> None:
    path = tmp_path / "users"
    if text is not None:
        path.write_text(text)
    door = FrontDoor(Config(web_users=str(path)), paths, q)
    with pytest.raises(FrontDoorError) as info:
        door.users_valid()
    message = str(info.value)
    assert message.startswith(f"--web-users: {path}")
    assert why in message
    assert "\n" not in message
    assert "plain-secret" not in message
    assert ALICE not in message


def test_without_sign_in_there_are_no_users(paths: Paths, q: EventQueue) -> None:
    door = FrontDoor(Config(), paths, q)
    door.users_valid()
    assert door.describe()["sign_in"] is None


# -- reload_users(): the file changed while the desktop runs -------------------------------

@pytest.fixture
def running(paths: Paths, q: EventQueue, web: RunAs | None, desktop: RunAs, tmp_path: Path,
            doors: list[FrontDoor]) -> tuple[FrontDoor, Path]:
    """A front door prepared from a users file with alice; the file's path."""
    source = _users_file(tmp_path, f"alice:{ALICE}\n")
    door = _door(Config(web_users=str(source)), paths, q, web, doors)
    door.users_valid()
    # nginx -t is not what these tests are about: the files are.
    door.check = lambda: None  # type: ignore[method-assign]
    door.prepare(desktop, None, "vncpass1", "viewer11")
    return door, source


def test_a_good_change_is_in_service_at_once(running: tuple[FrontDoor, Path],
                                             web: RunAs | None) -> None:
    door, source = running
    _replace(source, f"alice:{ALICE}\nbob:{BOB}:viewer\n")
    with capture_logs() as logs:
        assert door.reload_users() is True
    assert door.users_file.read_text() == f"alice:{ALICE}:full\nbob:{BOB}:viewer\n"
    assert _owner(door.users_file) == _web_owner(web)
    assert _mode(door.users_file) == 0o600
    assert [(e["users"], e["viewers"]) for e in logs if e["event"] == "web_users"] == [
        (["alice", "bob"], ["bob"])]
    assert door.describe()["sign_in"]["viewers"] == 1


def test_a_bad_change_is_refused_and_the_people_in_service_stay(
        running: tuple[FrontDoor, Path]) -> None:
    door, source = running
    before = door.users_file.read_text()
    _replace(source, "alice:letmein\n")
    with capture_logs() as logs:
        assert door.reload_users() is False
    refused = [e for e in logs if e["event"] == "web_users_refused"]
    assert len(refused) == 1
    assert refused[0]["log_level"] == "error"
    assert refused[0]["in_service"] == 1
    assert str(source) in refused[0]["reason"]
    assert "letmein" not in repr(logs)
    assert door.users_file.read_text() == before
    assert door.describe()["sign_in"]["users"] == 1
    # The same bad file again is not news; a good one after it is.
    with capture_logs() as logs:
        assert door.reload_users() is False
    assert logs == []
    _replace(source, f"bob:{BOB}\n")
    assert door.reload_users() is True
    assert list(webusers.load(door.users_file)) == ["bob"]


def test_a_deleted_file_is_refused_and_the_people_in_service_stay(
        running: tuple[FrontDoor, Path]) -> None:
    """Kubernetes swaps a secret's files; for a moment there may be none."""
    door, source = running
    before = door.users_file.read_text()
    source.unlink()
    with capture_logs() as logs:
        assert door.reload_users() is False
    assert [e["event"] for e in logs] == ["web_users_refused"]
    assert door.users_file.read_text() == before


def test_a_touch_or_another_file_changing_is_no_reload(
        running: tuple[FrontDoor, Path]) -> None:
    door, source = running
    before = door.users_file.stat().st_mtime_ns
    os.utime(source)
    _replace(source, source.read_text())  # the same bytes, a new file
    (source.parent / "other").write_text("unrelated\n")
    with capture_logs() as logs:
        assert door.reload_users() is False
    assert logs == []
    assert door.users_file.stat().st_mtime_ns == before


def test_a_users_file_that_cannot_be_installed_is_refused(
        running: tuple[FrontDoor, Path], paths: Paths) -> None:
    door, source = running
    shutil.rmtree(paths.web_dir)
    paths.web_dir.write_text("")  # not a folder any more: the write fails
    _replace(source, f"alice:{ALICE}\nbob:{BOB}\n")
    with capture_logs() as logs:
        assert door.reload_users() is False
    assert [e["event"] for e in logs] == ["web_users_refused"]
    assert "cannot install it" in logs[0]["reason"]


def test_watch_posts_a_change_of_the_users_file(paths: Paths, q: EventQueue,
                                                tmp_path: Path,
                                                doors: list[FrontDoor]) -> None:
    source = _users_file(tmp_path, f"alice:{ALICE}\n")
    door = _door(Config(web_users=str(source)), paths, q, None, doors)
    door.watch()
    _replace(source, f"alice:{ALICE}\nbob:{BOB}\n")
    assert q.get(timeout=WAIT) == WebUsersChanged()


def test_without_a_users_file_nothing_is_watched(paths: Paths, q: EventQueue,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from whaletopd import watch

    def no_watcher(*args: object, **kwargs: object) -> None:
        raise AssertionError("there is no file to watch")

    monkeypatch.setattr(watch, "Watcher", no_watcher)
    door = FrontDoor(Config(web_password_from_env=True, web_password="correct horse"),
                     paths, q)
    door.watch()
    door.stop()


# -- describe() -----------------------------------------------------------------------------

@pytest.mark.parametrize(("config", "listening"), [
    (Config(), ["tcp 8080 (nginx)"]),
    (Config(web_port=443, enable_tls=True), ["tcp 443 (nginx, TLS)"]),
    (Config(tls_certificate="/data/cert.pem"), ["tcp 8080 (nginx, TLS)"]),
    (Config(expose_vnc=True, vnc_port=5999), ["tcp 8080 (nginx)", "tcp 5999 (Xvnc)"]),
])
def test_describe_says_what_listens(paths: Paths, q: EventQueue, config: Config,
                                    listening: list[str]) -> None:
    assert FrontDoor(config, paths, q).describe() == {"listening": listening,
                                                       "sign_in": None}
