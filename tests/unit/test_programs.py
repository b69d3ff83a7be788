"""The real table of children: command lines, readiness, restart policy, stop order, and
which child each health check blames."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from whaletopd import probes
from whaletopd.config import Config
from whaletopd.paths import Paths
from whaletopd.programs import (
    DISPLAY,
    PROGRAMS,
    Launch,
    Program,
    blame,
    nginx_argv,
    session_argv,
    webauth_argv,
    websockify_argv,
    xvnc_argv,
)


def _program(name: str) -> Program:
    return next(p for p in PROGRAMS if p.name == name)


def _after(argv: list[str], flag: str) -> str:
    """The value that follows `flag` (which must appear once)."""
    assert argv.count(flag) == 1, f"{flag} appears {argv.count(flag)} times in {argv}"
    return argv[argv.index(flag) + 1]


# -- Xvnc ----------------------------------------------------------------------------------

def test_xvnc_argv(paths: Paths) -> None:
    cfg = Config(geometry="1920x1080", depth=16, vnc_port=5999)
    argv = xvnc_argv(Launch(cfg, paths, ready_fd=17))
    assert argv[:2] == ["Xvnc", f":{DISPLAY}"]
    assert _after(argv, "-displayfd") == "17"
    assert _after(argv, "-geometry") == "1920x1080"
    assert _after(argv, "-depth") == "16"
    assert _after(argv, "-PasswordFile") == str(paths.vnc_auth)
    assert _after(argv, "-SecurityTypes") == "VncAuth"
    # RFB only on the UNIX socket websockify connects to, readable by the user only.
    assert _after(argv, "-rfbunixpath") == str(paths.vnc_socket)
    assert _after(argv, "-rfbunixmode") == "0600"
    assert _after(argv, "-rfbport") == "-1", "raw VNC on TCP without --expose-vnc"
    assert "-localhost" not in argv
    assert "5999" not in argv
    # X clients need the desktop user's cookie (xauth.py); the X socket itself is 0777.
    assert _after(argv, "-auth") == str(paths.xauthority)


def test_xvnc_blacklists_no_address(paths: Paths) -> None:
    """Every web client reaches Xvnc through one socket: its per-address blacklist would
    lock everyone out (health checks too) for one guesser.  nginx limits per address."""
    argv = xvnc_argv(Launch(Config(), paths, ready_fd=3))
    assert "-UseBlacklist=0" in argv


def test_xvnc_listens_on_tcp_on_all_interfaces_only_with_expose_vnc(paths: Paths) -> None:
    argv = xvnc_argv(Launch(Config(expose_vnc=True, vnc_port=5999), paths, ready_fd=3))
    assert _after(argv, "-rfbport") == "5999"
    assert _after(argv, "-localhost") == "0"
    assert _after(argv, "-rfbunixpath") == str(paths.vnc_socket), "websockify needs it too"


def test_xvnc_listens_on_no_x_socket_but_its_own(paths: Paths) -> None:
    argv = xvnc_argv(Launch(Config(), paths, ready_fd=3))
    nolisten = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-nolisten"]
    assert sorted(nolisten) == ["local", "tcp"]


def test_every_xvnc_argument_is_a_string(paths: Paths) -> None:
    argv = xvnc_argv(Launch(Config(), paths, ready_fd=3))
    assert all(isinstance(arg, str) for arg in argv)


# -- websockify ----------------------------------------------------------------------------

def test_the_relay_between_two_unix_sockets(paths: Paths) -> None:
    argv = websockify_argv(Launch(Config(web_port=9443, vnc_port=5999, enable_tls=True),
                                  paths))
    assert argv[:3] == ["python3", "-m", "whaletopd.vncrelay"]
    assert _after(argv, "--socket") == str(paths.websockify_socket)
    # Xvnc's socket and the passwords are in its settings file, never on a command line.
    assert _after(argv, "--settings") == str(paths.relay_settings)
    assert not any(":9443" in arg or ":5999" in arg for arg in argv)


def test_the_relay_logs_json_lines() -> None:
    assert _program("websockify").json_lines
    assert _program("websockify").quiet is None


def test_websockify_needs_no_readiness_pipe(paths: Paths) -> None:
    assert websockify_argv(Launch(Config(), paths, ready_fd=9)) == websockify_argv(
        Launch(Config(), paths))


# -- nginx, the sign-in service ------------------------------------------------------------

def test_nginx_argv_runs_in_the_foreground_with_whaletopd_s_configuration(
        paths: Paths, tmp_path: Path) -> None:
    """Run as it is, with a stand-in nginx on PATH that says what it was given: a
    health checks' socket left by a killed nginx is removed first (a new one could not
    bind to it)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nginx").write_text('#!/bin/sh\nprintf "%s\\n" "$0" "$@"\n')
    (bin_dir / "nginx").chmod(0o755)
    paths.probe_dir.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as left:
        left.bind(str(paths.probe_socket))
    argv = nginx_argv(Launch(Config(), paths))
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    given = done.stdout.splitlines()
    assert Path(given[0]).name == "nginx"
    assert _after(given, "-c") == str(paths.nginx_conf)
    assert _after(given, "-p") == str(paths.nginx_dir)
    assert _after(given, "-e") == "stderr", "its early errors reach whaletopd's log"
    assert not paths.probe_socket.exists()


def test_nginx_s_row() -> None:
    nginx = _program("nginx")
    assert nginx.account == "root", "its master reads the key, then drops to the web account"
    assert nginx.json_lines, "its access log is JSON whose fields are kept"
    assert nginx.restart is not None
    assert nginx.enabled(Config())
    assert nginx.enabled(Config(enable_tls=True))


def test_webauth_argv(paths: Paths) -> None:
    argv = webauth_argv(Launch(Config(web_password_from_env=True), paths))
    assert argv[:3] == ["python3", "-m", "whaletopd.webauth"]
    assert _after(argv, "--socket") == str(paths.auth_socket)
    assert _after(argv, "--settings") == str(paths.web_dir / "auth.json")


def test_webauth_runs_only_with_sign_in_and_as_the_web_account() -> None:
    webauth = _program("webauth")
    assert webauth.account == "web"
    assert webauth.json_lines
    assert webauth.restart is not None
    assert not webauth.enabled(Config())
    assert webauth.enabled(Config(web_password_from_env=True, web_password="x" * 8))
    assert webauth.enabled(Config(web_users="/data/users"))


def test_the_desktop_s_programs_run_as_the_desktop_user_and_log_plain_lines() -> None:
    """Programs of the desktop whose output the user's own programs share (the
    session's stdout is every app's) cannot forge log fields.  The relay is whaletop's
    own program under the desktop user's uid, its stdout its own: JSON lines."""
    for name in ("xvnc", "websockify", "session"):
        program = _program(name)
        assert program.account == "desktop", name
        assert program.json_lines == (name == "websockify"), name
        assert program.enabled(Config()), name


def test_session_argv(paths: Paths) -> None:
    assert session_argv(Launch(Config(), paths))[-3:] == ["dbus-run-session", "--", "startlxde"]


# -- the table -----------------------------------------------------------------------------

def test_the_table_names_each_program_once_and_waits_only_for_programs_it_has() -> None:
    names = [p.name for p in PROGRAMS]
    assert sorted(names) == ["files", "nginx", "pipewire", "pipewire-pulse", "session",
                            "sound", "webauth", "websockify", "wireplumber", "xvnc"]
    assert len(set(names)) == len(names)
    assert all(p.after is None or p.after in names for p in PROGRAMS)


def test_xvnc_is_ready_when_it_says_so_and_the_session_waits_for_it() -> None:
    assert _program("xvnc").ready == "displayfd"
    assert _program("xvnc").after is None
    assert _program("session").after == "xvnc"
    assert _program("websockify").after is None, "websockify needs no running Xvnc"
    assert _program("nginx").after is None
    assert _program("webauth").after is None


def test_every_program_builds_its_command_line(paths: Paths) -> None:
    launch = Launch(Config(), paths, ready_fd=3)
    for program in PROGRAMS:
        argv = program.argv(launch)
        assert argv, program.name
        assert all(isinstance(arg, str) for arg in argv), program.name


def test_all_but_the_x_server_are_restartable() -> None:
    """Xvnc's death loses the user's windows: no restart repairs it.  The session runs
    on Xvnc: a fresh one repairs a crash."""
    assert sorted(p.name for p in PROGRAMS if p.restart is not None) == [
        "files", "nginx", "pipewire", "pipewire-pulse", "session", "sound", "webauth",
        "websockify", "wireplumber"]


def test_only_a_logout_of_the_session_stops_the_desktop() -> None:
    """lxsession-logout's SIGTERM to lxsession: dbus-run-session exits 143."""
    assert {p.name: p.stop_exits for p in PROGRAMS if p.stop_exits} == {
        "session": (0, 143, -15)}


@pytest.mark.parametrize("name", ["websockify", "nginx", "webauth", "session"])
def test_restart_policy_of_the_web_side(name: str) -> None:
    restart = _program(name).restart
    assert restart is not None
    assert restart.attempts >= 1
    assert 0 < restart.first_delay <= restart.max_delay


def test_stop_order_is_nginx_first_and_xvnc_last() -> None:
    """No new connections first; the session before the display it draws on."""
    orders = [p.stop_order for p in PROGRAMS]
    assert len(set(orders)) == len(orders), "two programs share a stop order"
    assert [p.name for p in sorted(PROGRAMS, key=lambda p: p.stop_order)] == [
        "nginx", "sound", "webauth", "session", "pipewire-pulse", "wireplumber", "pipewire",
        "websockify", "xvnc", "files"]


# -- blame ---------------------------------------------------------------------------------

@pytest.fixture
def target(paths: Paths) -> probes.Target:
    return probes.Target(web_port=8080, x_socket="/tmp/.X11-unix/X1",
                         vnc_socket=paths.vnc_socket,
                         websockify_socket=paths.websockify_socket,
                         password="secret12", timeout=1.0, probe_token="0123abcd")


def test_blame_names_a_program_for_every_probe_the_desktop_runs(target: probes.Target) -> None:
    table = blame(PROGRAMS)
    # desktop_probes looks each of its checks up in the table: a missing one raises.
    checks = probes.desktop_probes(target, table)
    names = {p.name for p in PROGRAMS}
    assert [c.name for c in checks] == ["x_display", "web_login", "novnc_page"]
    for check in checks:
        assert table[check.name] in names
        assert check.part == table[check.name]


def test_blame_points_each_check_at_its_child() -> None:
    assert blame(PROGRAMS) == {"x_display": "xvnc", "websockify_login": "websockify",
                               "web_login": "nginx", "novnc_page": "nginx",
                               "sign_in_check": "webauth"}


def test_blame_of_the_table_without_sign_in_names_no_sign_in_service() -> None:
    table = [p for p in PROGRAMS if p.enabled(Config())]
    assert "sign_in_check" not in blame(table)
    assert {"x_display", "websockify_login", "web_login", "novnc_page"} <= set(blame(table))


def test_blame_of_a_custom_table() -> None:
    table = (Program("a", lambda launch: ["true"], probes=("one", "two")),
             Program("b", lambda launch: ["true"], probes=("three",)),
             Program("c", lambda launch: ["true"]))
    assert blame(table) == {"one": "a", "two": "a", "three": "b"}


def test_the_file_server_is_the_desktop_user_s_nginx_unless_turned_off(paths: Paths) -> None:
    files = _program("files")
    assert files.account == "desktop"
    assert files.restart is not None
    argv = files.argv(Launch(Config(), paths))
    assert argv[4:] == [str(paths.desktop_dir / "files.sock"), "/usr/sbin/nginx",
                        str(paths.desktop_dir / "files" / "nginx.conf"),
                        str(paths.desktop_dir / "files")]
    assert files.enabled(Config())
    assert not files.enabled(Config(no_file_transfer=True))


def test_the_file_server_starts_again_over_the_socket_a_killed_one_left(
        paths: Paths, tmp_path: Path) -> None:
    """The argv's shell removes the socket, then execs nginx: run it with a stand-in for
    nginx that says whether the socket was still there, and its arguments."""
    sock = paths.desktop_dir / "files.sock"
    paths.desktop_dir.mkdir(parents=True, exist_ok=True)
    sock.write_text("left by a killed nginx")
    stand_in = tmp_path / "nginx"
    stand_in.write_text(f'#!/bin/sh\ntest -e {sock} && echo there || echo gone\necho "$@"\n')
    stand_in.chmod(0o755)
    argv = _program("files").argv(Launch(Config(), paths))
    assert argv[5] == "/usr/sbin/nginx"
    argv[5] = str(stand_in)
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    conf, prefix = paths.desktop_dir / "files" / "nginx.conf", paths.desktop_dir / "files"
    assert out.stdout == f"gone\n-c {conf} -p {prefix} -e stderr\n"
