"""The lifecycle issue, as a user checks it: start, log in, flags, stop, restart, crash."""

from __future__ import annotations

import json
import os
import time
import urllib.request

import pytest

from tests.e2e import vnc
from tests.e2e.conftest import STATUS_WORDS, WEB, Container, docker, wait_until

pytestmark = pytest.mark.e2e
WEB_PORT = 8080


def _children_users(c: Container) -> dict[str, str]:
    pids = {name: info["pid"] for name, info in c.status_json()["children"].items()}
    return {name: c.exec("ps", "-o", "user=", "-p", str(pid)).stdout.strip()
            for name, pid in pids.items()}


def _assert_accounts(c: Container, desktop_user: str) -> None:
    """The desktop's children are the desktop user's; nginx's master is root (it reads
    the key and binds the port), its workers, which talk to clients, are www-data."""
    users = _children_users(c)
    assert users == {"xvnc": desktop_user, "websockify": desktop_user,
                     "session": desktop_user, "nginx": "root",
                     **dict.fromkeys(("pipewire", "wireplumber", "pipewire-pulse", "sound",
                                      "files"), desktop_user)}, users
    master = c.status_json()["children"]["nginx"]["pid"]
    workers = c.exec("ps", "-o", "user=", "--ppid", str(master)).stdout.split()
    assert workers, "nginx has a worker"
    assert set(workers) == {"www-data"}, workers


def test_default_start_reaches_healthy_and_a_vnc_client_logs_in(desktop, tmp_path):
    c = desktop()
    # Watch the file while it starts: every read is exactly one known word.
    while c.status() != "HEALTHY\n":
        word = c.status()
        if word:
            assert word.endswith("\n"), repr(word)
            assert word.strip() in STATUS_WORDS, repr(word)
        assert c.running(), c.logs()[-2000:]
    assert c.transitions()[:3] == ["STARTING", "STARTED", "HEALTHY"]

    logged = [e["password"] for e in c.log_lines() if e.get("event") == "vnc_password"]
    assert logged == [c.password()], "the password is logged once and equals vnc_passwd"
    assert len(c.password()) == 8
    assert oct((c.state_dir / "vnc_passwd").stat().st_mode & 0o777) == "0o600"

    # Logging in works as soon as HEALTHY: through the web port, as noVNC does ...
    web = vnc.WebVNC(WEB_PORT, c.password())
    assert (web.width, web.height) == (1280, 800)
    assert len(web.framebuffer_update()) == 4
    web.close()
    # ... and with a real VNC client on Xvnc itself (through its UNIX socket).
    ok = vnc.capture(c.password(), tmp_path / "first.png", c.vnc_port())
    assert ok.returncode == 0, ok.stderr
    shot = tmp_path / "desktop.png"
    assert vnc.capture_drawn(c.password(), shot, c.vnc_port()), \
        "the LXDE desktop (wallpaper, panel) is drawn"
    wrong_password = "wrongpw1" if c.password() != "wrongpw1" else "wrongpw2"
    wrong = vnc.capture(wrong_password, tmp_path / "no.png", c.vnc_port())
    assert wrong.returncode != 0
    with pytest.raises(PermissionError):
        vnc.WebVNC(WEB_PORT, wrong_password)
    # Wrong passwords lock nobody out (Xvnc's per-address blacklist is off: every web
    # client reaches it through one socket); the right one still works at once.
    for _ in range(6):
        with pytest.raises(PermissionError):
            vnc.WebVNC(WEB_PORT, wrong_password)
    vnc.WebVNC(WEB_PORT, c.password()).close()

    _assert_accounts(c, "user")
    detail = c.status_json()
    assert detail["state"] == "HEALTHY"
    assert detail["reason"]
    assert sorted(detail["children"]) == ["files", "nginx", "pipewire", "pipewire-pulse",
                                          "session", "sound", "websockify", "wireplumber",
                                          "xvnc"]
    assert all(info["running"] for info in detail["children"].values())


def _get(path: str) -> tuple[int, str]:
    with urllib.request.urlopen(WEB + path, timeout=10) as resp:
        return resp.status, resp.read().decode()


def test_browser_page_and_only_the_web_port_listens(desktop):
    c = desktop()
    c.wait_status("HEALTHY")
    # The root page sends the browser on to noVNC (with JavaScript; a link without).
    status, root = _get("/")
    assert status == 200
    assert "whaletop-start.js" in root
    assert 'href="vnc.html?autoconnect=true&amp;resize=remote&amp;reconnect=true"' in root
    assert 'http-equiv="refresh"' not in root.lower()
    status, start = _get("/whaletop-start.js")
    assert status == 200
    assert "vnc.html?" in start
    status, page = _get("/vnc.html")
    assert status == 200
    assert "noVNC" in page
    # Nothing but nginx on the web port listens on TCP, for everyone; Xvnc listens on
    # its UNIX socket only, the desktop user's alone.
    assert [{k: e[k] for k in ("address", "port", "programs")} for e in c.listeners()] == [
        {"address": "0.0.0.0", "port": WEB_PORT, "programs": ["nginx"]}]
    assert c.exec("stat", "-c", "%a %U %F", "/run/whaletop/desktop/vnc.sock").stdout.split() == [
        "600", "user", "socket"]
    detail = c.status_json()
    assert detail["vnc_port"] is None
    assert detail["listening"] == [f"tcp {WEB_PORT} (nginx)"]


def test_expose_vnc_listens_on_every_address_and_a_vnc_client_logs_in(desktop, tmp_path):
    c = desktop("--expose-vnc")
    c.wait_status("HEALTHY")
    listeners = c.listeners()
    vnc_listeners = [entry for entry in listeners if entry["port"] == 5901]
    assert {entry["port"] for entry in listeners} == {WEB_PORT, 5901}, listeners
    assert vnc_listeners
    assert all(entry["programs"] == ["Xvnc"] for entry in vnc_listeners)
    assert all(entry["address"] in ("0.0.0.0", "::") for entry in vnc_listeners), listeners
    detail = c.status_json()
    assert detail["vnc_port"] == 5901
    assert f"tcp {WEB_PORT} (nginx)" in detail["listening"]
    assert "tcp 5901 (Xvnc)" in detail["listening"]
    ok = vnc.capture(c.password(), tmp_path / "exposed.png", 5901)
    assert ok.returncode == 0, ok.stderr
    assert vnc.capture("x" + c.password()[1:], tmp_path / "no.png", 5901).returncode != 0


def test_username_flag_makes_bob_own_the_session(desktop):
    c = desktop("--username=bob")
    c.wait_status("HEALTHY")
    _assert_accounts(c, "bob")
    assert c.exec("stat", "-c", "%U", "/home/bob").stdout.strip() == "bob"
    assert c.exec("sudo", "-n", "true", user="bob", check=False).returncode == 0


def test_no_sudo_flag_and_env_twin(desktop):
    c = desktop("--no-sudo")
    c.wait_status("HEALTHY")
    assert c.exec("sudo", "-n", "true", user="user", check=False).returncode != 0
    c2 = desktop(env={"WHALETOP_NO_SUDO": "1", "WHALETOP_WEB_PORT": "8081",
                      "WHALETOP_VNC_PORT": "5902"})
    c2.wait_status("HEALTHY")
    assert c2.exec("sudo", "-n", "true", user="user", check=False).returncode != 0
    assert [e["port"] for e in c2.listeners()] == [8081], "the VNC port only with --expose-vnc"


def test_password_from_env_is_used_and_never_logged(desktop, tmp_path):
    secret = "s3cret-Pass"
    c = desktop("--vnc-password-from-env", env={"VNC_PASSWORD": secret})
    c.wait_status("HEALTHY")
    assert secret not in c.logs()
    assert secret[:8] not in c.logs()
    assert any(e.get("event") == "vnc_password_truncated" for e in c.log_lines())
    assert vnc.capture(secret[:8], tmp_path / "s.png", c.vnc_port()).returncode == 0
    vnc.WebVNC(WEB_PORT, secret[:8]).close()
    assert c.password() == secret


@pytest.mark.parametrize(("args", "env", "message"), [
    (("--vnc-password-from-env",), {}, "VNC_PASSWORD is not"),
    (("--vnc-password-from-env",), {"VNC_PASSWORD": ""}, "VNC_PASSWORD is empty"),
    (("--username=root",), {}, "must not run as root"),
    (("--username=Bad Name",), {}, "not a valid user name"),
    (("--no-such-flag",), {}, "--no-such-flag"),
    ((), {"WHALETOP_NO_SUDO": "maybe"}, "WHALETOP_NO_SUDO"),
])
def test_bad_input_fails_with_one_clear_json_error(desktop, args, env, message):
    c = desktop(*args, env=env)
    assert c.wait_exit() == 2
    assert c.status() == "FAILED\n"
    errors = [e for e in c.log_lines() if e.get("level") == "error"]
    assert len(errors) == 1, errors
    assert message in errors[0]["reason"]
    assert message in c.status_json()["reason"]
    assert not (c.state_dir / "vnc_passwd").exists(), "nothing was provisioned"


def test_docker_stop_stops_children_in_reverse_and_exits_0(desktop):
    c = desktop()
    c.wait_status("HEALTHY")
    docker("stop", "-t", "10", c.name)
    # 0, not 137: whaletopd stopped everything itself before docker's SIGKILL.
    assert c.wait_exit() == 0
    assert c.status() == "STOPPED\n"
    stopped = [e["child"] for e in c.log_lines() if e.get("event") == "child_stopped"]
    # nginx first (no new connections), the X server after the session and the web
    # side; the file server last (an upload under way is not cut before the rest).
    assert stopped == ["nginx", "sound", "session", "pipewire-pulse", "wireplumber",
                       "pipewire", "websockify", "xvnc", "files"]
    assert c.transitions()[-2:] == ["STOPPING", "STOPPED"]


def test_docker_restart_comes_back_healthy_with_home_intact(desktop, tmp_path):
    c = desktop()
    c.wait_status("HEALTHY")
    c.exec("sh", "-c", "echo keep > /home/user/notes.txt", user="user")
    first_since = c.status_json()["since"]
    docker("restart", "-t", "10", c.name)
    c.wait_status("HEALTHY")
    assert c.status_json()["since"] != first_since, "HEALTHY again, written by the new start"
    assert c.exec("cat", "/home/user/notes.txt").stdout == "keep\n"
    assert vnc.capture(c.password(), tmp_path / "r.png", c.vnc_port()).returncode == 0
    vnc.WebVNC(WEB_PORT, c.password()).close()


def test_mounted_home_keeps_owner_and_files(desktop, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.txt").write_text("chapter 1\n")
    os.chown(home, 1234, 1234)
    os.chown(home / "thesis.txt", 1234, 1234)
    before = (home / "thesis.txt").stat()
    c = desktop(volumes=(f"{home}:/home/user",))
    c.wait_status("HEALTHY")
    assert c.exec("id", "-u", "user").stdout.strip() == "1234"
    after = (home / "thesis.txt").stat()
    assert (after.st_uid, after.st_mtime_ns, (home / "thesis.txt").read_text()) == (
        1234, before.st_mtime_ns, "chapter 1\n")
    assert (home / ".bashrc").exists(), "an empty-ish home gets the default files"
    assert (home / ".bashrc").stat().st_uid == 1234
    # Work done in the desktop survives the container: a new one finds it, same owner.
    c.exec("sh", "-c", "echo draft 2 > /home/user/thesis-v2.txt", user="user")
    docker("rm", "-f", c.name)
    c2 = desktop(volumes=(f"{home}:/home/user",))
    c2.wait_status("HEALTHY")
    assert c2.exec("cat", "/home/user/thesis-v2.txt", user="user").stdout == "draft 2\n"
    assert (home / "thesis-v2.txt").stat().st_uid == 1234
    assert (home / "thesis.txt").stat().st_mtime_ns == before.st_mtime_ns


def test_uid_and_gid_flags_choose_the_ids(desktop, tmp_path):
    c = desktop("--uid=2001", "--gid=2002")
    c.wait_status("HEALTHY")
    assert c.exec("id", "-u", "user").stdout.strip() == "2001"
    assert c.exec("id", "-g", "user").stdout.strip() == "2002"
    assert c.exec("stat", "-c", "%u:%g", "/home/user").stdout.strip() == "2001:2002"


def test_docker_healthcheck_reports_healthy(desktop):
    # The image's HEALTHCHECK command, every 2 s instead of every 60 s.
    c = desktop(extra=("--health-interval=2s",))
    c.wait_status("HEALTHY")
    for _ in range(600):
        health = docker("inspect", "-f", "{{.State.Health.Status}}", c.name).stdout.strip()
        if health != "starting":
            break
        time.sleep(0.1)
    assert health == "healthy"
    assert docker("inspect", "-f", "{{json .Config.Healthcheck.Test}}", c.name).stdout.strip() \
        == '["CMD","/usr/local/bin/whaletop-healthcheck"]'
    assert c.exec("whaletop-healthcheck").stdout == "HEALTHY\n"
    assert c.exec("whaletopd", "status").stdout.startswith("HEALTHY")


def test_every_stdout_line_is_json(desktop):
    c = desktop()
    c.wait_status("HEALTHY")
    # A browser's visit: the page with noVNC's password parameter, and its WebSocket.
    assert _get("/vnc.html?password=" + c.password())[0] == 200
    vnc.WebVNC(WEB_PORT, c.password()).close()

    def requests() -> list[dict[str, object]]:
        return [e for e in c.log_lines()  # raises on the first non-JSON line
                if e.get("source") == "nginx" and e.get("event") == "request"]

    # nginx logs a WebSocket once it is closed.
    wait_until(lambda: len(requests()) >= 2, "two requests in nginx's access log")
    # One line per request, without the query (no password in it), and none for
    # whaletopd's own health checks (one every probe interval since the start).
    assert [(e["client"], e["path"], e["status"]) for e in requests()] == [
        ("127.0.0.1", "/vnc.html", 200), ("127.0.0.1", "/websockify", 101)], requests()
    lines = c.log_lines()
    sources = {e.get("source") for e in lines}
    assert {"xvnc", "websockify", "session", "nginx"} <= sources
    steps = {e["step"] for e in lines if e.get("event") == "step"}
    assert {"ensure_user", "vnc_password", "launch_xvnc", "launch_session"} <= steps
    assert all("duration_ms" in e for e in lines if e.get("event") == "step")


def test_docker_stop_while_starting_exits_0(desktop):
    """`docker stop` as soon as the status says STARTING: whaletopd stops by itself
    (provisioning runs off its loop), so docker never has to kill it (137)."""
    c = desktop()
    wait_until(lambda: c.status() == "STARTING\n", "STARTING", timeout=30)
    docker("stop", "-t", "5", c.name)
    assert c.wait_exit() == 0
    assert c.status() == "STOPPED\n"
    assert c.transitions()[-2:] == ["STOPPING", "STOPPED"]
    assert not [e for e in c.log_lines() if e.get("event") == "crash"]


def test_read_only_state_folder_fails_with_exit_2_saying_what_to_do(image, tmp_path):
    """`-v dir:/opt/whaletop:ro`: the status cannot be written, so the one error line
    and the exit code say it; not a crash (exit 1, traceback)."""
    state = tmp_path / "ro-state"
    state.mkdir()
    name = f"whaletop-test-ro-{os.getpid()}"
    try:
        docker("run", "-d", "--name", name, "--network", "host",
               "-v", f"{state}:/opt/whaletop:ro", image)
        assert int(docker("wait", name, timeout=60).stdout.strip()) == 2
        lines = [json.loads(line) for line in docker("logs", name).stdout.splitlines()]
    finally:
        docker("rm", "-f", name, check=False)
    problems = [e for e in lines if e.get("level") in ("warning", "error", "critical")]
    assert [e["event"] for e in problems] == ["failed"], problems
    reason = problems[0]["reason"]
    assert reason.startswith("cannot write the status files in /opt/whaletop (Read-only file")
    assert "--tmpfs /opt/whaletop" in reason
    assert list(state.iterdir()) == []


def _pid_of(c: Container, program: str) -> int:
    """The pid of a program of the session, once it runs."""
    def find() -> str:
        return c.exec("pgrep", "-x", program, check=False).stdout.strip()
    wait_until(find, f"{program} running")
    return int(find().split()[0])


def _lxsession_pid(c: Container) -> int:
    return _pid_of(c, "lxsession")


def test_logout_stops_the_desktop_with_exit_0(desktop):
    """LXDE's Logout runs lxsession-logout, which sends SIGTERM to $_LXSESSION_PID (the
    session's lxsession): done here as it does it, as the desktop user."""
    c = desktop()
    c.wait_status("HEALTHY")
    panel = _pid_of(c, "lxpanel")
    env = c.exec("sh", "-c", f"tr '\\0' '\\n' < /proc/{panel}/environ", user="user").stdout
    (pid,) = [line.split("=", 1)[1] for line in env.splitlines()
              if line.startswith("_LXSESSION_PID=")]
    assert int(pid) == _lxsession_pid(c)
    c.exec("kill", "-TERM", pid, user="user")
    assert c.wait_exit() == 0
    assert c.status() == "STOPPED\n"
    assert c.status_json()["reason"].startswith("the desktop user logged out (session (pid")
    assert c.transitions()[-3:] == ["HEALTHY", "STOPPING", "STOPPED"]


def test_crashed_session_is_restarted_on_the_same_x_server(desktop):
    """lxsession killed: RECOVERING, then HEALTHY with a fresh session; Xvnc untouched."""
    c = desktop()
    c.wait_status("HEALTHY")
    before = c.status_json()["children"]
    old = _lxsession_pid(c)
    c.exec("kill", "-KILL", str(old), user="user")
    wait_until(lambda: c.status_json()["children"]["session"]["pid"]
               != before["session"]["pid"], "a new session")
    c.wait_status("HEALTHY")
    after = c.status_json()
    assert after["children"]["xvnc"] == before["xvnc"]
    assert after["children"]["session"]["running"] is True
    assert after["restarts"]["session"]["used"] == 1
    assert "RECOVERING" in c.transitions()
    assert _lxsession_pid(c) != old
    assert c.running()
