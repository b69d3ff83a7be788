"""whaletopd's CPU and memory so far, from /proc (pid from status.json).

Two snapshots a window apart give the idle figures (bench.cpu.idle_figures).  Prints
{"t", "pid", "tck", "cpu_s", "threads_ns", "mem", "state", "since"}.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

STATE = Path("/opt/whaletop")
PROC = Path("/proc")
MEM_FIELDS = ("VmRSS:", "RssAnon:", "RssFile:", "Threads:")


def snapshot(state: Path = STATE, proc: Path = PROC) -> dict[str, Any]:
    doc = json.loads((state / "status.json").read_text())
    pid = int(doc["pid"])
    tck = os.sysconf("SC_CLK_TCK")
    stat = (proc / str(pid) / "stat").read_text()
    # the command name may hold spaces and parentheses: fields start after the last ')'
    fields = stat[stat.rindex(")") + 2:].split()
    threads: dict[str, int] = {}
    for task in (proc / str(pid) / "task").glob("*"):
        with contextlib.suppress(OSError, ValueError):  # a thread that just ended
            threads[task.name] = int((task / "schedstat").read_text().split()[0])
    mem: dict[str, int] = {}
    for line in (proc / str(pid) / "status").read_text().splitlines():
        if line.startswith(MEM_FIELDS):
            mem[line.split(":")[0]] = int(line.split()[1])
    return {"t": time.time(), "pid": pid, "tck": tck,
            "cpu_s": (int(fields[11]) + int(fields[12])) / tck,  # utime + stime
            "threads_ns": threads, "mem": mem,
            "state": doc["state"], "since": doc["since"]}


if __name__ == "__main__":
    print(json.dumps(snapshot()), flush=True)
