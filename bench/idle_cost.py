"""Where an idle container's CPU goes, per process, and what whaletopd's memory is with
TLS on: the idle group's detail (issue 16, items 1 and 5).

Read on the host, so nothing runs in the container while it idles: the pids in the
container's cgroup, each one's run time summed over its threads (schedstat, ns) and the
CPU of the children it reaped (cutime + cstime, clock ticks).  The cgroup's own counter
holds everything, Docker's HEALTHCHECK execs included (runc puts them in the container's
cgroup, which `healthchecks` counts from Docker's health log); what no process living
at both ends holds is `short-lived`: those execs, and children reaped by nobody here.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.cgroups import CGROUP_ROOT
from bench.containers import BenchError, docker
from bench.log import log
from bench.timeline import parse_time

if TYPE_CHECKING:
    from bench.measure import Bench

PROC = Path("/proc")
SNAPSHOT = Path(__file__).resolve().parent / "in_container" / "snapshot.py"


def _procs_file(cid: str, root: Path = CGROUP_ROOT) -> Path:
    for base in (root / "cpuacct" / "docker" / cid, root / "cpu,cpuacct" / "docker" / cid,
                 root / "system.slice" / f"docker-{cid}.scope", root / "docker" / cid):
        if (base / "cgroup.procs").exists():
            return base / "cgroup.procs"
    raise BenchError(f"no cgroup.procs found for container {cid[:12]}")


def processes(cid: str, proc: Path = PROC) -> dict[str, dict[str, Any]]:
    """pid -> {name, self_s (schedstat, all threads), children_s (reaped, ticks)}."""
    tck = os.sysconf("SC_CLK_TCK")
    out: dict[str, dict[str, Any]] = {}
    for pid in _procs_file(cid).read_text().split():
        with contextlib.suppress(OSError, ValueError):
            stat = (proc / pid / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            argv = (proc / pid / "cmdline").read_bytes().split(b"\0")
            ns = 0
            for task in (proc / pid / "task").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    ns += int((task / "schedstat").read_text().split()[0])
            out[pid] = {"name": _name(stat[stat.index("(") + 1:stat.rindex(")")], argv),
                        "self_s": ns / 1e9,
                        "children_s": (int(fields[13]) + int(fields[14])) / tck}
    return out


def _name(comm: str, argv: list[bytes]) -> str:
    """python3's processes by their program (whaletopd, websockify, the sign-in service)."""
    if comm.startswith("python") and len(argv) > 1:
        args = [a.decode(errors="replace") for a in argv[1:] if a]
        if args[:2] == ["-m", "whaletopd"]:
            return "whaletopd" + (f" {args[2]}" if len(args) > 2 and args[2] != "run" else "")
        return Path(args[0]).name if args else comm
    return comm


def breakdown(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]],
              total_s: float, seconds: float) -> dict[str, float]:
    """CPU-s/min per process name (self + reaped children) over the window, and
    `short-lived`: the cgroup's total less all of them."""
    per_min = 60 / seconds
    rows: dict[str, float] = {}
    for pid, now in after.items():
        was = before.get(pid, {"self_s": 0.0, "children_s": 0.0})
        used = now["self_s"] - was["self_s"] + now["children_s"] - was["children_s"]
        rows[now["name"]] = rows.get(now["name"], 0.0) + used * per_min
    rows = {k: round(v, 5) for k, v in sorted(rows.items(), key=lambda kv: -kv[1]) if v > 0}
    rows["short-lived (HEALTHCHECK execs, ...)"] = round(
        total_s * per_min - sum(rows.values()), 5)
    return rows


def healthchecks(name: str, t0: float, t1: float) -> int:
    """How many of Docker's health checks started between two wall-clock times (Docker
    keeps the last five)."""
    raw = docker("inspect", "-f", "{{json .State.Health}}", name, check=False).stdout
    with contextlib.suppress(ValueError):
        logs = (json.loads(raw) or {}).get("Log") or []
        return sum(1 for e in logs if t0 <= parse_time(e["Start"]) <= t1)
    return 0


def fig_idle_tls(bench: Bench, i: int) -> None:
    """whaletopd's RSS once HEALTHY and settled, with --enable-tls (a self-signed
    certificate made at start): what cryptography's x509 costs it."""
    with bench.container(f"idletls{i}", flags=("--enable-tls",)) as c:
        c.wait_healthy()
        time.sleep(3 if bench.quick else 15)
        snap = json.loads(c.run_script(SNAPSHOT))
        if snap["state"] != "HEALTHY":
            raise BenchError(f"not HEALTHY with TLS: {snap['state']}")
        bench.record("daemon_rss_tls", snap["mem"]["VmRSS"] / 1024)
        bench.results.detail.setdefault("idle_tls", []).append({"rss_kib": snap["mem"]})
        log(f"idle tls {i + 1}/{bench.runs}: RSS {snap['mem']['VmRSS'] / 1024:.1f} MiB")
