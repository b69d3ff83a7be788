"""e2e harness: real containers of the real image, host network, 127.0.0.1 only.

The state directory /opt/whaletop is bind-mounted to a host folder, as the README
suggests users do, so tests read the status file the way a user's script would.
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
STATUS_WORDS = {"STARTING", "STARTED", "HEALTHY", "UNHEALTHY", "STOPPING", "STOPPED", "FAILED"}


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


@pytest.fixture
def desktop(image: str, tmp_path: Path) -> Iterator[Any]:
    """Factory: desktop(*start_args, env={...}, volumes=[...]) -> a started Container."""
    made: list[Container] = []

    def start(*args: str, env: dict[str, str] | None = None,
              volumes: tuple[str, ...] = (), extra: tuple[str, ...] = (),
              image: str = image) -> Container:
        state = tmp_path / f"state{len(made)}"
        state.mkdir()
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
