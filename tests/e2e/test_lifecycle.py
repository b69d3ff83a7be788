"""The lifecycle issue, as a user checks it: start, log in, flags, stop, restart, crash."""

from __future__ import annotations

import os
import time
import urllib.request

import pytest

from tests.e2e import vnc
from tests.e2e.conftest import STATUS_WORDS, WEB, Container, docker

pytestmark = pytest.mark.e2e


def _children_users(c: Container) -> dict[str, str]:
    pids = {name: info["pid"] for name, info in c.status_json()["children"].items()}
    return {name: c.exec("ps", "-o", "user=", "-p", str(pid)).stdout.strip()
            for name, pid in pids.items()}


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

    ok = vnc.capture(c.password(), tmp_path / "first.png")
    assert ok.returncode == 0, ok.stderr  # logging in works as soon as HEALTHY
    shot = tmp_path / "desktop.png"
    assert vnc.capture_drawn(c.password(), shot), "the LXDE desktop (wallpaper, panel) is drawn"
    wrong = vnc.capture("wrongpw1" if c.password() != "wrongpw1" else "wrongpw2",
                        tmp_path / "no.png")
    assert wrong.returncode != 0

    # Nothing the desktop runs is root; the session is the desktop user's.
    assert set(_children_users(c).values()) == {"user"}
    detail = c.status_json()
    assert detail["state"] == "HEALTHY"
    assert detail["reason"]
    assert all(info["running"] for info in detail["children"].values())


def test_browser_page_and_raw_vnc_on_localhost_only(desktop):
    c = desktop()
    c.wait_status("HEALTHY")
    with urllib.request.urlopen(WEB + "/", timeout=10) as resp:
        assert resp.status == 200
        assert "vnc.html" in resp.read().decode()
    with urllib.request.urlopen(WEB + "/vnc.html", timeout=10) as resp:
        assert "noVNC" in resp.read().decode()
    # /proc/net/tcp inside the container: 5901 (0x170D) listens on 127.0.0.1 only.
    listeners = [line.split()[1] for line in c.exec("cat", "/proc/net/tcp").stdout.splitlines()[1:]
                 if line.split()[3] == "0A"]
    assert "0100007F:170D" in listeners
    assert "00000000:170D" not in listeners
    assert "00000000:1F90" in listeners  # the web port is for everyone


def test_username_flag_makes_bob_own_the_session(desktop):
    c = desktop("--username=bob")
    c.wait_status("HEALTHY")
    assert set(_children_users(c).values()) == {"bob"}
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


def test_password_from_env_is_used_and_never_logged(desktop, tmp_path):
    secret = "s3cret-Pass"
    c = desktop("--vnc-password-from-env", env={"VNC_PASSWORD": secret})
    c.wait_status("HEALTHY")
    assert secret not in c.logs()
    assert secret[:8] not in c.logs()
    assert any(e.get("event") == "vnc_password_truncated" for e in c.log_lines())
    assert vnc.capture(secret[:8], tmp_path / "s.png").returncode == 0
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
    assert stopped == ["session", "websockify", "xvnc"]
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
    assert vnc.capture(c.password(), tmp_path / "r.png").returncode == 0


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
    c = desktop()
    c.wait_status("HEALTHY")
    for _ in range(200):
        health = docker("inspect", "-f", "{{.State.Health.Status}}", c.name).stdout.strip()
        if health != "starting":
            break
        time.sleep(0.1)
    assert health == "healthy"
    assert c.exec("whaletopd", "status").stdout.startswith("HEALTHY")


def test_every_stdout_line_is_json(desktop):
    c = desktop()
    c.wait_status("HEALTHY")
    lines = c.log_lines()  # raises on the first non-JSON line
    sources = {e.get("source") for e in lines}
    assert {"xvnc", "websockify", "session"} <= sources
    steps = {e["step"] for e in lines if e.get("event") == "step"}
    assert {"ensure_user", "vnc_password", "launch_xvnc", "launch_session"} <= steps
    assert all("duration_ms" in e for e in lines if e.get("event") == "step")
