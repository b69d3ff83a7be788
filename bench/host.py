"""What a run was measured on: the machine, its Docker, and the checkout's commit."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.containers import docker

ROOT = Path(__file__).resolve().parent.parent


def machine_info() -> dict[str, Any]:
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = docker("info", "--format", "{{.ServerVersion}} {{.CgroupVersion}} {{.Driver}}",
                  check=False).stdout.split()
    return {"cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
            "cpu": cpu, "memory_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(), "docker": info[0] if info else "?",
            "cgroup": info[1] if len(info) > 1 else "?",
            "storage_driver": info[2] if len(info) > 2 else "?",
            "python": platform.python_version()}


def git_commit() -> str:
    """HEAD, marked +dirty when what goes into the image differs from it."""
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                         text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                            "whaletopd", "docker", "Dockerfile"], capture_output=True,
                           text=True, check=False).stdout.strip()
    return (out or "?") + ("+dirty" if dirty else "")
