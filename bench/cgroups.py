"""A container's CPU and memory as its cgroup counts them (v1 and v2 layouts), read on the
host so that nothing runs in the container while it idles."""

from __future__ import annotations

from pathlib import Path

from bench.containers import BenchError

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _stat(path: Path) -> dict[str, str]:
    return dict(line.split() for line in path.read_text().splitlines())


def cpu_seconds(cid: str, root: Path = CGROUP_ROOT) -> float:
    """CPU seconds the whole container used so far (cgroup v1 cpuacct or v2 cpu.stat)."""
    for base in (root / "cpuacct" / "docker", root / "cpu,cpuacct" / "docker"):
        usage = base / cid / "cpuacct.usage"
        if usage.exists():
            return int(usage.read_text()) / 1e9
    for base in (root / "system.slice" / f"docker-{cid}.scope", root / "docker" / cid):
        if (base / "cpu.stat").exists():
            return int(_stat(base / "cpu.stat")["usage_usec"]) / 1e6
    raise BenchError(f"no cpu cgroup found for container {cid[:12]}")


def memory(cid: str, root: Path = CGROUP_ROOT) -> dict[str, int]:
    """Bytes: usage, usage minus inactive file cache (what `docker stats` shows), anonymous
    memory and page cache; cgroup v1 (memory.usage_in_bytes) or v2 (memory.current)."""
    for base in (root / "memory" / "docker" / cid,
                 root / "memory" / "system.slice" / f"docker-{cid}.scope",
                 root / "system.slice" / f"docker-{cid}.scope",
                 root / "docker" / cid):
        usage_file = next((base / n for n in ("memory.usage_in_bytes", "memory.current")
                           if (base / n).exists()), None)
        if usage_file is None:
            continue
        stat = _stat(base / "memory.stat")
        usage = int(usage_file.read_text())
        inactive = int(stat.get("total_inactive_file", stat.get("inactive_file", 0)))
        return {"usage": usage, "usage_minus_inactive_file": usage - inactive,
                "rss": int(stat.get("total_rss", stat.get("anon", 0))),
                "cache": int(stat.get("total_cache", stat.get("file", 0)))}
    raise BenchError(f"no memory cgroup found for container {cid[:12]}")
