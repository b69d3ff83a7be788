"""Least privilege on the real image: any uid (docker run --user, OpenShift's arbitrary
uid in group 0), a read-only root filesystem, and a clear refusal where a mode cannot
work."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import vnc
from tests.e2e.conftest import Container, docker, wait_until

pytestmark = pytest.mark.e2e

READ_ONLY = ("--read-only", "--tmpfs", "/tmp", "--tmpfs", "/run/whaletop")


def _processes(c: Container) -> list[tuple[int, int, str]]:
    """(uid, gid, command) of every process in the container."""
    out = c.exec("ps", "-eo", "uid=,gid=,comm=").stdout
    return [(int(u), int(g), comm) for u, g, comm in (line.split(None, 2)
                                                      for line in out.splitlines())]


def _session_env(c: Container) -> dict[str, str]:
    pid = c.exec("pgrep", "-o", "lxpanel").stdout.strip()
    raw = c.exec("cat", f"/proc/{pid}/environ").stdout
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def _whoami_in_the_session(c: Container) -> str:
    """`id -un` with the session's own environment, as a terminal in it would run."""
    env = _session_env(c)
    keep = [f"{k}={env[k]}" for k in ("LD_PRELOAD", "NSS_WRAPPER_PASSWD", "NSS_WRAPPER_GROUP")
            if k in env]
    return c.exec("env", *keep, "id", "-un").stdout.strip()


def _page(port: int = 8080) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/vnc.html", timeout=10) as resp:
        status: int = resp.status
        return status


def _desktop_works(c: Container) -> None:
    """What a person checks: the page loads and a VNC login through it reaches Xvnc."""
    assert _page() == 200
    client = vnc.WebVNC(8080, None)
    try:
        assert client.log_in(c.password()) == (1280, 800)
    finally:
        client.close()


@pytest.fixture
def home_volume() -> Iterator[str]:
    name = f"whaletop-test-home-{uuid.uuid4().hex[:8]}"
    yield name
    docker("volume", "rm", "-f", name, check=False)


@pytest.mark.parametrize("user", ["1000:1000", "123456:0"], ids=["docker-user", "openshift"])
def test_any_uid_gets_a_working_desktop_run_as_that_uid(desktop, user: str) -> None:
    uid, gid = (int(x) for x in user.split(":"))
    c = desktop(extra=("--user", user))
    c.wait_status("HEALTHY")
    _desktop_works(c)
    # HEALTHY does not wait for the session's panel: it comes moments later.
    wait_until(lambda: "lxpanel" in {comm for _, _, comm in _processes(c)}, "LXDE's panel")
    procs = _processes(c)
    assert {(u, g) for u, g, _ in procs} == {(uid, gid)}, procs
    assert {"Xvnc", "nginx", "vncrelay", "lxpanel"} <= {comm for _, _, comm in procs}
    assert _whoami_in_the_session(c) == "user"
    home = c.exec("stat", "-c", "%u %F", "/home/user/.bashrc").stdout.split(None, 1)
    assert home == [str(uid), "regular file\n"], "the default files are the user's"
    ensure = next(e for e in c.log_lines() if e.get("step") == "ensure_user")
    assert "no sudo: the container does not run as root" in ensure["done"]
    assert c.exec("sudo", "-n", "true", check=False).returncode != 0


def test_read_only_root_filesystem_with_apps_in_the_menu(home_volume: str, desktop,
                                                          tmp_path: Path) -> None:
    # home_volume first: set up before the container, so removed after it.
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "notes.desktop").write_text(
        "[Desktop Entry]\nType=Application\nName=Read Only Notes\nExec=lxterminal\n")
    c = desktop(extra=(*READ_ONLY, "--user", "1000:1000"),
                volumes=(f"{home_volume}:/home/user", f"{apps}:/Apps/mine:ro"))
    c.wait_status("HEALTHY")
    _desktop_works(c)
    # The entry reaches LXDE's menu through whaletop's folder on XDG_DATA_DIRS.
    wait_until(lambda: "Read Only Notes" in c.exec(
        "sh", "-c", "cat /home/user/.cache/menus/* 2>/dev/null", check=False).stdout,
        "the /Apps entry in LXDE's menu")
    # Nothing of the image was written: the container's own layer holds only the
    # mount point Docker made for the /Apps folder.
    changed = {line.split()[1] for line in docker("diff", c.name).stdout.splitlines()}
    assert changed <= {"/Apps", "/Apps/mine"}, changed
    assert c.exec("touch", "/usr/share/applications/x", check=False).returncode != 0


def test_read_only_as_root_is_refused_with_the_fix(desktop) -> None:
    c = desktop(extra=READ_ONLY)
    assert c.wait_exit() == 2
    assert c.status() == "FAILED\n"
    errors = [e for e in c.log_lines() if e.get("level") == "error"]
    assert len(errors) == 1, errors
    assert errors[0]["reason"].startswith("the image is read-only (docker run --read-only)")
    assert "--user 1000:1000" in errors[0]["reason"]


def test_a_uid_flag_against_the_containers_user_is_refused(desktop) -> None:
    c = desktop("--uid", "2000", extra=("--user", "1000:1000"))
    assert c.wait_exit() == 2
    detail = json.loads((c.state_dir / "status.json").read_text())
    assert detail["state"] == "FAILED"
    assert detail["reason"].startswith("--uid 2000: the container runs as uid 1000")


def test_an_unwritable_mounted_home_is_refused_and_left_alone(desktop, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("mine\n")
    home.chmod(0o755)  # root's, as a host folder made by root
    c = desktop(extra=("--user", "1000:1000"), volumes=(f"{home}:/home/user",))
    assert c.wait_exit() == 2
    reason = c.status_json()["reason"]
    assert reason.startswith("the home /home/user (owner uid 0, gid 0, mode 0755) is not "
                             "writable by uid 1000 (gid 1000)")
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]
    assert (home / "thesis.tex").read_text() == "mine\n"
