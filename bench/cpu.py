"""CPU time arithmetic: the daemon's idle figures from two in-container snapshots, and how
busy the shared host is from /proc/stat."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.figures import summarize

QUIET_BUSY = 0.15  # a host busier than this (fraction of all cores) is not quiet


def idle_figures(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """whaletopd's CPU between two snapshots (in_container/snapshot.py), per minute:
    utime+stime from /proc/PID/stat (clock ticks, what `ps` and `top` use) and the sum of
    its threads' schedstat run times (nanoseconds; threads that ended in between are lost)."""
    seconds = after["t"] - before["t"]
    if seconds <= 0:
        raise ValueError("the second snapshot is not later than the first")
    sched_ns = sum(ns - before["threads_ns"].get(tid, 0)
                   for tid, ns in after["threads_ns"].items())
    busiest = sorted(((ns - before["threads_ns"].get(tid, 0)) / 1e6, tid)
                     for tid, ns in after["threads_ns"].items())[::-1][:4]
    return {"window_s": round(seconds, 2),
            "cpu_s_per_min": (after["cpu_s"] - before["cpu_s"]) / seconds * 60,
            "schedstat_cpu_s_per_min": sched_ns / 1e9 / seconds * 60,
            "clock_ticks_per_s": after["tck"],
            "busiest_threads_ms": {tid: round(ms, 2) for ms, tid in busiest}}


def idle_note(idle: Sequence[dict[str, Any]]) -> str:
    """The precise companion of the clock-tick figure, for the idle CPU row's note."""
    values = [float(run["schedstat_cpu_s_per_min"]) for run in idle]
    if not values:
        return ""
    s = summarize(values)
    return (f"sum of the daemon's threads' schedstat run time (ns): median {s['median']:.4f} "
            f"({s['min']:.4f}-{s['max']:.4f}) CPU-s/min; utime+stime counts 10 ms clock "
            "ticks, so it moves in steps of 0.01 CPU-s per window")


def host_cpu_times(text: str | None = None) -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs from /proc/stat's first line.  Time waiting for
    I/O does not count as idle: the daemon fsyncs its status files, so a disk busy with
    someone else's writes slows it down as surely as a busy CPU."""
    line = (text if text is not None else Path("/proc/stat").read_text()).split("\n", 1)[0]
    values = [int(v) for v in line.split()[1:9]]  # user nice system idle iowait irq softirq steal
    return values[3], sum(values)


def cpu_busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Fraction of all cores busy between two host_cpu_times() readings."""
    total = after[1] - before[1]
    return 0.0 if total <= 0 else 1.0 - (after[0] - before[0]) / total
