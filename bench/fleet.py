"""Desktops per host (the `fleet` group): N idle desktops at once, started together.

For N = 1, 2, 4, 8, 16 (--quick: 1, 2): N containers of the image, each with its own web
port (FIRST_PORT + i, 127.0.0.1, host network), are started at the same moment; the runner
notes when each one's status file first says HEALTHY (the figure is the last of them), lets
them settle, then reads each one's cgroup CPU over a window (60 s; --quick 10 s) and its
memory at the end (usage minus inactive file cache, as `docker stats`, and its anonymous
part: what no other desktop shares, unlike the image's files in the page cache).  The
host's MemAvailable before the start minus at the end, divided by N, is kept in the detail
(on a shared host others' work moves it).  Every container is removed after
its N, also on errors and Ctrl-C.  The first N that fails (a desktop not HEALTHY in time,
or too little memory left to try) ends the group; the larger ones are reported as not run.
fleet.png draws the cost against N.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import cgroups
from bench.containers import NAME_PREFIX, POLL, BenchError, docker
from bench.cpu import cpu_busy, host_cpu_times
from bench.figures import FLEET_SIZES, summarize
from bench.log import log
from bench.net import port_listening

if TYPE_CHECKING:
    from bench.measure import Bench

SIZES = FLEET_SIZES
QUICK_SIZES = (1, 2)
FIRST_PORT = 8300
MIB = 2**20
# Before starting N more, the host must have this much available per desktop, plus a
# reserve for everyone else on the machine: a generous bound (a desktop takes ~150 MiB).
NEED_PER_DESKTOP = 400 * MIB
RESERVE = 2 * 2**30


def fleet_keys(n: int) -> tuple[str, str, str, str]:
    return (f"fleet_healthy_{n}", f"fleet_mem_{n}", f"fleet_anon_{n}", f"fleet_cpu_{n}")


def mem_available(text: str | None = None) -> int:
    """Bytes the host can still give (MemAvailable of /proc/meminfo)."""
    for line in (text if text is not None else Path("/proc/meminfo").read_text()).splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise BenchError("no MemAvailable in /proc/meminfo")


def timeout_for(n: int) -> float:
    """How long N desktops started together may take to be HEALTHY (2 cores share them)."""
    return 30.0 + 10.0 * n


@dataclass
class Desktop:
    name: str
    port: int
    state: Path
    proc: subprocess.Popen[str]
    healthy_at: float | None = None
    cid: str = ""

    def word(self) -> str:
        try:
            return (self.state / "status").read_text().strip()
        except FileNotFoundError:
            return ""


@dataclass
class FleetRun:
    """What one N measured (seconds, bytes, CPU-s per minute per desktop)."""

    n: int
    healthy_s: list[float] = field(default_factory=list)  # each desktop, from the start
    mem: list[float] = field(default_factory=list)  # each desktop's cgroup memory, bytes
    anon: list[float] = field(default_factory=list)  # each one's anonymous memory, bytes
    cpu: list[float] = field(default_factory=list)  # each desktop's CPU-s per minute
    host_mem_drop: float = 0.0  # MemAvailable before minus at the end, bytes
    host_busy: float = 0.0  # fraction of all cores busy during the window

    def summary(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "all_healthy_s": round(max(self.healthy_s), 3) if self.healthy_s else None,
            "healthy_s": [round(v, 3) for v in self.healthy_s],
            "mem_mib": {k: round(v / MIB, 1) if isinstance(v, float) else v
                        for k, v in summarize(self.mem).items()},
            "anon_mib": {k: round(v / MIB, 1) if isinstance(v, float) else v
                         for k, v in summarize(self.anon).items()},
            "host_mem_per_desktop_mib": round(self.host_mem_drop / self.n / MIB, 1),
            "cpu_s_per_min": {k: round(v, 4) if isinstance(v, float) else v
                              for k, v in summarize(self.cpu).items()},
            "host_cpu_busy": round(self.host_busy, 3),
        }


def ports_free(ports: Sequence[int]) -> None:
    busy = [p for p in ports if port_listening(p)]
    if busy:
        raise BenchError(f"127.0.0.1 port(s) {busy} in use: the fleet needs ports "
                         f"{ports[0]}..{ports[-1]} free")


@contextlib.contextmanager
def started(image: str, n: int, workdir: Path) -> Iterator[tuple[float, list[Desktop]]]:
    """N desktops launched together (all `docker run -d` at once); all removed after."""
    ports = [FIRST_PORT + i for i in range(n)]
    ports_free(ports)
    tag = uuid.uuid4().hex[:6]
    desktops: list[Desktop] = []
    t0 = time.time()
    try:
        for port in ports:
            state = Path(tempfile.mkdtemp(prefix=f"state-fleet{n}-{port}-", dir=workdir))
            name = f"{NAME_PREFIX}fleet{n}-{port}-{tag}"
            argv = ["docker", "run", "-d", "--name", name, "--network", "host",
                    "-v", f"{state}:/opt/whaletop", image, "/start.py", f"--web-port={port}"]
            desktops.append(Desktop(name, port, state, subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        yield t0, desktops
    finally:
        for d in desktops:
            with contextlib.suppress(subprocess.TimeoutExpired):
                d.proc.wait(timeout=60)
        names = [d.name for d in desktops]
        if names:
            docker("rm", "-f", "-v", *names, check=False, timeout=300)
        for d in desktops:
            shutil.rmtree(d.state, ignore_errors=True)


def wait_all_healthy(t0: float, desktops: Sequence[Desktop], timeout: float) -> None:
    """Each desktop's first HEALTHY, polled in turn; BenchError at the deadline or when a
    `docker run` failed."""
    deadline = time.monotonic() + timeout
    waiting = list(desktops)
    while waiting:
        for d in list(waiting):
            if d.word() == "HEALTHY":
                d.healthy_at = time.time()
                waiting.remove(d)
            elif d.proc.poll() not in (None, 0):
                err = d.proc.stderr.read() if d.proc.stderr else ""
                raise BenchError(f"docker run of {d.name} failed: {err.strip()[-300:]}")
        if waiting and time.monotonic() > deadline:
            words = {d.name: d.word() for d in waiting}
            raise BenchError(f"{len(waiting)} of {len(desktops)} desktops not HEALTHY within "
                             f"{timeout:g} s: {words}")
        time.sleep(POLL)
    for d in desktops:
        d.proc.wait(timeout=60)
        d.cid = docker("inspect", "-f", "{{.Id}}", d.name).stdout.strip()


def measure_n(image: str, n: int, workdir: Path, settle: float, window: float) -> FleetRun:
    run = FleetRun(n)
    before = mem_available()
    with started(image, n, workdir) as (t0, desktops):
        wait_all_healthy(t0, desktops, timeout_for(n))
        run.healthy_s = [d.healthy_at - t0 for d in desktops if d.healthy_at is not None]
        time.sleep(settle)  # the sessions finish starting
        host0 = host_cpu_times()
        cpu0 = [cgroups.cpu_seconds(d.cid) for d in desktops]
        h0 = time.monotonic()
        time.sleep(window)
        cpu1 = [cgroups.cpu_seconds(d.cid) for d in desktops]
        h1 = time.monotonic()
        run.host_busy = cpu_busy(host0, host_cpu_times())
        mems = [cgroups.memory(d.cid) for d in desktops]
        run.mem = [float(m["usage_minus_inactive_file"]) for m in mems]
        run.anon = [float(m["rss"]) for m in mems]
        run.host_mem_drop = float(before - mem_available())
        unhealthy = {d.name: d.word() for d in desktops if d.word() != "HEALTHY"}
        if unhealthy:
            raise BenchError(f"not HEALTHY throughout the idle window: {unhealthy}")
        run.cpu = [(b - a) / (h1 - h0) * 60 for a, b in zip(cpu0, cpu1, strict=True)]
    return run


def measure(runner: Bench) -> None:
    """Every N in turn, until the first that fails; recorded as one value per desktop for
    memory and CPU, one per N for the time until all are HEALTHY and the host's memory."""
    sizes = QUICK_SIZES if runner.quick else SIZES
    settle, window = (3.0, 10.0) if runner.quick else (15.0, 60.0)
    runs: list[dict[str, Any]] = []
    runner.results.detail["fleet"] = {"window_s": window, "settle_s": settle, "runs": runs}
    for n in SIZES:
        if n not in sizes:
            runner.results.skip(fleet_keys(n), f"--quick starts only N = {sizes}")
    for k, n in enumerate(sizes):
        keys = fleet_keys(n)
        available = mem_available()
        if available < RESERVE + n * NEED_PER_DESKTOP:
            reason = (f"not run: {available / 2**30:.1f} GiB available, {n} desktops "
                      f"need about {(RESERVE + n * NEED_PER_DESKTOP) / 2**30:.1f}")
            log(f"fleet {n}: {reason}")
            for m in sizes[k:]:
                runner.results.fail(fleet_keys(m), reason)
            return
        runner.launcher.wait_quiet(f"fleet{n}")
        log(f"fleet {n}: starting {n} desktop(s) together")
        try:
            run = measure_n(runner.image, n, runner.workdir, settle, window)
        except (BenchError, OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
            log(f"fleet {n}: FAILED {exc}")
            runner.results.fail(keys, f"{n} desktops: {exc}")
            for m in sizes[k + 1:]:
                runner.results.fail(fleet_keys(m), f"not run: {n} desktops failed first")
            runs.append({"n": n, "error": str(exc)})
            return
        runner.record(keys[0], max(run.healthy_s))
        for value in run.mem:
            runner.record(keys[1], value / MIB)
        for value in run.anon:
            runner.record(keys[2], value / MIB)
        for value in run.cpu:
            runner.record(keys[3], value)
        s = run.summary()
        runs.append(s)
        log(f"fleet {n}: all HEALTHY after {s['all_healthy_s']:.2f} s; per desktop "
            f"{s['mem_mib']['median']:.1f} MiB (cgroup median), "
            f"{s['anon_mib']['median']:.1f} MiB anonymous, "
            f"{s['host_mem_per_desktop_mib']:.1f} MiB of the host's MemAvailable, "
            f"{s['cpu_s_per_min']['median']:.3f} CPU-s/min; host {s['host_cpu_busy']:.0%} busy")


# -- fleet.png ------------------------------------------------------------------------------

PANELS: tuple[tuple[str, str, float | None, str], ...] = (
    ("time until all N are HEALTHY, s", "all_healthy_s", 5.0, "target: 8 in 5 s"),
    ("memory per desktop, MiB", "mem_mib", 120.0, "target 120"),
    ("idle CPU per desktop, CPU-s/min", "cpu_s_per_min", None, ""),
)
BLUE, ORANGE, GREY, RED = (52, 120, 200), (230, 140, 30), (90, 90, 90), (210, 60, 60)


def _series(runs: Sequence[dict[str, Any]], key: str) -> list[tuple[int, float, float, float]]:
    """(N, median, min, max) of the runs that measured `key`."""
    out = []
    for r in runs:
        v = r.get(key)
        if isinstance(v, dict) and v.get("median") is not None:
            out.append((int(r["n"]), float(v["median"]), float(v["min"]), float(v["max"])))
        elif isinstance(v, (int, float)):
            out.append((int(r["n"]), float(v), float(v), float(v)))
    return out


def draw_fleet(runs: Sequence[dict[str, Any]], subtitle: str, path: Path) -> None:
    """Cost against N, one panel per figure (N on a log-2 axis); the host's memory per
    desktop beside the cgroup's.  ImportError without Pillow."""
    import math

    from PIL import Image, ImageDraw, ImageFont

    def font(size: int) -> Any:
        for name in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf"):
            with contextlib.suppress(OSError):
                return ImageFont.truetype(name, size)
        return ImageFont.load_default(size=size)

    f_title, f_text, f_small = font(22), font(15), font(13)
    width, height, margin = 1500, 520, 20
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((margin, 14), "whaletop: idle desktops per host, cost against N", fill="black",
           font=f_title)
    d.text((margin, 44), subtitle, fill=GREY, font=f_small)
    ns = [int(r["n"]) for r in runs if "error" not in r] or [1]
    n_max = max(2, max(ns))
    pw = (width - 2 * margin) // len(PANELS)
    for p, (title, key, target, target_label) in enumerate(PANELS):
        x0, x1 = margin + p * pw + 60, margin + (p + 1) * pw - 30
        top, bottom = 110, height - 70
        series = _series(runs, key)
        extra = _series(runs, "anon_mib") if key == "mem_mib" else []
        highs = [hi for _, _, _, hi in series + extra] + ([target] if target else [])
        y_max = max([1e-3, *highs]) * 1.15
        d.text((x0 - 50, 78), title, fill="black", font=f_text)

        def xp(n: float, x0: int = x0, x1: int = x1) -> float:
            return x0 + (x1 - x0) * math.log2(n) / math.log2(n_max)

        def yp(v: float, top: int = top, bottom: int = bottom, y_max: float = y_max) -> float:
            return bottom - (bottom - top) * v / y_max

        d.line([(x0, top), (x0, bottom), (x1, bottom)], fill=GREY)
        for i in range(5):
            v = y_max * i / 4
            d.line([(x0 - 4, yp(v)), (x1, yp(v))], fill=(230, 230, 230))
            d.text((x0 - 55, yp(v) - 8), f"{v:.3g}", fill=GREY, font=f_small)
        n = 1
        while n <= n_max:
            d.text((xp(n) - 5, bottom + 6), str(n), fill=GREY, font=f_small)
            n *= 2
        d.text(((x0 + x1) // 2 - 60, bottom + 26), "N desktops at once", fill=GREY,
               font=f_small)
        if target is not None and target < y_max:
            d.line([(x0, yp(target)), (x1, yp(target))], fill=RED, width=1)
            d.text((x1 - 120, yp(target) - 18), target_label, fill=RED, font=f_small)
        for colour, points in ((BLUE, series), (ORANGE, extra)):
            if len(points) > 1:
                d.line([(xp(n), yp(med)) for n, med, _, _ in points], fill=colour, width=2)
            for n, med, lo, hi in points:
                d.line([(xp(n), yp(lo)), (xp(n), yp(hi))], fill=colour, width=1)
                d.ellipse([xp(n) - 4, yp(med) - 4, xp(n) + 4, yp(med) + 4], fill=colour)
        if extra:
            d.text((x0 + 10, top - 12), "● cgroup (docker stats), median, min-max", fill=BLUE,
                   font=f_small)
            d.text((x0 + 10, top + 4), "● anonymous (not shared), median, min-max",
                   fill=ORANGE, font=f_small)
    failed = [r for r in runs if "error" in r]
    if failed:
        d.text((margin, height - 22), f"N = {failed[0]['n']} failed: "
               f"{str(failed[0]['error'])[:160]}", fill=RED, font=f_small)
    img.save(path)
