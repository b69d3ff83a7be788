"""The real table of children: command lines, readiness, restart policy, stop order, and
which child each health check blames."""

from __future__ import annotations

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
    session_argv,
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
    assert _after(argv, "-rfbport") == "5999"
    assert _after(argv, "-PasswordFile") == str(paths.vnc_auth)
    assert _after(argv, "-SecurityTypes") == "VncAuth"
    assert _after(argv, "-localhost") == "1", "raw VNC reachable from outside by default"


def test_xvnc_listens_on_all_interfaces_only_with_expose_vnc(paths: Paths) -> None:
    argv = xvnc_argv(Launch(Config(expose_vnc=True), paths, ready_fd=3))
    assert _after(argv, "-localhost") == "0"


def test_xvnc_listens_on_no_x_socket_but_its_own(paths: Paths) -> None:
    argv = xvnc_argv(Launch(Config(), paths, ready_fd=3))
    nolisten = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-nolisten"]
    assert sorted(nolisten) == ["local", "tcp"]


def test_every_xvnc_argument_is_a_string(paths: Paths) -> None:
    argv = xvnc_argv(Launch(Config(), paths, ready_fd=3))
    assert all(isinstance(arg, str) for arg in argv)


# -- websockify ----------------------------------------------------------------------------

def test_websockify_without_tls(paths: Paths) -> None:
    argv = websockify_argv(Launch(Config(web_port=9443, vnc_port=5999), paths))
    assert argv[0] == "websockify"
    assert "--cert" not in argv
    assert "--ssl-only" not in argv
    assert _after(argv, "--web") == str(paths.novnc_dir)
    assert argv[-2:] == ["0.0.0.0:9443", "127.0.0.1:5999"]


def test_websockify_with_tls_serves_https_only(paths: Paths, tmp_path: Path) -> None:
    pem = tmp_path / "websockify.pem"
    argv = websockify_argv(Launch(Config(web_port=9443, vnc_port=5999), paths, web_pem=pem))
    assert _after(argv, "--cert") == str(pem)
    assert "--ssl-only" in argv
    assert argv[-2:] == ["0.0.0.0:9443", "127.0.0.1:5999"]


def test_websockify_needs_no_readiness_pipe(paths: Paths) -> None:
    assert websockify_argv(Launch(Config(), paths, ready_fd=9)) == websockify_argv(
        Launch(Config(), paths))


def test_session_argv(paths: Paths) -> None:
    assert session_argv(Launch(Config(), paths)) == ["dbus-run-session", "--", "startlxde"]


# -- the table -----------------------------------------------------------------------------

def test_the_table_names_each_program_once_and_waits_only_for_programs_it_has() -> None:
    names = [p.name for p in PROGRAMS]
    assert sorted(names) == ["session", "websockify", "xvnc"]
    assert len(set(names)) == len(names)
    assert all(p.after is None or p.after in names for p in PROGRAMS)


def test_xvnc_is_ready_when_it_says_so_and_the_session_waits_for_it() -> None:
    assert _program("xvnc").ready == "displayfd"
    assert _program("xvnc").after is None
    assert _program("session").after == "xvnc"
    assert _program("websockify").after is None, "websockify needs only the port number"


def test_every_program_builds_its_command_line(paths: Paths) -> None:
    launch = Launch(Config(), paths, ready_fd=3)
    for program in PROGRAMS:
        argv = program.argv(launch)
        assert argv, program.name
        assert all(isinstance(arg, str) for arg in argv), program.name


def test_only_websockify_is_restartable() -> None:
    assert [p.name for p in PROGRAMS if p.restart is not None] == ["websockify"]


def test_websockify_s_restart_policy() -> None:
    restart = _program("websockify").restart
    assert restart is not None
    assert restart.attempts >= 1
    assert 0 < restart.first_delay <= restart.max_delay


def test_stop_order_is_session_then_websockify_then_xvnc() -> None:
    orders = [p.stop_order for p in PROGRAMS]
    assert len(set(orders)) == len(orders), "two programs share a stop order"
    assert [p.name for p in sorted(PROGRAMS, key=lambda p: p.stop_order)] == [
        "session", "websockify", "xvnc"]


# -- blame ---------------------------------------------------------------------------------

@pytest.fixture
def target() -> probes.Target:
    return probes.Target(vnc_port=5901, web_port=8080, x_socket="/tmp/.X11-unix/X1",
                         password="secret12", timeout=1.0)


def test_blame_names_a_program_for_every_probe_the_desktop_runs(target: probes.Target) -> None:
    table = blame(PROGRAMS)
    # desktop_probes looks each of its checks up in the table: a missing one raises.
    checks = probes.desktop_probes(target, table)
    names = {p.name for p in PROGRAMS}
    assert [c.name for c in checks] == ["x_display", "websocket_login", "novnc_page"]
    for check in checks:
        assert table[check.name] in names
        assert check.part == table[check.name]


def test_blame_points_each_check_at_its_child() -> None:
    assert blame(PROGRAMS) == {"x_display": "xvnc", "websocket_login": "websockify",
                               "novnc_page": "websockify"}


def test_blame_of_a_custom_table() -> None:
    table = (Program("a", lambda launch: ["true"], probes=("one", "two")),
             Program("b", lambda launch: ["true"], probes=("three",)),
             Program("c", lambda launch: ["true"]))
    assert blame(table) == {"one": "a", "two": "a", "three": "b"}
