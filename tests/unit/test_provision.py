"""Provisioning steps that need no user database changes: password, X lock, sudo, dirs."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from whaletopd import provision
from whaletopd.config import Config
from whaletopd.paths import Paths
from whaletopd.provision import PASSWORD_ALPHABET, ProvisionError

DISPLAY = 1


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- the generated VNC password ---------------------------------------------------------

def test_generated_password_is_eight_unambiguous_characters() -> None:
    for _ in range(200):
        password = provision.generate_password()
        assert len(password) == provision.VNC_PASSWORD_LENGTH == 8
        assert set(password) <= set(PASSWORD_ALPHABET)


def test_alphabet_has_no_look_alikes() -> None:
    assert not set("0O1lI") & set(PASSWORD_ALPHABET)
    assert all(c.isascii() and c.isalnum() for c in PASSWORD_ALPHABET)


def test_generated_passwords_differ() -> None:
    assert len({provision.generate_password() for _ in range(50)}) == 50


# -- the stale X lock a `docker restart` leaves -----------------------------------------

def _lock(paths: Paths) -> Path:
    return paths.x_lock_dir / f".X{DISPLAY}-lock"


def _sock(paths: Paths) -> Path:
    return paths.x11_socket_dir / f"X{DISPLAY}"


def _leave_x_files(paths: Paths, lock_text: str) -> None:
    paths.x11_socket_dir.mkdir(exist_ok=True)
    _lock(paths).write_text(lock_text)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(_sock(paths)))  # the socket file stays after close, like a dead Xvnc's


def test_lock_of_dead_process_is_removed_with_its_socket(paths: Paths) -> None:
    _leave_x_files(paths, f"{_dead_pid():>10}\n")  # Xvnc writes the pid as %10d
    removed = provision.clear_stale_x_lock(paths, DISPLAY)
    assert sorted(removed) == sorted([str(_lock(paths)), str(_sock(paths))])
    assert not _lock(paths).exists()
    assert not _sock(paths).exists()


def test_lock_of_running_process_is_kept_and_refused(paths: Paths) -> None:
    _leave_x_files(paths, f"{os.getpid():>10}\n")
    with pytest.raises(ProvisionError, match=rf"display :{DISPLAY}.*pid {os.getpid()}"):
        provision.clear_stale_x_lock(paths, DISPLAY)
    assert _lock(paths).exists()
    assert _sock(paths).exists()


@pytest.mark.parametrize("text", ["", "garbage\n", "\x00\x00\x00", "12ab\n"])
def test_torn_lock_is_stale(paths: Paths, text: str) -> None:
    _leave_x_files(paths, text)
    removed = provision.clear_stale_x_lock(paths, DISPLAY)
    assert str(_lock(paths)) in removed
    assert not _lock(paths).exists()
    assert not _sock(paths).exists()


def test_nothing_to_clear(paths: Paths) -> None:
    assert provision.clear_stale_x_lock(paths, DISPLAY) == []


def test_socket_without_lock_is_removed(paths: Paths) -> None:
    paths.x11_socket_dir.mkdir()
    _sock(paths).symlink_to(paths.x11_socket_dir / "gone")  # dangling: exists() is False
    assert provision.clear_stale_x_lock(paths, DISPLAY) == [str(_sock(paths))]
    assert not _sock(paths).is_symlink()


def test_a_socket_a_server_answers_on_is_refused_and_kept(paths: Paths) -> None:
    """The lock file is gone but a live X server still listens: the display is taken."""
    paths.x11_socket_dir.mkdir()
    stale_lock_text = f"{_dead_pid():>10}\n"
    _lock(paths).write_text(stale_lock_text)  # a stale lock must not be removed either
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(_sock(paths)))
        server.listen()
        with pytest.raises(ProvisionError, match=rf"^display :{DISPLAY} is in use"):
            provision.clear_stale_x_lock(paths, DISPLAY)
    assert stat.S_ISSOCK(_sock(paths).lstat().st_mode)
    assert _lock(paths).read_text() == stale_lock_text


def test_a_socket_file_linking_to_a_live_socket_is_removed_not_followed(
        paths: Paths, tmp_path: Path) -> None:
    paths.x11_socket_dir.mkdir()
    elsewhere = tmp_path / "elsewhere.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(elsewhere))
        server.listen()
        _sock(paths).symlink_to(elsewhere)
        assert provision.clear_stale_x_lock(paths, DISPLAY) == [str(_sock(paths))]
    assert not _sock(paths).is_symlink()
    assert stat.S_ISSOCK(elsewhere.lstat().st_mode)


def test_a_socket_file_that_is_a_plain_file_is_removed(paths: Paths) -> None:
    paths.x11_socket_dir.mkdir()
    _sock(paths).write_text("not a socket\n")
    assert provision.clear_stale_x_lock(paths, DISPLAY) == [str(_sock(paths))]
    assert not _sock(paths).exists()


def test_other_displays_are_left_alone(paths: Paths) -> None:
    paths.x11_socket_dir.mkdir()
    other_lock = paths.x_lock_dir / ".X2-lock"
    other_lock.write_text(f"{_dead_pid():>10}\n")
    (paths.x11_socket_dir / "X2").write_text("")
    provision.clear_stale_x_lock(paths, DISPLAY)
    assert other_lock.exists()
    assert (paths.x11_socket_dir / "X2").exists()


# -- sudo -------------------------------------------------------------------------------

def test_sudo_granted_to_the_user(paths: Paths) -> None:
    result = provision.configure_sudo(Config(username="alice"), paths)
    assert "granted" in result
    assert paths.sudoers_file.read_text() == "alice ALL=(ALL:ALL) NOPASSWD: ALL\n"
    assert _mode(paths.sudoers_file) == 0o440
    # sudo ignores files with a dot in their name, but leave none behind anyway.
    assert os.listdir(paths.sudoers_file.parent) == [paths.sudoers_file.name]


def test_sudo_file_follows_a_renamed_user(paths: Paths) -> None:
    provision.configure_sudo(Config(username="alice"), paths)
    provision.configure_sudo(Config(username="bob"), paths)
    assert paths.sudoers_file.read_text() == "bob ALL=(ALL:ALL) NOPASSWD: ALL\n"
    assert _mode(paths.sudoers_file) == 0o440


def test_no_sudo_removes_an_earlier_grant(paths: Paths) -> None:
    provision.configure_sudo(Config(username="alice"), paths)
    result = provision.configure_sudo(Config(username="alice", no_sudo=True), paths)
    assert "disabled" in result
    assert not paths.sudoers_file.exists()


def test_no_sudo_without_earlier_grant(paths: Paths) -> None:
    provision.configure_sudo(Config(no_sudo=True), paths)
    assert not paths.sudoers_file.exists()


# -- directories ------------------------------------------------------------------------

def test_prepare_dirs_creates_dirs_with_modes(paths: Paths) -> None:
    provision.prepare_dirs(paths)
    assert _mode(paths.state_dir) == 0o755
    assert _mode(paths.run_dir) == 0o755
    # Any user's X client may create its socket's neighbours: sticky and world-writable.
    assert _mode(paths.x11_socket_dir) == 0o1777


def test_prepare_dirs_is_idempotent(paths: Paths) -> None:
    provision.prepare_dirs(paths)
    (paths.state_dir / "status").write_text("STOPPED\n")
    provision.prepare_dirs(paths)
    assert (paths.state_dir / "status").read_text() == "STOPPED\n"


def test_session_leftovers_are_removed_and_nothing_else(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".vnc").mkdir(parents=True)
    (home / ".config" / "chromium").mkdir(parents=True)
    (home / ".vnc" / "host:1.pid").write_text("42\n")
    (home / ".vnc" / "host:1.log").write_text("old\n")
    (home / ".vnc" / "passwd").write_bytes(b"keep")
    os.symlink("host-1234", home / ".config" / "chromium" / "SingletonLock")
    (home / ".config" / "chromium" / "Preferences").write_text("{}")
    (home / "notes.log").write_text("the user's own log\n")
    removed = provision.clear_session_leftovers(home)
    assert sorted(Path(p).name for p in removed) == ["SingletonLock", "host:1.log", "host:1.pid"]
    assert (home / ".vnc" / "passwd").read_bytes() == b"keep"
    assert (home / ".config" / "chromium" / "Preferences").exists()
    assert (home / "notes.log").exists()


# -- leftovers behind links: never cleaned ----------------------------------------------

def _leftovers(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {"a.pid": "1\n", "b.log": "log\n", "SingletonLock": "x", "keep.txt": "k"}
    for name, text in files.items():
        (folder / name).write_text(text)
    return files


def _contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir() if not p.is_dir()}


@pytest.mark.parametrize("link", [".vnc", ".config", ".config/chromium",
                                  ".config/google-chrome"])
def test_leftovers_behind_a_link_out_of_the_home_are_kept(tmp_path: Path, link: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    outside = tmp_path / "outside"
    files = _leftovers(outside)
    for sub in ("chromium", "google-chrome"):  # .config -> outside reaches these too
        _leftovers(outside / sub)
    (home / link).parent.mkdir(parents=True, exist_ok=True)
    (home / link).symlink_to(outside)
    with capture_logs() as logs:
        removed = provision.clear_session_leftovers(home)
    assert removed == []
    assert _contents(outside) == files
    for sub in ("chromium", "google-chrome"):
        assert _contents(outside / sub) == files
    skipped = [e for e in logs if e["event"] == "session_leftovers_skipped"]
    assert len(skipped) == 1, logs
    assert skipped[0]["skipped"] == {str(home / link): f"a symbolic link to {outside}"}


def test_a_link_to_the_root_is_never_followed(tmp_path: Path) -> None:
    """`.config -> /`: .config/chromium would be /chromium; nothing there is touched,
    and the walk never leaves the home (no lookup below the link)."""
    home = tmp_path / "home"
    (home / ".vnc").mkdir(parents=True)
    (home / ".vnc" / "host:1.pid").write_text("1\n")
    (home / ".config").symlink_to("/")
    with capture_logs() as logs:
        removed = provision.clear_session_leftovers(home)
    assert removed == [str(home / ".vnc" / "host:1.pid")], "the real .vnc is still cleaned"
    skipped = [e for e in logs if e["event"] == "session_leftovers_skipped"]
    assert [e["skipped"] for e in skipped] == [{str(home / ".config"): "a symbolic link to /"}]


def test_a_leftover_folder_that_is_a_file_is_skipped(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".vnc").write_text("not a folder\n")
    with capture_logs() as logs:
        assert provision.clear_session_leftovers(home) == []
    assert (home / ".vnc").read_text() == "not a folder\n"
    assert [e["skipped"] for e in logs if e["event"] == "session_leftovers_skipped"] == [
        {str(home / ".vnc"): "not a folder"}]


def test_leftovers_that_are_links_are_removed_not_their_targets(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".vnc").mkdir(parents=True)
    target = tmp_path / "precious.log"
    target.write_text("keep\n")
    (home / ".vnc" / "x.log").symlink_to(target)
    (home / ".vnc" / "dir.pid").mkdir()  # a folder named like a leftover: not ours
    with capture_logs() as logs:
        removed = provision.clear_session_leftovers(home)
    assert removed == [str(home / ".vnc" / "x.log")]
    assert target.read_text() == "keep\n"
    assert (home / ".vnc" / "dir.pid").is_dir()
    assert not [e for e in logs if e["event"] == "session_leftovers_skipped"]


def test_a_home_without_leftover_folders_logs_nothing(tmp_path: Path) -> None:
    with capture_logs() as logs:
        assert provision.clear_session_leftovers(tmp_path) == []
    assert logs == []
