"""The Docker CLI: the bench's containers, started one at a time on a quiet host, watched
through their mounted state folder, and always removed."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cpu import QUIET_BUSY, cpu_busy, host_cpu_times
from bench.log import log
from bench.net import port_listening

POLL = 0.002  # seconds between two looks at a status file or a port
NAME_PREFIX = "whaletop-bench-"


class BenchError(RuntimeError):
    pass


def docker(*args: str, check: bool = True,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                            check=False)
    if check and result.returncode != 0:
        raise BenchError(f"docker {' '.join(args[:2])} failed ({result.returncode}): "
                         f"{result.stderr.strip()[-500:]}")
    return result


@dataclass
class Running:
    name: str
    state: Path
    t_run: float
    proc: subprocess.Popen[str]

    def word(self) -> str:
        try:
            return (self.state / "status").read_text().strip()
        except FileNotFoundError:
            return ""

    def detail(self) -> dict[str, Any]:
        for _ in range(50):  # replaced atomically, but be patient with a missing file
            try:
                doc: dict[str, Any] = json.loads((self.state / "status.json").read_text())
                return doc
            except (FileNotFoundError, ValueError):
                time.sleep(POLL)
        return {}

    def logs(self) -> str:
        return docker("logs", self.name, check=False).stdout

    def inspect(self, fmt: str) -> str:
        return docker("inspect", "-f", fmt, self.name).stdout.strip()

    def check_alive(self) -> None:
        """Fail fast when docker run failed or the container ended."""
        if self.proc.poll() not in (None, 0):
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise BenchError(f"docker run failed: {err.strip()[-500:]}")

    def wait(self, what: str, ready: Callable[[], bool], timeout: float = 30.0) -> float:
        """Poll `ready` every POLL seconds; the wall time it first held."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return time.time()
            self.check_alive()
            time.sleep(POLL)
        tail = "\n".join(self.logs().splitlines()[-5:])
        raise BenchError(f"{self.name}: {what} not within {timeout} s "
                         f"(status {self.word()!r}); last log lines:\n{tail}")

    def wait_healthy(self, timeout: float = 30.0) -> float:
        t = self.wait("HEALTHY", lambda: self.word() == "HEALTHY", timeout)
        self.proc.wait(timeout=30)
        return t

    def script_argv(self, script: Path, *args: str, stdin: bool = False) -> list[str]:
        """`docker exec` of one of the package's in-container scripts with the image's
        python3.  Its source goes on the command line: no mount added to the measured
        containers, and the image's python3 needs nothing from the checkout.  `stdin`:
        the runner talks to it (docker exec -i)."""
        return ["docker", "exec", *(["-i"] if stdin else []), self.name, "python3", "-c",
                script.read_text(), *args]

    def run_script(self, script: Path, *args: str, timeout: float = 180,
                   check: bool = True) -> str:
        """The script's stdout."""
        return docker(*self.script_argv(script, *args)[1:], timeout=timeout,
                      check=check).stdout


class Launcher:
    """Starts the bench's containers, one at a time, each once the shared host is quiet."""

    def __init__(self, image: str, web_port: int, workdir: Path,
                 quiet_wait: float = 0.0) -> None:
        self.image = image
        self.web_port = web_port
        self.workdir = workdir
        self.quiet_wait = quiet_wait
        self.live: set[str] = set()
        self.host: list[dict[str, Any]] = []  # how busy the host was before each container
        self.quiet = True  # whether the host was quiet when the current container started

    def port_free(self) -> None:
        """The web port is the desktop's only TCP listener (nginx; Xvnc and websockify
        are on UNIX sockets inside the container)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not port_listening(self.web_port):
                return
            time.sleep(0.2)
        raise BenchError(f"127.0.0.1 port {self.web_port} is in use: another desktop runs "
                         "there; choose another with --web-port")

    def wait_quiet(self, tag: str) -> None:
        """Other people's builds and desktops share these cores: wait (at most quiet_wait
        seconds) until the host has been nearly idle for two seconds, and note whether it was."""
        t0 = time.monotonic()
        calm, busy = 0, 0.0
        while self.quiet_wait > 0:
            before = host_cpu_times()
            time.sleep(1.0)
            busy = cpu_busy(before, host_cpu_times())
            calm = calm + 1 if busy < QUIET_BUSY else 0
            if calm >= 2 or time.monotonic() - t0 > self.quiet_wait:
                break
        others = [n for n in docker("ps", "--format", "{{.Names}}", check=False).stdout.split()
                  if not n.startswith(NAME_PREFIX)]
        self.quiet = calm >= 2 or self.quiet_wait <= 0
        self.host.append({"container": tag, "host_cpu_busy": round(busy, 3),
                          "quiet": self.quiet, "waited_s": round(time.monotonic() - t0, 1),
                          "other_containers": len(others)})
        if not self.quiet:
            log(f"host still busy ({busy:.0%} of all cores) after {self.quiet_wait:.0f} s: "
                "measuring anyway")

    @contextlib.contextmanager
    def container(self, tag: str, flags: Sequence[str] = (),
                  volumes: Sequence[str] = ()) -> Iterator[Running]:
        if self.live:
            raise BenchError(f"a bench container still runs: {sorted(self.live)}")
        self.port_free()
        self.wait_quiet(tag)
        state = Path(tempfile.mkdtemp(prefix=f"state-{tag}-", dir=self.workdir))
        name = f"{NAME_PREFIX}{tag}-{uuid.uuid4().hex[:6]}"
        argv = ["docker", "run", "-d", "--name", name, "--network", "host",
                "-v", f"{state}:/opt/whaletop"]
        for vol in volumes:
            argv += ["-v", vol]
        argv += [self.image, "/start.py", f"--web-port={self.web_port}", *flags]
        self.live.add(name)
        t_run = time.time()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            yield Running(name, state, t_run, proc)
        finally:
            proc.wait(timeout=60)
            docker("rm", "-f", "-v", name, check=False)
            self.live.discard(name)
            shutil.rmtree(state, ignore_errors=True)

    def cleanup(self) -> None:
        for name in list(self.live):
            docker("rm", "-f", "-v", name, check=False)
            self.live.discard(name)
