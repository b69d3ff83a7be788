"""e2e harness: real containers of the real image, host network, 127.0.0.1 only.

The state directory /opt/whaletop is bind-mounted to a host folder, as the README
suggests users do, so tests read the status file the way a user's script would.

Only nginx listens on TCP (the web port); Xvnc listens on a UNIX socket inside the
container.  A raw VNC client reaches it through a small TCP bridge the tests start in the
container (vnc_bridge): on 127.0.0.1, which is the host's own with host networking.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("WHALETOP_IMAGE", "whaletop:test")
WEB = "http://127.0.0.1:8080"
STATUS_WORDS = {"STARTING", "STARTED", "HEALTHY", "IDLE", "UNHEALTHY", "STOPPING", "STOPPED",
                "FAILED"}
VNC_SOCKET = "/run/whaletop/desktop/vnc.sock"

# A TCP -> UNIX socket bridge, run inside the container (python3 is in the image): it
# listens on 127.0.0.1 on a port the kernel picks, writes that port to a file, and
# pipes each connection to Xvnc's socket.  It runs as root (docker exec's default),
# which may open the desktop user's 0600 socket.
BRIDGE = r"""
import os, socket, sys, threading
target, port_file = sys.argv[1], sys.argv[2]
server = socket.create_server(("127.0.0.1", 0))
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.getsockname()[1]))
os.replace(port_file + ".tmp", port_file)

def pipe(src, dst):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

while True:
    client, _ = server.accept()
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(target)
    except OSError:
        client.close()
        upstream.close()
        continue
    for a, b in ((client, upstream), (upstream, client)):
        threading.Thread(target=pipe, args=(a, b), daemon=True).start()
"""

# The TCP sockets in LISTEN state that the container's own processes hold.  With host
# networking /proc/net/tcp{,6} lists the host's listeners too, so a socket counts only
# when its inode is an open file of a process in the container (/proc/PID/fd).  Root in
# a container (no CAP_SYS_PTRACE) cannot read another account's fds: the script says
# whose it could not read, and runs again as each of those accounts (uid and gid: the
# kernel lets only the same pair read them).
LISTENERS = r"""
import json, os, socket
sockets, unreadable = {}, {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        comm = open(f"/proc/{pid}/comm").read().strip()
        st = os.stat(f"/proc/{pid}")
        uid = f"{st.st_uid}:{st.st_gid}"
        links = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except (FileNotFoundError, ProcessLookupError):
                pass  # closed meanwhile
    except (FileNotFoundError, ProcessLookupError):
        continue  # gone meanwhile (the session starts and ends short-lived programs)
    except PermissionError:
        unreadable[pid] = uid
        continue
    for link in links:
        if link.startswith("socket:["):
            sockets.setdefault(link[8:-1], []).append([int(pid), comm])

def address(hexaddr):
    raw = bytes.fromhex(hexaddr)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words)

listening = []
for table in ("tcp", "tcp6"):
    with open(f"/proc/net/{table}") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                host, port = fields[1].rsplit(":", 1)
                listening.append({"inode": fields[9], "address": address(host),
                                  "port": int(port, 16)})
print(json.dumps({"sockets": sockets, "unreadable": unreadable, "listening": listening}))
"""


def docker(*args: str, check: bool = True,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check,
                          timeout=timeout)


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 20) -> None:
    """Poll what a user would look at until it holds; fail with `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"never: {what}")


def vnc_bridge(container: str, timeout: float = 20) -> int:
    """Start a TCP bridge to Xvnc's UNIX socket in `container`; its port on 127.0.0.1."""
    port_file = f"/tmp/whaletop-test-vnc-bridge-{uuid.uuid4().hex[:8]}"
    docker("exec", "-d", container, "python3", "-c", BRIDGE, VNC_SOCKET, port_file)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = docker("exec", container, "cat", port_file, check=False).stdout.strip()
        if out.isdigit():
            return int(out)
        time.sleep(0.05)
    raise AssertionError(f"the VNC bridge in {container} never listened")


def tcp_listeners(container: str) -> list[dict[str, Any]]:
    """The container's processes' listening TCP sockets: address, port, programs (the
    names of the processes that hold it) and pids (theirs, in the container)."""
    def scan(user: str) -> dict[str, Any]:
        out = docker("exec", "-u", user, container, "python3", "-c", LISTENERS, check=False)
        assert out.returncode == 0, out.stderr
        found: dict[str, Any] = json.loads(out.stdout)
        return found

    first = scan("0")
    sockets: dict[str, list[list[Any]]] = dict(first["sockets"])
    unread = dict(first["unreadable"])
    for account in sorted(set(first["unreadable"].values())):
        again = scan(account)
        for inode, comms in again["sockets"].items():
            sockets.setdefault(inode, []).extend(comms)
        unread = {pid: u for pid, u in unread.items() if pid in again["unreadable"]}
    assert not unread, f"processes whose sockets nobody could read: {unread}"
    return [{"address": entry["address"], "port": entry["port"],
             "programs": sorted({comm for _, comm in sockets[entry["inode"]]}),
             "pids": sorted({pid for pid, _ in sockets[entry["inode"]]})}
            for entry in first["listening"] if entry["inode"] in sockets]


@pytest.fixture(scope="session")
def image() -> str:
    if docker("image", "inspect", IMAGE, check=False).returncode != 0:
        subprocess.run(["bash", str(ROOT / "scripts" / "build"), IMAGE], check=True)
    return IMAGE


@dataclass
class Container:
    name: str
    state_dir: Path
    started: float = field(default_factory=time.monotonic)
    _bridge: tuple[str, int] | None = None  # (the container's StartedAt, the bridge's port)

    # -- what a user reads -----------------------------------------------------------
    def status(self) -> str:
        try:
            return (self.state_dir / "status").read_text()
        except FileNotFoundError:
            return ""

    def status_json(self) -> dict[str, Any]:
        detail: dict[str, Any] = json.loads((self.state_dir / "status.json").read_text())
        return detail

    def wait_status(self, word: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status() == word + "\n":
                return
            if not self.running() and self.status() != word + "\n":
                break
            time.sleep(0.02)
        raise AssertionError(
            f"status never became {word}: {self.status()!r}\n{self.logs()[-3000:]}")

    def logs(self) -> str:
        return docker("logs", self.name, check=False).stdout

    def log_lines(self) -> list[dict[str, Any]]:
        """Every stdout line as JSON: fails the test on the first line that is not."""
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"stdout line is not JSON: {line!r}") from None
        return out

    def transitions(self) -> list[str]:
        return [e["dest"] for e in self.log_lines()
                if e.get("event") == "transition" and e["source"] != e["dest"]]

    def running(self) -> bool:
        out = docker("inspect", "-f", "{{.State.Running}}", self.name, check=False).stdout
        return out.strip() == "true"

    def wait_exit(self, timeout: float = 60) -> int:
        out = docker("wait", self.name, timeout=timeout).stdout
        return int(out.strip())

    def exec(self, *cmd: str, user: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        opts = ["-u", user] if user else []
        return docker("exec", *opts, self.name, *cmd, check=check)

    def password(self) -> str:
        return (self.state_dir / "vnc_passwd").read_text().strip()

    def vnc_port(self) -> int:
        """A port on 127.0.0.1 that reaches the real Xvnc (through its UNIX socket).
        One bridge per run of the container: a restart ends it, and a new one starts."""
        started = docker("inspect", "-f", "{{.State.StartedAt}}", self.name).stdout.strip()
        if self._bridge is None or self._bridge[0] != started:
            self._bridge = (started, vnc_bridge(self.name))
        return self._bridge[1]

    def listeners(self) -> list[dict[str, Any]]:
        return tcp_listeners(self.name)


@pytest.fixture
def desktop(image: str, tmp_path: Path) -> Iterator[Any]:
    """Factory: desktop(*start_args, env={...}, volumes=[...]) -> a started Container."""
    made: list[Container] = []

    def start(*args: str, env: dict[str, str] | None = None,
              volumes: tuple[str, ...] = (), extra: tuple[str, ...] = (),
              image: str = image) -> Container:
        state = tmp_path / f"state{len(made)}"
        state.mkdir()
        state.chmod(0o1777)  # as the image's: any --user writes it; as root, 0755 again
        name = f"whaletop-test-{uuid.uuid4().hex[:8]}"
        cmd = ["run", "-d", "--name", name, "--network", "host", "--shm-size", "256m",
               "-v", f"{state}:/opt/whaletop", *extra]
        for key, value in (env or {}).items():
            cmd += ["-e", f"{key}={value}"]
        for vol in volumes:
            cmd += ["-v", vol]
        cmd.append(image)
        if args:
            cmd += ["/start.py", *args]
        container = Container(name=name, state_dir=state)
        docker(*cmd)
        made.append(container)
        return container

    yield start
    for container in made:
        docker("rm", "-f", container.name, check=False)
        # Files the container wrote as root or as the desktop user.
        shutil.rmtree(container.state_dir, ignore_errors=True)
