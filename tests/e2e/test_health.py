"""The health issue's fault matrix: what each failure does to status, reason, exit code,
and that the user's home survives every one of them."""

from __future__ import annotations

import time

import pytest

from tests.e2e import vnc
from tests.e2e.conftest import Container, docker, wait_until

pytestmark = pytest.mark.e2e
# Every round a full one (a VNC login through nginx and websockify), as before cheap
# rounds: a hung websockify is found by a full round (every 300 s by default).
FAST = ("--probe-interval=0.5", "--probe-full-interval=0.5", "--probe-timeout=1")
# Docker's HEALTHCHECK, run every 2 s instead of the image's 60 s (the same command).
# The image's check every 2 s, and its 60 s start period (failures then do not count)
# cut to 1 s: a failure right after the start is Docker's news at once.
DOCKER_HEALTH_FAST = ("--health-interval=2s", "--health-start-period=1s")


def _healthy_with_work(c: Container) -> None:
    c.wait_status("HEALTHY")
    c.exec("sh", "-c", "echo precious > /home/user/work.txt", user="user")


def _home_intact(c: Container) -> bool:
    return c.exec("cat", "/home/user/work.txt").stdout == "precious\n"


def _kill_child(c: Container, name: str, sig: str = "KILL") -> int:
    pid = c.status_json()["children"][name]["pid"]
    c.exec("kill", f"-{sig}", str(pid))
    return int(pid)


def _wait_pid_changed(c: Container, name: str, old: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = int(c.status_json()["children"][name]["pid"])
        if pid != old and c.status() == "HEALTHY\n":
            return pid
        time.sleep(0.05)
    raise AssertionError(f"{name} was not replaced: {c.status_json()}")


# The session's death is repaired (a fresh session on the same Xvnc): test_lifecycle.py.
@pytest.mark.parametrize("name", ["xvnc"])
def test_losing_the_users_windows_is_unhealthy_and_exits_3(desktop, name):
    c = desktop()
    _healthy_with_work(c)
    pid = _kill_child(c, name)
    assert c.wait_exit() == 3
    assert c.status() == "UNHEALTHY\n"
    detail = c.status_json()
    assert detail["reason"] == f"{name} (pid {pid}) was killed by signal 9"
    assert detail["children"][name]["returncode"] == -9
    assert not any(info["running"] for info in detail["children"].values())
    # The home is still there for a new container (docker start of the same one).
    docker("start", c.name)
    c.wait_status("HEALTHY")
    assert _home_intact(c)


@pytest.mark.parametrize("name", ["xvnc"])
def test_no_exit_on_failure_keeps_everything_for_recovery(desktop, name):
    c = desktop("--no-exit-on-failure", *FAST, extra=DOCKER_HEALTH_FAST)
    _healthy_with_work(c)
    pid = _kill_child(c, name)
    c.wait_status("UNHEALTHY")
    time.sleep(1.5)  # several probe intervals: it stays up, and stays UNHEALTHY
    assert c.running()
    assert c.status() == "UNHEALTHY\n"
    assert c.status_json()["reason"] == f"{name} (pid {pid}) was killed by signal 9"
    survivors = {n for n, info in c.status_json()["children"].items() if info["running"]}
    # The session may end with its X server (and is not restarted without one).
    # Sound's children (optional) play on without the X server, and the file server
    # serves the home.
    assert {"websockify", "nginx", "files"} <= survivors <= {
        "session", "websockify", "nginx", "files", "pipewire", "wireplumber",
        "pipewire-pulse", "sound"}
    assert _home_intact(c)
    assert c.exec("whaletopd", "status", check=False).returncode == 1
    # ... and Docker says so too (its HEALTHCHECK reads the status word).
    wait_until(lambda: docker("inspect", "-f", "{{.State.Health.Status}}", c.name)
               .stdout.strip() == "unhealthy", "docker inspect: unhealthy", timeout=30)


@pytest.mark.parametrize("flags", [(), ("--no-exit-on-failure",)])
def test_websockify_killed_is_restarted_and_the_desktop_stays(desktop, flags):
    c = desktop(*flags, *FAST)
    _healthy_with_work(c)
    before = c.status_json()["children"]
    old = _kill_child(c, "websockify")
    _wait_pid_changed(c, "websockify", old)
    assert "RECOVERING" in c.transitions()
    assert c.transitions()[-1] == "HEALTHY"
    after = c.status_json()
    for name in ("xvnc", "session", "nginx"):
        assert after["children"][name]["pid"] == before[name]["pid"], f"{name} was touched"
    assert after["restarts"]["websockify"]["used"] == 1
    assert after["restarts"]["nginx"]["used"] == 0
    assert _home_intact(c)
    vnc.WebVNC(8080, c.password()).close()  # the user's path works again


@pytest.mark.parametrize("flags", [(), ("--no-exit-on-failure",)])
def test_nginx_killed_is_restarted_and_the_desktop_stays(desktop, flags):
    c = desktop(*flags, *FAST)
    _healthy_with_work(c)
    before = c.status_json()["children"]
    # Its master, as the OOM killer would: the worker then exits by itself.
    old = _kill_child(c, "nginx")
    new = _wait_pid_changed(c, "nginx", old)

    files = before["files"]["pid"]  # the file server: another nginx, untouched

    def workers() -> list[tuple[int, int]]:
        """(pid, parent) of every worker of the front door's nginx in the container."""
        out = c.exec("ps", "-C", "nginx", "-o", "pid=,ppid=,args=").stdout.splitlines()
        return [(int(line.split()[0]), int(line.split()[1])) for line in out
                if "worker process" in line and int(line.split()[1]) != files]

    # The new master serves: its worker, and no worker of the old master left behind
    # (an orphan would hold the port, and every new master fail to bind it).
    wait_until(lambda: [parent for _, parent in workers()] == [new],
               f"exactly one nginx worker, the new master's ({new}): {workers()}")
    [web] = c.listeners()
    assert (web["port"], web["programs"]) == (8080, ["nginx"])
    assert web["pids"] == sorted([new, workers()[0][0]])
    transitions = c.transitions()
    assert transitions[transitions.index("RECOVERING"):] == ["RECOVERING", "HEALTHY"]
    after = c.status_json()
    assert after["state"] == "HEALTHY"
    assert after["children"]["nginx"]["pid"] == new
    for name in ("xvnc", "session", "websockify", "files"):
        assert after["children"][name]["pid"] == before[name]["pid"], f"{name} was touched"
    assert after["restarts"]["nginx"]["used"] == 1
    assert after["restarts"]["websockify"]["used"] == 0
    assert _home_intact(c)
    vnc.WebVNC(8080, c.password()).close()


def test_hung_websockify_is_detected_by_its_probe_and_replaced(desktop):
    c = desktop(*FAST)
    _healthy_with_work(c)
    old = _kill_child(c, "websockify", sig="STOP")
    _wait_pid_changed(c, "websockify", old)
    reasons = [e["reason"] for e in c.log_lines()
               if e.get("event") == "transition" and e["dest"] == "RECOVERING"]
    assert reasons
    assert reasons[0].startswith("health check failed: ")
    assert "timed out" in reasons[0]
    assert c.running()


def test_websockify_that_keeps_failing_ends_unhealthy(desktop):
    c = desktop(*FAST)
    _healthy_with_work(c)
    # Its socket's folder no longer the desktop user's (as a `sudo chown` in the desktop
    # would leave it): websockify, run as that user, cannot replace its socket there, so
    # every restart fails at once (PermissionError) until the budget of 5 is spent.
    # Xvnc's socket, already listening in that folder, is untouched.
    c.exec("chown", "root", "/run/whaletop/desktop")
    _kill_child(c, "websockify")
    assert c.wait_exit() == 3
    assert c.status() == "UNHEALTHY\n"
    assert "websockify" in c.status_json()["reason"]
    restarts = [e for e in c.log_lines() if e.get("event") == "restart_scheduled"]
    assert len(restarts) == 5
    assert all(e["child"] == "websockify" for e in restarts), restarts
    assert any(e.get("event") == "relay_failed" and "Permission denied" in e["reason"]
               for e in c.log_lines() if e.get("source") == "websockify")


def test_orphans_are_reaped(desktop):
    c = desktop()
    c.wait_status("HEALTHY")
    # 200 short-lived processes whose parent exits at once: all orphaned to PID 1.
    c.exec("sh", "-c", "for i in $(seq 200); do (sleep 0.2 &) ; done", user="user")
    deadline = time.monotonic() + 20
    zombies = -1
    while time.monotonic() < deadline:
        zombies = c.exec("ps", "-eo", "stat=").stdout.split().count("Z")
        sleepers = c.exec("pgrep", "-c", "-x", "sleep", check=False).stdout.strip()
        if zombies == 0 and sleepers in ("0", ""):
            break
        time.sleep(0.2)
    assert zombies == 0
    assert c.status() == "HEALTHY\n"


def test_docker_stop_while_starting_ends_cleanly(desktop):
    c = desktop()
    docker("stop", "-t", "10", c.name)  # at once: before or while STARTING
    assert c.wait_exit() == 0
    assert c.status() == "STOPPED\n"
    assert c.transitions()[-2:] == ["STOPPING", "STOPPED"]


def test_docker_restart_twice_in_a_row(desktop):
    c = desktop()
    _healthy_with_work(c)
    docker("restart", "-t", "10", c.name)
    docker("restart", "-t", "10", c.name)
    c.wait_status("HEALTHY")
    assert c.transitions().count("STOPPED") == 2
    assert _home_intact(c)
    assert c.exec("whaletopd", "status").returncode == 0


def _docker_health(c: Container) -> str:
    return docker("inspect", "-f", "{{.State.Health.Status}}", c.name).stdout.strip()


def test_a_hung_whaletopd_turns_the_healthcheck_unhealthy(desktop):
    """SIGSTOP the daemon: its last word stays HEALTHY, but its heartbeat (the status
    file's mtime, refreshed every 10 s) stops, and the image's HEALTHCHECK says unhealthy
    once the word is older than WHALETOP_HEALTH_STALE_AFTER (30 s; 15 here).  SIGCONT:
    healthy again.  With the image's 60 s interval that is within 30 + 60 s."""
    c = desktop(env={"WHALETOP_HEALTH_STALE_AFTER": "15"}, extra=DOCKER_HEALTH_FAST)
    c.wait_status("HEALTHY")
    wait_until(lambda: _docker_health(c) == "healthy", "docker inspect: healthy", timeout=120)
    pid = c.status_json()["pid"]
    c.exec("kill", "-STOP", str(pid))
    try:
        wait_until(lambda: _docker_health(c) == "unhealthy", "docker inspect: unhealthy",
                   timeout=180)
        assert c.status() == "HEALTHY\n"  # the word alone would have lied
        health = docker("inspect", "-f", "{{json .State.Health.Log}}", c.name).stdout
        assert "whaletopd is hung or stopped" in health
    finally:
        c.exec("kill", "-CONT", str(pid))
    wait_until(lambda: _docker_health(c) == "healthy", "docker inspect: healthy again",
               timeout=120)
