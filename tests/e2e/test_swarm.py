"""deploy/stack.yaml for real, on a single-node swarm the test makes (and leaves again)
when the engine is in none.

The desktops run on the host's network on 127.0.0.1:8580 and 8581 (web), which nothing
else may hold meanwhile.  The stack's image is given by image ID, not by tag: for a tag
every node's dockerd first tries to pull it from its registry (Docker Hub for a local
name), traffic these tests must not send; an image ID is used as it is.  The second
image, for the rolling update, is the first with one more label (a new ID, the same
layers).

- Both desktops reach HEALTHY, each with its user, web port and password, which came as
  a Docker secret through VNC_PASSWORD_FILE and is in no container's environment.
- Xvnc killed in one: that container exits 3 (UNHEALTHY), Swarm starts a new task whose
  home (a named volume) still holds what was written before; the other desktop's
  container and processes are untouched.
- `docker service update --image`: the old task is stopped (exit 0) before the new one
  starts (stop-first), and the new one is HEALTHY.
- `docker stack rm`: every desktop stops with exit code 0.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import vnc
from tests.e2e.conftest import ROOT, docker, tcp_listeners, wait_until

pytestmark = pytest.mark.e2e

STACK_FILE = ROOT / "deploy" / "stack.yaml"
DOCKER_SOCKET = "/var/run/docker.sock"
WEB = {"alice": 8580, "bob": 8581}
PASSWORD = {"alice": "alice-pw", "bob": "bob-pw12"}


# -- a swarm, left as it was found -----------------------------------------------------------

def _swarm_state() -> str:
    return docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()


def _networks() -> set[str]:
    return set(docker("network", "ls", "--format", "{{.Name}}").stdout.split())


@pytest.fixture(scope="module")
def swarm() -> Iterator[None]:
    """This engine as a swarm manager: its own swarm if it has one, else one made here
    (advertised on 127.0.0.1) and left at the end, with the bridge it added."""
    state = _swarm_state()
    if state == "active":
        if docker("info", "--format", "{{.Swarm.ControlAvailable}}").stdout.strip() != "true":
            pytest.skip("this engine is a swarm worker: a stack needs a manager")
        yield
        return
    if state != "inactive":
        pytest.skip(f"this engine's swarm is {state!r}: neither usable nor to be touched")
    before = _networks()
    made = docker("swarm", "init", "--advertise-addr", "127.0.0.1", check=False)
    if made.returncode != 0:
        pytest.skip(f"`docker swarm init` failed here: {made.stderr.strip()}")
    try:
        yield
    finally:
        docker("swarm", "leave", "--force", check=False)
        for network in _networks() - before:  # docker_gwbridge outlives the swarm
            docker("network", "rm", network, check=False)
        assert _swarm_state() == "inactive", "the swarm this test made was not left"


@pytest.fixture(scope="module")
def images(image: str) -> Iterator[tuple[str, str]]:
    """Two image IDs of the image under test: itself, and itself with one more label."""
    first = docker("image", "inspect", "-f", "{{.Id}}", image).stdout.strip()
    tag = f"whaletop:swarm-test-{uuid.uuid4().hex[:8]}"
    built = subprocess.run(["docker", "build", "-q", "-t", tag, "-"], check=True, text=True,
                           capture_output=True, timeout=300,
                           input=f"FROM {first}\nLABEL org.whaletop.test.rollout=second\n")
    second = docker("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip()
    assert second != first, built.stdout
    yield first, second
    docker("rmi", tag, check=False)


def _port_busy(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- the stack -------------------------------------------------------------------------------

class Stack:
    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name, self.env = name, env

    def service(self, user: str) -> str:
        return f"{self.name}_{user}"

    def containers(self, user: str, *, running: bool = True) -> list[str]:
        args = ["ps", "-q", "--no-trunc", "--filter",
                f"label=com.docker.swarm.service.name={self.service(user)}"]
        return docker(*args, *([] if running else ["-a"])).stdout.split()

    def container(self, user: str) -> str:
        """The desktop's one running container, once there is exactly one."""
        found: list[str] = []

        def one() -> bool:
            found[:] = self.containers(user)
            return len(found) == 1
        wait_until(one, f"one running container of {self.service(user)}", timeout=120)
        return found[0]

    def status(self, container: str) -> dict[str, Any]:
        out = docker("exec", container, "whaletopd", "status", "--json", check=False)
        try:
            doc: dict[str, Any] = json.loads(out.stdout)
        except ValueError:
            return {}
        return doc

    def healthy(self, user: str) -> tuple[str, dict[str, Any]]:
        """The desktop's container once it is HEALTHY, and its status."""
        found: list[Any] = []

        def is_healthy() -> bool:
            running = self.containers(user)
            if len(running) != 1:
                return False
            doc = self.status(running[0])
            found[:] = [running[0], doc]
            return doc.get("state") == "HEALTHY"
        try:
            wait_until(is_healthy, f"{user} HEALTHY", timeout=120)
        except AssertionError:
            tasks = docker("service", "ps", "--no-trunc", self.service(user)).stdout
            logs = docker("service", "logs", "--raw", self.service(user), check=False).stdout
            raise AssertionError(f"{user} never HEALTHY: {found[1:]}\n{tasks}\n"
                                 f"{logs[-3000:]}") from None
        return found[0], found[1]

    def tasks(self, user: str) -> list[dict[str, Any]]:
        out = docker("service", "ps", "--no-trunc", "--format", "{{json .}}",
                     self.service(user)).stdout
        return [json.loads(line) for line in out.splitlines()]


class ExitWatch:
    """The engine's wait for a container's exit, registered before it returns: an exit
    code is caught however soon after Swarm removes the container.  (`docker wait`
    started in the background could come after the removal.)"""

    def __init__(self, container: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(180)
        sock.connect(DOCKER_SOCKET)
        self.conn = http.client.HTTPConnection("localhost")
        self.conn.sock = sock
        self.conn.request("POST", f"/v1.41/containers/{container}/wait")
        # The engine sends the headers once the wait is registered (API 1.30 and later).
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.read()

    def code(self) -> int:
        try:
            return int(json.loads(self.response.read())["StatusCode"])
        finally:
            self.conn.close()


def _instant(rfc3339: str) -> tuple[datetime, int]:
    """Docker's RFC 3339 time with nanoseconds (trailing zeros dropped), comparable."""
    match = re.fullmatch(r"([0-9T:-]+)(?:\.([0-9]{1,9}))?Z", rfc3339)
    assert match, rfc3339
    whole = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S")
    return whole, int((match[2] or "0").ljust(9, "0"))


def _started_finished(container: str) -> tuple[tuple[datetime, int], tuple[datetime, int]]:
    out = docker("inspect", "-f", "{{.State.StartedAt}} {{.State.FinishedAt}}",
                 container).stdout.split()
    return _instant(out[0]), _instant(out[1])


def _identity(doc: dict[str, Any]) -> tuple[Any, ...]:
    """What changes if anything in a desktop was restarted."""
    kids = doc["children"]
    return (doc["pid"], doc["since"], kids["xvnc"]["pid"], kids["websockify"]["pid"],
            kids["nginx"]["pid"], kids["session"]["pid"])


@pytest.fixture
def stack(swarm: None, images: tuple[str, str], tmp_path: Path) -> Iterator[Stack]:
    busy = [port for port in WEB.values() if _port_busy(port)]
    if busy:
        pytest.fail(f"ports {busy} on 127.0.0.1 are taken: these tests need them free")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "WHALETOP_IMAGE": images[0]}
    for user, port in WEB.items():
        secret = tmp_path / f"{user}-vnc-password"
        secret.write_text(f"{PASSWORD[user]}\n")  # as `echo ... > file` makes it
        secret.chmod(0o600)
        env[f"{user.upper()}_PASSWORD_FILE"] = str(secret)
        env[f"{user.upper()}_WEB_PORT"] = str(port)
    name = f"wt{uuid.uuid4().hex[:8]}"
    deployed = subprocess.run(
        ["docker", "stack", "deploy", "--resolve-image", "never", "-c", str(STACK_FILE),
         name], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert deployed.returncode == 0, deployed.stderr
    # What Swarm cannot do is said, not hidden: only security_opt (the seccomp profile).
    assert "unsupported" not in deployed.stderr.lower(), deployed.stderr
    stk = Stack(name, env)
    try:
        yield stk
    finally:
        docker("stack", "rm", name, check=False)
        label = f"label=com.docker.stack.namespace={name}"
        wait_until(lambda: not docker("ps", "-aq", "--filter", label).stdout.strip(),
                   "the stack's containers removed", timeout=120)
        for user in WEB:
            docker("volume", "rm", f"{name}_{user}-home", check=False)
        assert not docker("volume", "ls", "-q", "--filter", label).stdout.strip()
        assert not docker("secret", "ls", "-q", "--filter", label).stdout.strip()


def test_stack_desktops_restart_roll_and_stop_on_a_swarm(stack: Stack,
                                                         images: tuple[str, str]) -> None:
    # Both HEALTHY, each its own user, port and password (from a secret file).
    for user, port in WEB.items():
        container, doc = stack.healthy(user)
        assert (doc["username"], doc["web_port"]) == (user, port)
        assert [(e["port"], e["programs"]) for e in tcp_listeners(container)] == [
            (port, ["nginx"])], "only the web port listens"
        vnc.WebVNC(port, PASSWORD[user]).close()
        env = docker("inspect", "-f", "{{json .Config.Env}}", container).stdout
        assert "VNC_PASSWORD_FILE=/run/secrets/vnc-password" in env
        assert "VNC_PASSWORD=" not in env, "the password is no variable"
        assert PASSWORD[user] not in env
    with pytest.raises(PermissionError, match="VNC authentication failed"):
        vnc.WebVNC(WEB["bob"], PASSWORD["alice"])

    alice, _ = stack.healthy("alice")
    docker("exec", "-u", "alice", alice, "sh", "-c", "echo kept > /home/alice/kept.txt")
    bob, bob_doc = stack.healthy("bob")

    # Xvnc killed in alice's desktop: UNHEALTHY, exit 3; Swarm gives her a new task.
    waiter = ExitWatch(alice)
    docker("exec", alice, "pkill", "-9", "-x", "Xvnc")
    assert waiter.code() == 3
    new_alice, doc = stack.healthy("alice")
    assert new_alice != alice
    assert docker("exec", new_alice, "cat", "/home/alice/kept.txt").stdout == "kept\n"
    assert stack.containers("bob") == [bob]
    assert _identity(stack.status(bob)) == _identity(bob_doc), "alice's restart touched bob"
    vnc.WebVNC(WEB["alice"], PASSWORD["alice"]).close()

    # A new image: stop the old task (exit 0), then start the new one.
    waiter = ExitWatch(new_alice)
    seen_running: list[list[str]] = []
    docker("service", "update", "--detach", "--no-resolve-image", "--image", images[1],
           stack.service("alice"))

    def rolled() -> bool:
        seen_running.append(stack.containers("alice"))
        tasks = [t for t in stack.tasks("alice") if t["DesiredState"] == "Running"]
        return len(tasks) == 1 and tasks[0]["Image"] == images[1] \
            and tasks[0]["CurrentState"].startswith("Running")
    wait_until(rolled, "alice's task on the second image running", timeout=180)
    assert waiter.code() == 0, "the old desktop stopped cleanly (STOPPED)"
    rolled_alice, doc = stack.healthy("alice")
    assert rolled_alice != new_alice
    assert docker("inspect", "-f", "{{.Image}}", rolled_alice).stdout.strip() == images[1]
    both = next((running for running in seen_running if len(running) > 1), [])
    assert not both, f"two of alice's desktops ran at once: {[c[:12] for c in both]}"
    old_finished = _started_finished(new_alice)[1]
    new_started = _started_finished(rolled_alice)[0]
    assert old_finished <= new_started, "stop-first: the old one stopped before the new began"
    assert docker("exec", rolled_alice, "cat", "/home/alice/kept.txt").stdout == "kept\n"
    assert stack.containers("bob") == [bob], "one desktop at a time: bob was not rolled"
    assert _identity(stack.status(bob)) == _identity(bob_doc)
    update = docker("service", "inspect", "-f", "{{json .UpdateStatus}}",
                    stack.service("alice")).stdout
    wait_until(lambda: json.loads(docker("service", "inspect", "-f", "{{json .UpdateStatus}}",
                                         stack.service("alice")).stdout)["State"]
               == "completed", f"the update completed: {update}", timeout=120)

    # `docker stack rm`: every desktop ends STOPPED, exit 0.
    waiters = {user: ExitWatch(c) for user, c in (("alice", rolled_alice), ("bob", bob))}
    docker("stack", "rm", stack.name)
    codes = {user: w.code() for user, w in waiters.items()}
    assert codes == {"alice": 0, "bob": 0}
