#!/usr/bin/env python3
"""whaletop benchmarks: how fast and how light the desktop is, measured on real containers.

    python bench/run.py            # full: 5 runs of each figure, writes bench/results.*
    python bench/run.py --quick    # each figure once, shorter idle window, writes to a temp dir

Every container is `docker run -d --network host -v STATE:/opt/whaletop IMAGE /start.py
--web-port=8280 --vnc-port=5921 ...`, named whaletop-bench-*, run one at a time and removed
afterwards; the runner talks only to 127.0.0.1.  It needs the Docker CLI and root (the
containers write root- and uid-1000-owned files into the mounted folders), the standard
library, and Pillow for the timeline picture (skipped with a warning without it).

Benchmarks are not tests: the exit status says whether every figure could be measured,
never whether a target was met.  The pure parts (statistics, log parsing, rendering) are
tested in tests/unit/test_bench.py.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOST = "127.0.0.1"  # the only address the runner ever talks to
POLL = 0.002  # seconds between two looks at a status file or a port
NAME_PREFIX = "whaletop-bench-"
QUIET_BUSY = 0.15  # a host busier than this (fraction of all cores) is not quiet
USER_HOME = "/home/user"

# -- the figures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    target: float | None  # every target is an upper bound; None: reported only
    digits: int
    condition: str = ""  # an extra requirement shown with the target (exit code)
    original: str = ""  # the original project's figure, for context


FIGURES: list[Figure] = [
    Figure("start_healthy", "docker run → status HEALTHY", "s", 0.8, 3, original="3.6 s"),
    Figure("start_http", "docker run → noVNC page served (HTTP 200)", "s", 0.8, 3),
    Figure("start_https", "docker run → noVNC page served over TLS (self-signed generated)",
           "s", 0.9, 3, original="5-10 s"),
    Figure("start_healthy_tls", "docker run → status HEALTHY with TLS", "s", None, 3),
    Figure("kill_leaves_healthy", "kill -9 Xvnc → status leaves HEALTHY", "s", 0.05, 3),
    Figure("kill_exited", "kill -9 Xvnc → container exited", "s", 0.5, 3,
           condition="exit ≠ 0"),
    Figure("stop", "docker stop of a HEALTHY desktop", "s", 1.0, 3, condition="exit 0",
           original="10 s, SIGKILL"),
    Figure("restart_healthy", "docker restart → HEALTHY again", "s", 1.5, 3),
    Figure("idle_cpu", "whaletopd CPU while idle and HEALTHY", "CPU-s/min", 0.02, 4,
           original="0.04-0.06"),
    Figure("daemon_rss", "whaletopd RSS (idle)", "MiB", 25.0, 1, original="25.3 MB"),
    Figure("container_mem", "container memory when idle (cgroup, as docker stats)", "MiB",
           None, 1),
    Figure("container_cpu", "container CPU while idle (cgroup; HEALTHCHECK included)",
           "CPU-s/min", None, 3),
    Figure("image_size", "image size (with Chromium)", "MB", 1000.0, 0, original="1882 MB"),
    Figure("apps_copied", ".desktop written under /Apps → in /usr/share/applications", "s",
           None, 3),
    Figure("apps_menu", ".desktop written under /Apps → menu entry (LXDE menu cache)", "s",
           0.3, 3),
    Figure("cert_served", "new certificate written → served", "s", 1.0, 3),
    Figure("cert_healthy", "new certificate written → HEALTHY again", "s", None, 3),
    Figure("home_empty", "docker run → HEALTHY, empty mounted home", "s", None, 3),
    Figure("home_big", "docker run → HEALTHY, 100,000-file mounted home", "s", None, 3),
    Figure("home_ratio", "start with a 100,000-file home ÷ with an empty one", "ratio", 1.1, 3),
]
BY_KEY = {f.key: f for f in FIGURES}

# Groups of figures measured together, in the order they run (--only takes these names).
GROUPS: dict[str, list[str]] = {
    "image": ["image_size"],
    "start": ["start_healthy", "restart_healthy", "stop"],
    "http": ["start_http"],
    "tls": ["start_https", "start_healthy_tls"],
    "kill": ["kill_leaves_healthy", "kill_exited"],
    "apps": ["apps_copied", "apps_menu"],
    "cert": ["cert_served", "cert_healthy"],
    "home": ["home_empty", "home_big", "home_ratio"],
    "idle": ["idle_cpu", "daemon_rss", "container_mem", "container_cpu"],
}

# -- pure parts: statistics, timestamps, logs, timeline, rendering ---------------------------


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and count of the runs; None for each when there is none."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def verdict(fig: Figure, median: float | None, conditions_ok: bool = True,
            error: str | None = None) -> str:
    """'yes' / 'no' against the target (judged on the median), '—' without one."""
    if error:
        return "error"
    if median is None:
        return "—" if fig.target is None else "no data"
    if fig.target is None:
        return "—"
    return "yes" if median <= fig.target and conditions_ok else "no"


_ISO = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$")


def parse_time(text: str) -> float:
    """RFC 3339 (docker's nanoseconds, structlog's microseconds) -> seconds since the epoch."""
    m = _ISO.match(text.strip())
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    base = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
    zone = m.group(3) or "Z"
    offset = 0
    if zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        hh, mm = zone[1:3], zone[-2:]
        offset = sign * (int(hh) * 3600 + int(mm) * 60)
    frac = float("0." + m.group(2)) if m.group(2) else 0.0
    return base.replace(tzinfo=UTC).timestamp() - offset + frac


def parse_log(text: str) -> list[dict[str, Any]]:
    """whaletopd's stdout: one JSON object a line; anything else is skipped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


@dataclass
class Span:
    label: str
    start_ms: float
    end_ms: float
    kind: str  # docker, python, provision, launch, child, probe, host

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms


@dataclass
class Timeline:
    spans: list[Span] = field(default_factory=list)
    markers: list[tuple[str, float]] = field(default_factory=list)  # status word written
    total_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"total_ms": round(self.total_ms, 1),
                "spans": [{**asdict(s), "start_ms": round(s.start_ms, 1),
                           "end_ms": round(s.end_ms, 1)} for s in self.spans],
                "markers": [[word, round(ms, 1)] for word, ms in self.markers]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Timeline:
        return cls(spans=[Span(**s) for s in doc.get("spans", [])],
                   markers=[(w, float(ms)) for w, ms in doc.get("markers", [])],
                   total_ms=float(doc.get("total_ms", 0.0)))


def _ts(event: dict[str, Any]) -> float | None:
    try:
        return parse_time(str(event["timestamp"]))
    except (KeyError, ValueError):
        return None


def daemon_t0(events: Sequence[dict[str, Any]]) -> float | None:
    """When whaletopd's machine was created: a transition's timestamp minus its elapsed_ms."""
    for ev in events:
        if ev.get("event") == "transition" and "elapsed_ms" in ev:
            ts = _ts(ev)
            if ts is not None:
                return ts - float(ev["elapsed_ms"]) / 1000
    return None


def _first_output(events: Sequence[dict[str, Any]], source: str, needle: str,
                  after: float) -> float | None:
    for ev in events:
        if (ev.get("source") == source and ev.get("event") != "transition"
                and needle in str(ev.get("event", ""))):
            ts = _ts(ev)
            if ts is not None and ts >= after:
                return ts
    return None


def build_timeline(events: Sequence[dict[str, Any]], t_run: float,
                   t_created: float | None = None, t_started: float | None = None,
                   t_seen: float | None = None, until: str = "HEALTHY") -> Timeline:
    """Where the time from `docker run` to the status word `until` goes.

    Times are wall-clock seconds (host and container share the clock): t_run when the
    runner invoked docker run, t_created/t_started from docker inspect, t_seen when the
    runner read the word in the mounted status file.  Steps come from whaletopd's `step`
    events (timestamp at the end, duration_ms), the children's readiness from their own
    output lines, status words from `transition` events."""
    def ms(t: float) -> float:
        return (t - t_run) * 1000

    tl = Timeline()
    transitions = [e for e in events if e.get("event") == "transition"]
    end = next((_ts(e) for e in transitions if e.get("dest") == until
                and e.get("source") != until), None)
    limit = end if end is not None else float("inf")
    t0 = daemon_t0(events)
    if t_created is not None:
        tl.spans.append(Span("docker: create the container", 0.0, ms(t_created), "docker"))
    if t_started is not None:
        tl.spans.append(Span("docker: start it (runc, mounts)",
                             ms(t_created) if t_created is not None else 0.0,
                             ms(t_started), "docker"))
    if t0 is not None:
        tl.spans.append(Span("python3 start-up, whaletopd imports",
                             ms(t_started) if t_started is not None else 0.0, ms(t0), "python"))
    starts: dict[str, float] = {}
    for ev in events:
        if ev.get("event") != "step" or "duration_ms" not in ev:
            continue
        ts = _ts(ev)
        if ts is None or ts > limit:
            continue
        name = str(ev.get("step"))
        begin = ts - float(ev["duration_ms"]) / 1000
        starts.setdefault(name, begin)
        kind = "launch" if name.startswith("launch_") else "provision"
        tl.spans.append(Span(f"step {name}", ms(begin), ms(ts), kind))
    if "launch_xvnc" in starts:
        ready = (_first_output(events, "xvnc", "Listening for VNC connections",
                               starts["launch_xvnc"]) or starts.get("launch_session"))
        if ready is not None:
            tl.spans.append(Span("Xvnc: spawned → listening", ms(starts["launch_xvnc"]),
                                 ms(ready), "child"))
    if "launch_websockify" in starts:
        ready = _first_output(events, "websockify", "proxying from",
                              starts["launch_websockify"])
        if ready is not None:
            tl.spans.append(Span("websockify: spawned → listening",
                                 ms(starts["launch_websockify"]), ms(ready), "child"))
    started = next((_ts(e) for e in transitions if e.get("dest") == "STARTED"), None)
    if started is not None and end is not None:
        tl.spans.append(Span("health probes until all pass", ms(started), ms(end), "probe"))
    if end is not None and t_seen is not None:
        tl.spans.append(Span(f"status files written (fsync), {until} read by the runner",
                             ms(end), ms(t_seen), "host"))
    for ev in transitions:
        ts = _ts(ev)
        if ts is not None and ts <= limit and ev.get("source") != ev.get("dest"):
            tl.markers.append((str(ev.get("dest")), ms(ts)))
    tl.spans.sort(key=lambda s: (s.start_ms, s.end_ms))
    tl.total_ms = ms(t_seen) if t_seen is not None else (ms(end) if end is not None else 0.0)
    return tl


def step_durations(events: Sequence[dict[str, Any]]) -> dict[str, float]:
    """duration_ms of each provisioning/launch step before the first HEALTHY."""
    out: dict[str, float] = {}
    for ev in events:
        if ev.get("event") == "transition" and ev.get("dest") == "HEALTHY":
            break
        if ev.get("event") == "step" and "duration_ms" in ev:
            out.setdefault(str(ev.get("step")), float(ev["duration_ms"]))
    return out


def idle_figures(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """whaletopd's CPU between two in-container snapshots (see SNAPSHOT), per minute:
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


def format_value(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def format_target(fig: Figure) -> str:
    if fig.target is None:
        return "report"
    text = f"≤ {fig.target:g}" + ("" if fig.unit == "ratio" else f" {fig.unit}")
    return text + (f", {fig.condition}" if fig.condition else "")


def table_rows(doc: dict[str, Any]) -> list[list[str]]:
    rows = []
    for entry in doc["figures"]:
        fig = BY_KEY[entry["key"]]
        unit = "" if fig.unit == "ratio" else f" {fig.unit}"
        rows.append([
            fig.label,
            format_value(entry["median"], fig.digits) + (unit if entry["median"] is not None
                                                         else ""),
            format_value(entry["min"], fig.digits),
            format_value(entry["max"], fig.digits),
            format_target(fig),
            entry["met"],
        ])
    return rows


HEADER = ["figure", "median", "min", "max", "target", "met?"]


def machine_line(machine: dict[str, Any]) -> str:
    return (f"{machine.get('cores')} cores ({machine.get('cpu')}), "
            f"{machine.get('memory_gib')} GiB memory, Linux {machine.get('kernel')}, "
            f"Docker {machine.get('docker')}, cgroup v{machine.get('cgroup')}")


def render_markdown(doc: dict[str, Any]) -> str:
    """bench/results.md: the table the README includes, and what it was measured on."""
    mode = doc.get("mode", "full")
    lines = [
        "<!-- generated by bench/run.py from results.json; do not edit -->",
        f"Measured {doc.get('date', '?')} on {machine_line(doc.get('machine', {}))}; "
        f"image `{doc.get('image', {}).get('tag', '?')}` "
        f"({doc.get('image', {}).get('id', '?')[:19]}), commit "
        f"`{str(doc.get('commit', '?'))[:12]}`. {mode.capitalize()} mode: median, min and max "
        f"of {doc.get('runs', '?')} run(s) each; a target is met when the median is within it.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(["---", "--:", "--:", "--:", "---", ":-:"]) + "|",
    ]
    for row in table_rows(doc):
        cells = [c.replace("|", "\\|") for c in row]
        if cells[5] == "no":
            cells[5] = "**no**"
        lines.append("| " + " | ".join(cells) + " |")
    notes = [(BY_KEY[e["key"]].label, e["note"]) for e in doc["figures"] if e.get("note")]
    notes += [(BY_KEY[e["key"]].label, "error: " + e["error"]) for e in doc["figures"]
              if e.get("error")]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- {label}: {note}" for label, note in notes]
    return "\n".join(lines) + "\n"


def render_table(doc: dict[str, Any]) -> str:
    """The same table for a terminal."""
    rows = [HEADER, *table_rows(doc)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    out = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:4], widths[1:4], strict=True)]
        cells += [row[4].ljust(widths[4]), row[5]]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def render_timeline_text(tl: Timeline) -> str:
    lines = [f"{'start ms':>9} {'end ms':>9} {'took ms':>8}  what"]
    for s in tl.spans:
        lines.append(f"{s.start_ms:9.1f} {s.end_ms:9.1f} {s.duration_ms:8.1f}  {s.label}")
    for word, at in tl.markers:
        lines.append(f"{at:9.1f} {'':9} {'':8}  status {word} written")
    lines.append(f"{tl.total_ms:9.1f} {'':9} {'':8}  total (docker run → seen by the runner)")
    return "\n".join(lines)


COLOURS = {"docker": (120, 130, 140), "python": (142, 92, 190), "provision": (52, 120, 200),
           "launch": (40, 160, 90), "child": (230, 140, 30), "probe": (210, 60, 60),
           "host": (30, 160, 170)}
KIND_NAMES = {"docker": "Docker", "python": "interpreter", "provision": "provisioning step",
              "launch": "launch step", "child": "child start-up", "probe": "health probes",
              "host": "status write + runner's poll"}


def draw_timeline(panels: Sequence[tuple[str, Timeline]], subtitle: str, path: Path) -> None:
    """A Gantt chart per panel (Pillow only), one row per span, time in ms."""
    from PIL import Image, ImageDraw, ImageFont

    def font(size: int) -> Any:
        for name in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf"):
            with contextlib.suppress(OSError):
                return ImageFont.truetype(name, size)
        return ImageFont.load_default(size=size)

    f_title, f_text, f_small = font(22), font(15), font(13)
    width, label_w, right, row_h = 1500, 390, 110, 26
    heights = [70 + row_h * len(tl.spans) + 50 for _, tl in panels]
    height = 70 + sum(heights) + 50
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((20, 14), "whaletop start-up: where the time goes", fill="black", font=f_title)
    d.text((20, 44), subtitle, fill=(80, 80, 80), font=f_small)
    y = 70
    for (title, tl), h in zip(panels, heights, strict=True):
        span_max = max([tl.total_ms, 1.0, *(s.end_ms for s in tl.spans)])
        scale_max = max(100.0, -(-span_max // 100) * 100)
        x0, x1 = label_w, width - right
        def xpos(t: float, x0: int = x0, x1: int = x1, top: float = scale_max) -> float:
            return x0 + (x1 - x0) * max(0.0, t) / top
        d.text((20, y + 4), title, fill="black", font=f_text)
        top, bottom = y + 52, y + 52 + row_h * len(tl.spans)
        step = 50 if scale_max <= 600 else 100
        for t in range(0, int(scale_max) + 1, step):
            x = xpos(t)
            d.line([(x, top - 4), (x, bottom)], fill=(225, 225, 225))
            d.text((x - 12, bottom + 4), f"{t}", fill=(90, 90, 90), font=f_small)
        d.text((x0, bottom + 22), "ms since `docker run` was invoked", fill=(90, 90, 90),
               font=f_small)
        last_x, lift = -1000.0, 0
        for word, at in tl.markers:
            x = xpos(at)
            lift = 14 if x - last_x < 110 and lift == 0 else 0  # neighbours: stagger
            last_x = x
            d.line([(x, top - 6 - lift), (x, bottom)], fill=(160, 160, 160), width=1)
            d.text((x + 3, top - 20 - lift), word, fill=(90, 90, 90), font=f_small)
        for i, s in enumerate(tl.spans):
            ry = top + i * row_h
            if i % 2:
                d.rectangle([(10, ry), (width - 10, ry + row_h - 1)], fill=(247, 247, 247))
            d.text((20, ry + 5), s.label, fill="black", font=f_small)
            bx0, bx1 = xpos(s.start_ms), max(xpos(s.end_ms), xpos(s.start_ms) + 2)
            d.rectangle([(bx0, ry + 5), (bx1, ry + row_h - 6)], fill=COLOURS.get(s.kind, "gray"))
            d.text((bx1 + 5, ry + 5), f"{s.duration_ms:.1f} ms", fill=(60, 60, 60), font=f_small)
        total_x = xpos(tl.total_ms)
        d.line([(total_x, top - 6), (total_x, bottom)], fill=(200, 0, 0), width=2)
        y += h
    lx = 20
    for kind, colour in COLOURS.items():
        d.rectangle([(lx, y + 8), (lx + 16, y + 22)], fill=colour)
        d.text((lx + 22, y + 7), KIND_NAMES[kind], fill="black", font=f_small)
        lx += 60 + int(d.textlength(KIND_NAMES[kind], font=f_small))
    d.text((lx + 10, y + 7), "red line: HEALTHY read by the runner", fill=(200, 0, 0),
           font=f_small)
    img.save(path, optimize=True)


# -- scripts run inside the container with `docker exec ... python3 -c` ---------------------

KILL_XVNC = r"""
import json, os, time
doc = json.load(open('/opt/whaletop/status.json'))
pid = doc['children']['xvnc']['pid']
t_kill = time.time()
os.kill(pid, 9)
word = 'HEALTHY'
while word == 'HEALTHY' and time.time() - t_kill < 10:
    time.sleep(0.001)
    try:
        word = open('/opt/whaletop/status').read().strip()
    except FileNotFoundError:
        word = ''
t_left = time.time()
print(json.dumps({'t_kill': t_kill, 't_left': t_left, 'word': word, 'xvnc_pid': pid}),
      flush=True)
"""

SNAPSHOT = r"""
import glob, json, os, time
doc = json.load(open('/opt/whaletop/status.json'))
pid = doc['pid']
tck = os.sysconf('SC_CLK_TCK')
stat = open(f'/proc/{pid}/stat').read()
fields = stat[stat.rindex(')') + 2:].split()
threads = {}
for d in glob.glob(f'/proc/{pid}/task/*'):
    try:
        threads[os.path.basename(d)] = int(open(d + '/schedstat').read().split()[0])
    except (OSError, ValueError):
        pass
mem = {}
for line in open(f'/proc/{pid}/status'):
    if line.startswith(('VmRSS:', 'RssAnon:', 'RssFile:', 'Threads:')):
        mem[line.split(':')[0]] = int(line.split()[1])
print(json.dumps({'t': time.time(), 'pid': pid, 'tck': tck,
                  'cpu_s': (int(fields[11]) + int(fields[12])) / tck,
                  'threads_ns': threads, 'mem': mem,
                  'state': doc['state'], 'since': doc['since']}), flush=True)
"""

WATCH_APP = r"""
import glob, json, os, sys, time
name = sys.argv[1]
target = '/usr/share/applications/' + name
needle = ('\n-' + name + '\n').encode()
menus = os.path.expanduser('~user/.cache/menus')
deadline = time.time() + 30
while time.time() < deadline:  # the menu cache exists once lxpanel asked for it
    if any(b'lxde-applications.menu' in open(f, 'rb').read(200)
           for f in glob.glob(menus + '/*')):
        break
    time.sleep(0.01)
print('READY', flush=True)
t_app = t_menu = None
seen = {}
deadline = time.time() + 30
while (t_app is None or t_menu is None) and time.time() < deadline:
    if t_app is None and os.path.exists(target):
        t_app = time.time()
    if t_menu is None:
        for f in glob.glob(menus + '/*'):
            try:
                st = os.stat(f)
                key = (st.st_ino, st.st_mtime_ns, st.st_size)
                if seen.get(f) != key:
                    seen[f] = key
                    if needle in open(f, 'rb').read():
                        t_menu = time.time()
                        break
            except OSError:
                pass
    time.sleep(0.001)
print(json.dumps({'t_app': t_app, 't_menu': t_menu}), flush=True)
"""

CERTGEN = r"""
import datetime as dt, ipaddress, json, os, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
out, count = sys.argv[1], int(sys.argv[2])
now = dt.datetime.now(dt.timezone.utc)
prints = {}
for i in range(count):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f'bench-{i}.localhost')])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName('localhost'), x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    path = os.path.join(out, f'cert{i}.pem')
    with open(path, 'wb') as f:
        f.write(pem)
    os.chmod(path, 0o600)
    prints[f'cert{i}.pem'] = cert.fingerprint(hashes.SHA256()).hex()
print(json.dumps(prints), flush=True)
"""

APP_ENTRY = """[Desktop Entry]
Type=Application
Name=Bench {tag}
Exec=/usr/bin/true
Icon=utilities-terminal
Categories=Utility;
"""

# -- talking to 127.0.0.1 ------------------------------------------------------------------


def http_get(port: int, path: str = "/vnc.html", tls: bool = False,
             timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) from 127.0.0.1; TLS without verification (self-signed)."""
    conn: http.client.HTTPConnection
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(HOST, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def page_served(port: int, tls: bool = False) -> bool:
    try:
        status, body = http_get(port, tls=tls)
    except (OSError, http.client.HTTPException):
        return False
    return status == 200 and b"noVNC" in body


def served_fingerprint(port: int, timeout: float = 2.0) -> tuple[str | None, float]:
    """SHA-256 of the certificate 127.0.0.1:port presents, and when the handshake ended.
    Then it asks for the page, as a browser would, so the server sees a complete request."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw) as tls_sock:
            der = tls_sock.getpeercert(binary_form=True) or b""
            at = time.time()
            tls_sock.sendall(f"GET /vnc.html HTTP/1.0\r\nHost: {HOST}:{port}\r\n\r\n".encode())
            while tls_sock.recv(65536):
                pass
    except OSError:
        return None, time.time()
    return hashlib.sha256(der).hexdigest(), at


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


def port_listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


# -- Docker ----------------------------------------------------------------------------------


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


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


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

    def exec_python(self, script: str, *args: str, timeout: float = 180) -> str:
        return docker("exec", self.name, "python3", "-c", script, *args,
                      timeout=timeout).stdout


class Bench:
    def __init__(self, image: str, web_port: int, vnc_port: int, workdir: Path,
                 runs: int, quick: bool, quiet_wait: float = 0.0) -> None:
        self.quiet_wait = quiet_wait
        self.host: list[dict[str, Any]] = []  # how busy the host was before each container
        self.busy_runs: dict[str, int] = {}
        self._quiet = True
        self.image = image
        self.web_port = web_port
        self.vnc_port = vnc_port
        self.workdir = workdir
        self.runs = runs
        self.quick = quick
        self.live: set[str] = set()
        self.values: dict[str, list[float]] = {f.key: [] for f in FIGURES}
        self.notes: dict[str, list[str]] = {f.key: [] for f in FIGURES}
        self.errors: dict[str, str] = {}
        self.conditions: dict[str, bool] = {}
        self.timelines: list[tuple[float, Timeline]] = []  # (HEALTHY s, timeline)
        self.tls_timelines: list[tuple[float, Timeline]] = []
        self.steps: dict[str, list[float]] = {}
        self.phases: dict[str, list[float]] = {}
        self.certs: dict[str, str] = {}
        self.detail: dict[str, Any] = {}

    # -- containers, one at a time ------------------------------------------------------

    def _ports_free(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            busy = [p for p in (self.web_port, self.vnc_port) if port_listening(p)]
            if not busy:
                return
            time.sleep(0.2)
        raise BenchError(f"127.0.0.1 port(s) {busy} are in use: another desktop runs there; "
                         "choose others with --web-port/--vnc-port")

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
        self._quiet = calm >= 2 or self.quiet_wait <= 0
        self.host.append({"container": tag, "host_cpu_busy": round(busy, 3),
                          "quiet": self._quiet, "waited_s": round(time.monotonic() - t0, 1),
                          "other_containers": len(others)})
        if not self._quiet:
            log(f"host still busy ({busy:.0%} of all cores) after {self.quiet_wait:.0f} s: "
                "measuring anyway")

    @contextlib.contextmanager
    def container(self, tag: str, flags: Sequence[str] = (),
                  volumes: Sequence[str] = ()) -> Iterator[Running]:
        if self.live:
            raise BenchError(f"a bench container still runs: {sorted(self.live)}")
        self._ports_free()
        self.wait_quiet(tag)
        state = Path(tempfile.mkdtemp(prefix=f"state-{tag}-", dir=self.workdir))
        name = f"{NAME_PREFIX}{tag}-{uuid.uuid4().hex[:6]}"
        argv = ["docker", "run", "-d", "--name", name, "--network", "host",
                "-v", f"{state}:/opt/whaletop"]
        for vol in volumes:
            argv += ["-v", vol]
        argv += [self.image, "/start.py", f"--web-port={self.web_port}",
                 f"--vnc-port={self.vnc_port}", *flags]
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

    def settle(self, seconds: float) -> None:
        time.sleep(seconds / (3 if self.quick else 1))

    def record(self, key: str, value: float, note: str = "") -> None:
        self.values[key].append(value)
        if not self._quiet:
            self.busy_runs[key] = self.busy_runs.get(key, 0) + 1
        if note:
            self.notes[key].append(note)

    # -- the figures ----------------------------------------------------------------------

    def fig_image(self) -> None:
        doc = json.loads(docker("image", "inspect", self.image).stdout)[0]
        self.record("image_size", doc["Size"] / 1e6)
        chromium = self.detail.get("chromium")
        self.notes["image_size"].append(
            "decimal MB as `docker images` prints"
            + ("" if chromium is None else f"; includes {chromium}" if chromium
               else "; NO chromium in this image"))

    def warm_up(self) -> None:
        """One untimed start (page cache, first-run effects), which also makes the
        certificates for the rotation runs with the image's own python3-cryptography."""
        pool = self.workdir / "certs"
        pool.mkdir(exist_ok=True)
        with self.container("warmup", volumes=[f"{pool}:/bench-certs"]) as c:
            c.wait_healthy()
            self.certs = json.loads(c.exec_python(CERTGEN, "/bench-certs",
                                                  str(2 * self.runs)))
            self.detail["chromium"] = docker(
                "exec", c.name, "sh", "-c",
                "command -v /usr/lib/chromium/chromium || command -v chromium || true",
            ).stdout.strip()
        log(f"warm-up done; {len(self.certs)} certificates made")

    def fig_start(self, i: int) -> None:
        with self.container(f"start{i}") as c:
            t_seen = c.wait_healthy()
            healthy = t_seen - c.t_run
            if not page_served(self.web_port):
                raise BenchError("HEALTHY, but the noVNC page is not served")
            self.record("start_healthy", healthy)
            events = parse_log(c.logs())
            created = parse_time(c.inspect("{{.Created}}"))
            started = parse_time(c.inspect("{{.State.StartedAt}}"))
            tl = build_timeline(events, c.t_run, created, started, t_seen)
            self.timelines.append((healthy, tl))
            for name, ms in step_durations(events).items():
                self.steps.setdefault(name, []).append(ms)
            t0 = daemon_t0(events)
            healthy_ts = next((parse_time(e["timestamp"]) for e in events
                               if e.get("event") == "transition" and e.get("dest") == "HEALTHY"),
                              None)
            if t0 is not None and healthy_ts is not None:
                for phase, value in (("docker run → container started", started - c.t_run),
                                     ("container started → whaletopd running", t0 - started),
                                     ("whaletopd running → HEALTHY", healthy_ts - t0),
                                     ("HEALTHY written → read by the runner",
                                      t_seen - healthy_ts)):
                    self.phases.setdefault(phase, []).append(value * 1000)
            log(f"start {i + 1}/{self.runs}: HEALTHY after {healthy:.3f} s")

            self.settle(2)
            old_since = c.detail()["since"]
            t0r = time.time()
            restart = subprocess.Popen(["docker", "restart", c.name], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)

            def again() -> bool:
                if c.word() != "HEALTHY":
                    return False
                doc = c.detail()
                return doc.get("state") == "HEALTHY" and doc.get("since") != old_since
            t_again = c.wait("HEALTHY after docker restart", again)
            _, restart_err = restart.communicate(timeout=60)
            if restart.returncode != 0:
                raise BenchError(f"docker restart failed: {restart_err[-300:]}")
            if not page_served(self.web_port):
                raise BenchError("HEALTHY after restart, but the noVNC page is not served")
            self.record("restart_healthy", t_again - t0r)
            log(f"restart {i + 1}/{self.runs}: HEALTHY again after {t_again - t0r:.3f} s")

            self.settle(2)
            t0s = time.perf_counter()
            docker("stop", c.name, timeout=60)
            took = time.perf_counter() - t0s
            code = int(c.inspect("{{.State.ExitCode}}"))
            word = c.word()
            self.record("stop", took)
            self.detail.setdefault("stop_exit_codes", []).append(code)
            self.conditions["stop"] = self.conditions.get("stop", True) and code == 0
            log(f"stop {i + 1}/{self.runs}: {took:.3f} s, exit {code}, status {word}")

    def fig_http(self, i: int) -> None:
        with self.container(f"http{i}") as c:
            t = c.wait("noVNC page (HTTP 200)", lambda: page_served(self.web_port))
            self.record("start_http", t - c.t_run)
            c.wait_healthy()
            log(f"http {i + 1}/{self.runs}: page served after {t - c.t_run:.3f} s")

    def fig_tls(self, i: int) -> None:
        with self.container(f"tls{i}", flags=["--enable-tls"]) as c:
            seen: dict[str, float] = {}

            def both() -> bool:
                if "healthy" not in seen and c.word() == "HEALTHY":
                    seen["healthy"] = time.time()
                if "page" not in seen and page_served(self.web_port, tls=True):
                    seen["page"] = time.time()
                return len(seen) == 2
            c.wait("HTTPS page and HEALTHY", both)
            c.proc.wait(timeout=30)
            self.record("start_https", seen["page"] - c.t_run)
            self.record("start_healthy_tls", seen["healthy"] - c.t_run)
            events = parse_log(c.logs())
            durations = step_durations(events)
            tls_steps = [ms for name, ms in durations.items() if name.startswith("tls")]
            tls_ms = sum(tls_steps) if tls_steps else None
            if tls_ms is not None:
                self.steps.setdefault("tls (with --enable-tls)", []).append(tls_ms)
            created = parse_time(c.inspect("{{.Created}}"))
            started = parse_time(c.inspect("{{.State.StartedAt}}"))
            self.tls_timelines.append((seen["healthy"] - c.t_run, build_timeline(
                events, c.t_run, created, started, seen["healthy"])))
            log(f"tls {i + 1}/{self.runs}: HTTPS page after {seen['page'] - c.t_run:.3f} s, "
                f"HEALTHY after {seen['healthy'] - c.t_run:.3f} s")

    def fig_kill(self, i: int) -> None:
        with self.container(f"kill{i}") as c:
            c.wait_healthy()
            self.settle(2)
            waiter = subprocess.Popen(["docker", "wait", c.name], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
            time.sleep(0.2)  # docker wait is attached before the kill
            out = docker("exec", c.name, "python3", "-c", KILL_XVNC, check=False).stdout
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            if not lines:
                raise BenchError(f"the kill script printed nothing: {out!r}")
            res = json.loads(lines[-1])
            waited, _ = waiter.communicate(timeout=60)
            t_wait = time.time()
            code = int(waited.strip())
            finished = parse_time(c.inspect("{{.State.FinishedAt}}"))
            left = res["t_left"] - res["t_kill"]
            exited = finished - res["t_kill"]
            self.record("kill_leaves_healthy", left)
            self.record("kill_exited", exited)
            self.detail.setdefault("kill", []).append({
                "left_s": round(left, 4), "new_status": res["word"], "exit_code": code,
                "exited_s (State.FinishedAt)": round(exited, 4),
                "docker wait returned_s": round(t_wait - res["t_kill"], 4),
                "final_status": c.word()})
            self.conditions["kill_exited"] = self.conditions.get("kill_exited", True) and code != 0
            log(f"kill {i + 1}/{self.runs}: left HEALTHY ({res['word']}) after {left:.4f} s, "
                f"exited {code} after {exited:.3f} s")

    def fig_idle(self, i: int) -> None:
        window = 10.0 if self.quick else 60.0
        with self.container(f"idle{i}") as c:
            c.wait_healthy()
            time.sleep(3 if self.quick else 15)  # the session finishes starting
            before = json.loads(c.exec_python(SNAPSHOT))
            cpu0, h0 = self.cgroup_cpu(c), time.monotonic()
            time.sleep(window)
            cpu1, h1 = self.cgroup_cpu(c), time.monotonic()
            after = json.loads(c.exec_python(SNAPSHOT))
            mem = self.cgroup_memory(c)
            if after["state"] != "HEALTHY" or before["since"] != after["since"]:
                raise BenchError(f"not HEALTHY throughout the idle window: {before} {after}")
            fig = idle_figures(before, after)
            container_cpu = (cpu1 - cpu0) / (h1 - h0) * 60
            self.record("idle_cpu", fig["cpu_s_per_min"])
            self.record("daemon_rss", after["mem"]["VmRSS"] / 1024)
            self.record("container_mem", mem["usage_minus_inactive_file"] / 2**20)
            self.record("container_cpu", container_cpu)
            self.detail.setdefault("idle", []).append({
                **fig, "container_cpu_s_per_min": round(container_cpu, 4),
                "rss_kib": after["mem"],
                "cgroup_mib": {k: round(v / 2**20, 1) for k, v in mem.items()}})
            log(f"idle {i + 1}/{self.runs}: {fig['cpu_s_per_min']:.4f} CPU-s/min (schedstat "
                f"{fig['schedstat_cpu_s_per_min']:.4f}), RSS "
                f"{after['mem']['VmRSS'] / 1024:.1f} MiB, container "
                f"{mem['usage_minus_inactive_file'] / 2**20:.1f} MiB, "
                f"{container_cpu:.3f} CPU-s/min")

    def cgroup_cpu(self, c: Running) -> float:
        """CPU seconds the whole container used so far (cgroup v1 cpuacct or v2 cpu.stat)."""
        cid = c.inspect("{{.Id}}")
        for base in (Path("/sys/fs/cgroup/cpuacct/docker"),
                     Path("/sys/fs/cgroup/cpu,cpuacct/docker")):
            usage = base / cid / "cpuacct.usage"
            if usage.exists():
                return int(usage.read_text()) / 1e9
        for base in (Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope"),
                     Path("/sys/fs/cgroup/docker") / cid):
            if (base / "cpu.stat").exists():
                stat = dict(line.split() for line in (base / "cpu.stat").read_text().splitlines())
                return int(stat["usage_usec"]) / 1e6
        raise BenchError(f"no cpu cgroup found for container {cid[:12]}")

    def cgroup_memory(self, c: Running) -> dict[str, int]:
        """cgroup v1 (memory.usage_in_bytes, memory.stat) or v2 (memory.current)."""
        cid = c.inspect("{{.Id}}")
        for base in (Path("/sys/fs/cgroup/memory/docker") / cid,
                     Path(f"/sys/fs/cgroup/memory/system.slice/docker-{cid}.scope"),
                     Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope"),
                     Path("/sys/fs/cgroup/docker") / cid):
            usage_file = next((base / n for n in ("memory.usage_in_bytes", "memory.current")
                               if (base / n).exists()), None)
            if usage_file is None:
                continue
            stat = dict(line.split() for line in (base / "memory.stat").read_text().splitlines())
            usage = int(usage_file.read_text())
            inactive = int(stat.get("total_inactive_file", stat.get("inactive_file", 0)))
            return {"usage": usage, "usage_minus_inactive_file": usage - inactive,
                    "rss": int(stat.get("total_rss", stat.get("anon", 0))),
                    "cache": int(stat.get("total_cache", stat.get("file", 0)))}
        raise BenchError(f"no memory cgroup found for container {cid[:12]}")

    def fig_apps(self, i: int) -> None:
        apps = Path(tempfile.mkdtemp(prefix="apps-", dir=self.workdir))
        try:
            with self.container(f"apps{i}", volumes=[f"{apps}:/Apps/Bench:ro"]) as c:
                c.wait_healthy()
                tag = uuid.uuid4().hex[:8]
                name = f"bench-{tag}.desktop"
                watcher = subprocess.Popen(
                    ["docker", "exec", c.name, "python3", "-c", WATCH_APP, name],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                assert watcher.stdout is not None
                first = watcher.stdout.readline()
                if first.strip() != "READY":
                    raise BenchError(f"menu watcher did not start: {first!r} "
                                     f"{watcher.stderr.read() if watcher.stderr else ''}")
                time.sleep(0.2)  # the watcher polls; the menu cache is settled
                tmp = apps / f".{name}.tmp"
                tmp.write_text(APP_ENTRY.format(tag=tag))
                t_write = time.time()
                os.replace(tmp, apps / name)
                out, _ = watcher.communicate(timeout=60)
                res = json.loads(out.strip().splitlines()[-1])
                if res["t_app"] is None or res["t_menu"] is None:
                    raise BenchError(f"the entry did not appear within 30 s: {res}")
                self.record("apps_copied", res["t_app"] - t_write)
                self.record("apps_menu", res["t_menu"] - t_write)
                log(f"apps {i + 1}/{self.runs}: copied after {res['t_app'] - t_write:.3f} s, "
                    f"in the menu cache after {res['t_menu'] - t_write:.3f} s")
        finally:
            shutil.rmtree(apps, ignore_errors=True)

    def fig_cert(self, i: int) -> None:
        if not self.certs:
            raise BenchError("no certificates (the warm-up makes them)")
        pool = self.workdir / "certs"
        first, second = f"cert{2 * i}.pem", f"cert{2 * i + 1}.pem"
        certs = Path(tempfile.mkdtemp(prefix="certs-", dir=self.workdir))
        try:
            shutil.copy2(pool / first, certs / "tls.pem")
            with self.container(f"cert{i}", flags=["--tls-certificate=/certs/tls.pem"],
                                volumes=[f"{certs}:/certs:ro"]) as c:
                c.wait_healthy()
                if served_fingerprint(self.web_port)[0] != self.certs[first]:
                    raise BenchError("HEALTHY but not serving the mounted certificate")
                self.settle(1)
                old_since = c.detail()["since"]
                tmp = certs / ".tls.pem.new"
                shutil.copy2(pool / second, tmp)
                t_write = time.time()
                os.replace(tmp, certs / "tls.pem")
                want = self.certs[second]
                deadline = time.monotonic() + 30
                t_served = None
                while time.monotonic() < deadline:
                    served, at = served_fingerprint(self.web_port, timeout=1.0)
                    if served == want:
                        t_served = at
                        break
                    time.sleep(0.005)
                if t_served is None:
                    raise BenchError("the new certificate was not served within 30 s")

                def again() -> bool:
                    doc = c.detail()
                    return doc.get("state") == "HEALTHY" and doc.get("since") != old_since
                t_healthy = c.wait("HEALTHY after the rotation", again)
                self.record("cert_served", t_served - t_write)
                self.record("cert_healthy", t_healthy - t_write)
                log(f"cert {i + 1}/{self.runs}: served after {t_served - t_write:.3f} s, "
                    f"HEALTHY again after {t_healthy - t_write:.3f} s")
        finally:
            shutil.rmtree(certs, ignore_errors=True)

    def make_home(self, files: int) -> Path:
        home = self.workdir / "home-big"
        t0 = time.monotonic()
        per_dir = 1000
        for n in range(files):
            d = home / "files" / f"d{n // per_dir:04d}"
            if n % per_dir == 0:
                d.mkdir(parents=True)
                os.chown(d, 1000, 1000)
            fd = os.open(d / f"f{n % per_dir:04d}.txt", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"x\n")
            os.fchown(fd, 1000, 1000)
            os.close(fd)
        os.chown(home / "files", 1000, 1000)
        os.chown(home, 1000, 1000)
        os.sync()  # no write-back of 100,000 new inodes during the measured starts
        log(f"made a home with {files} files in {time.monotonic() - t0:.1f} s")
        return home

    @staticmethod
    def reset_home(home: Path, keep: str = "files") -> None:
        """Back to what it was before the run: the desktop adds /etc/skel and caches."""
        for entry in home.iterdir():
            if entry.name == keep:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def fig_home(self, files: int) -> None:
        big = self.make_home(files)
        empty = self.workdir / "home-empty"
        empty.mkdir()
        os.chown(empty, 1000, 1000)
        try:
            for i in range(self.runs):
                pair = {}
                order = (("empty", empty), ("big", big))
                for kind, home in order if i % 2 == 0 else order[::-1]:  # no drift bias
                    with self.container(f"home-{kind}{i}",
                                        volumes=[f"{home}:{USER_HOME}"]) as c:
                        pair[kind] = c.wait_healthy() - c.t_run
                        self.record(f"home_{kind}", pair[kind])
                    self.reset_home(home)
                    os.sync()
                self.record("home_ratio", pair["big"] / pair["empty"])
                log(f"home {i + 1}/{self.runs}: empty {pair['empty']:.3f} s, {files} files "
                    f"{pair['big']:.3f} s, ratio {pair['big'] / pair['empty']:.3f}")
        finally:
            shutil.rmtree(big, ignore_errors=True)
            shutil.rmtree(empty, ignore_errors=True)

    # -- running and reporting ---------------------------------------------------------------

    def run_group(self, group: str, home_files: int) -> None:
        per_run: dict[str, Callable[[int], None]] = {
            "start": self.fig_start, "http": self.fig_http, "tls": self.fig_tls,
            "kill": self.fig_kill, "apps": self.fig_apps, "cert": self.fig_cert,
            "idle": self.fig_idle}
        try:
            if group == "image":
                self.fig_image()
            elif group == "home":
                self.fig_home(home_files)
            else:
                for i in range(self.runs):
                    per_run[group](i)
        except (BenchError, OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
            log(f"{group}: ERROR {exc}")
            for key in GROUPS[group]:
                self.errors.setdefault(key, f"{type(exc).__name__}: {exc}")
        finally:
            self.cleanup()

    def median_timeline(self, timelines: list[tuple[float, Timeline]]) -> tuple[int, Timeline]:
        ordered = sorted(range(len(timelines)), key=lambda k: timelines[k][0])
        k = ordered[(len(ordered) - 1) // 2]
        return k, timelines[k][1]

    def results(self, keys: Sequence[str], home_files: int) -> dict[str, Any]:
        figures = []
        for fig in FIGURES:
            if fig.key not in keys:
                continue
            vals = self.values[fig.key]
            s = summarize(vals)
            error = self.errors.get(fig.key)
            notes = list(dict.fromkeys(self.notes[fig.key]))
            if fig.key == "stop" and "stop_exit_codes" in self.detail:
                notes.append(f"exit codes {self.detail['stop_exit_codes']}")
            if fig.key == "kill_exited" and "kill" in self.detail:
                notes.append(f"exit codes {[k['exit_code'] for k in self.detail['kill']]}; "
                             "from the in-container kill to State.FinishedAt")
            if self.busy_runs.get(fig.key):
                notes.append(f"{self.busy_runs[fig.key]} of {len(vals)} run(s) started while "
                             f"the host was busy with other work (> {QUIET_BUSY:.0%} CPU)")
            if fig.key == "idle_cpu" and self.detail.get("idle"):
                notes.append(idle_note(self.detail["idle"]))
            if fig.key == "home_big" and home_files != 100_000:
                notes.append(f"{home_files} files, not 100,000")
            figures.append({
                "key": fig.key, "label": fig.label, "unit": fig.unit, "target": fig.target,
                "condition": fig.condition or None, "original": fig.original or None,
                **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in s.items()},
                "values": [round(v, 6) for v in vals],
                "met": verdict(fig, s["median"], self.conditions.get(fig.key, True), error),
                "note": "; ".join(notes) or None, "error": error})
        doc: dict[str, Any] = {"figures": figures}
        if self.timelines:
            k, tl = self.median_timeline(self.timelines)
            doc["timeline"] = {"run": k + 1, "of": len(self.timelines), **tl.to_json()}
        if self.tls_timelines:
            k, tl = self.median_timeline(self.tls_timelines)
            doc["timeline_tls"] = {"run": k + 1, "of": len(self.tls_timelines), **tl.to_json()}
        doc["step_durations_ms"] = {name: {k: round(v, 1) if isinstance(v, float) else v
                                           for k, v in summarize(vals).items()}
                                    for name, vals in self.steps.items()}
        doc["phases_ms"] = {name: {k: round(v, 1) if isinstance(v, float) else v
                                   for k, v in summarize(vals).items()}
                            for name, vals in self.phases.items()}
        doc["detail"] = self.detail
        doc["host_before_each_container"] = self.host
        return doc


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
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                         text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                            "whaletopd", "docker", "Dockerfile"], capture_output=True,
                           text=True, check=False).stdout.strip()
    return (out or "?") + ("+dirty" if dirty else "")


def write_outputs(doc: dict[str, Any], out: Path) -> list[str]:
    """results.json, results.md and (with Pillow and a timeline) timeline.png; their names."""
    out.mkdir(parents=True, exist_ok=True)
    written = ["results.json", "results.md"]
    (out / "results.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    (out / "results.md").write_text(render_markdown(doc))
    panels = []
    for key, title in (("timeline", "docker run → HEALTHY"),
                       ("timeline_tls", "docker run → HEALTHY with --enable-tls "
                                        "(self-signed certificate generated)")):
        if key in doc:
            t = doc[key]
            panels.append((f"{title}: run {t['run']} of {t['of']} (the median run), "
                           f"{t['total_ms']:.0f} ms", Timeline.from_json(t)))
    if panels:
        try:
            draw_timeline(panels, machine_line(doc.get("machine", {})), out / "timeline.png")
            written.append("timeline.png")
        except ImportError:
            log("Pillow is not installed: no timeline.png")
    return written


def print_report(doc: dict[str, Any]) -> None:
    print()
    print(f"whaletop benchmarks ({doc['mode']}, {doc['runs']} run(s) each) on "
          f"{machine_line(doc['machine'])}")
    print(f"image {doc['image']['tag']} {doc['image']['id'][:19]}, commit {doc['commit'][:12]}")
    print()
    print(render_table(doc))
    if "timeline" in doc:
        t = doc["timeline"]
        print(f"\nStart-up timeline (run {t['run']} of {t['of']}, the median; ms from "
              "docker run):")
        print(render_timeline_text(Timeline.from_json(t)))
    if doc.get("phases_ms"):
        print("\nPhases, median (min-max) over the runs, ms:")
        for name, s in doc["phases_ms"].items():
            print(f"  {s['median']:7.1f} ({s['min']:.1f}-{s['max']:.1f})  {name}")
    if doc.get("step_durations_ms"):
        print("\nwhaletopd steps (duration_ms from its log), median (min-max):")
        for name, s in doc["step_durations_ms"].items():
            print(f"  {s['median']:7.1f} ({s['min']:.1f}-{s['max']:.1f})  {name}")
    print()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="each figure once, 10 s idle window: proves the runner works")
    parser.add_argument("--runs", type=int, help="runs per figure (default 5, quick 1)")
    parser.add_argument("--image", default=os.environ.get("WHALETOP_IMAGE", "whaletop:test"),
                        help="image to measure (default $WHALETOP_IMAGE or whaletop:test, "
                             "the e2e suite's; built with scripts/build when missing)")
    parser.add_argument("--out", type=Path,
                        help="where results.json/.md and timeline.png go (default bench/; "
                             "--quick: a temporary folder)")
    parser.add_argument("--only", default=",".join(GROUPS),
                        help=f"comma-separated groups (default all): {','.join(GROUPS)}")
    parser.add_argument("--home-files", type=int, default=100_000,
                        help="files in the big mounted home (default 100000)")
    parser.add_argument("--quiet-wait", type=float,
                        help="seconds to wait before each container for the host to be idle "
                             f"(< {QUIET_BUSY:.0%} CPU for 2 s; default 60, quick 10, 0: never)")
    parser.add_argument("--web-port", type=int, default=8280)
    parser.add_argument("--vnc-port", type=int, default=5921)
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                        help="only re-render results.md and timeline.png from a results.json")
    args = parser.parse_args(argv)

    if args.render:
        doc = json.loads(args.render.read_text())
        out = args.out or args.render.parent
        written = write_outputs(doc, out)
        print_report(doc)
        log(f"wrote {', '.join(str(out / name) for name in written)}")
        return 0
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {unknown}; choose from {list(GROUPS)}")
    runs = args.runs or (1 if args.quick else 5)
    if docker("image", "inspect", args.image, check=False).returncode != 0:
        log(f"building {args.image} with scripts/build")
        subprocess.run(["bash", str(ROOT / "scripts" / "build"), args.image], check=True)
    image_id = docker("image", "inspect", "-f", "{{.Id}}", args.image).stdout.strip()
    commit = git_commit()  # now: the tree may move on while the benchmark runs
    out = args.out or (Path(tempfile.mkdtemp(prefix="whaletop-bench-out-")) if args.quick
                       else HERE)
    workdir = Path(tempfile.mkdtemp(prefix="whaletop-bench-"))
    quiet_wait = args.quiet_wait if args.quiet_wait is not None else (10 if args.quick else 60)
    bench = Bench(args.image, args.web_port, args.vnc_port, workdir, runs, args.quick,
                  quiet_wait)

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    t_begin = time.monotonic()
    try:
        needs_container = [g for g in groups if g != "image"]
        if needs_container:
            try:
                bench.warm_up()
            except (BenchError, OSError, ValueError, subprocess.SubprocessError) as exc:
                log(f"warm-up: ERROR {exc}")
                for g in needs_container:
                    for key in GROUPS[g]:
                        bench.errors[key] = f"warm-up failed: {exc}"
                groups = [g for g in groups if g == "image"]
        for group in groups:
            log(f"--- {group}")
            bench.run_group(group, args.home_files)
    except KeyboardInterrupt:
        log("interrupted: removing containers")
        return 130
    finally:
        bench.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    keys = [k for g in args.only.split(",") if g.strip() in GROUPS for k in GROUPS[g.strip()]]
    doc = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if args.quick else "full", "runs": runs,
        "duration_s": round(time.monotonic() - t_begin, 1),
        "machine": machine_info(), "commit": commit,
        "image": {"tag": args.image, "id": image_id},
        **bench.results(keys, args.home_files),
    }
    written = write_outputs(doc, out)
    print_report(doc)
    log(f"wrote {', '.join(str(out / name) for name in written)}")
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
