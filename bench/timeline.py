"""whaletopd's JSON log read back: timestamps, steps, and where start-up time goes.

Host and containers share one clock, so a time in the daemon's log and a time the runner
took with time.time() are compared directly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

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
    # datetime keeps microseconds only; docker's nanoseconds are added as a float
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


def event_time(event: dict[str, Any]) -> float | None:
    """An event's `timestamp`, or None when it has none that parses."""
    try:
        return parse_time(str(event["timestamp"]))
    except (KeyError, ValueError):
        return None


def transition_time(events: Sequence[dict[str, Any]], dest: str) -> float | None:
    """When the first transition into `dest` was logged."""
    return next((event_time(e) for e in events
                 if e.get("event") == "transition" and e.get("dest") == dest), None)


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


def daemon_t0(events: Sequence[dict[str, Any]]) -> float | None:
    """When whaletopd's machine was created: a transition's timestamp minus its elapsed_ms."""
    for ev in events:
        if ev.get("event") == "transition" and "elapsed_ms" in ev:
            ts = event_time(ev)
            if ts is not None:
                return ts - float(ev["elapsed_ms"]) / 1000
    return None


def _first_output(events: Sequence[dict[str, Any]], source: str, needle: str,
                  after: float) -> float | None:
    for ev in events:
        if (ev.get("source") == source and ev.get("event") != "transition"
                and needle in str(ev.get("event", ""))):
            ts = event_time(ev)
            if ts is not None and ts >= after:
                return ts
    return None


def build_timeline(events: Sequence[dict[str, Any]], t_run: float,
                   t_created: float | None = None, t_started: float | None = None,
                   t_seen: float | None = None, until: str = "HEALTHY") -> Timeline:
    """Where the time from `docker run` to the status word `until` goes.

    Times are wall-clock seconds: t_run when the runner invoked docker run,
    t_created/t_started from docker inspect, t_seen when the runner read the word in the
    mounted status file.  Steps come from whaletopd's `step` events (timestamp at the
    end, duration_ms), the children's readiness from their own output lines, status
    words from `transition` events."""
    def ms(t: float) -> float:
        return (t - t_run) * 1000

    tl = Timeline()
    transitions = [e for e in events if e.get("event") == "transition"]
    end = next((event_time(e) for e in transitions if e.get("dest") == until
                and e.get("source") != until), None)
    # steps after `until` belong to later work (an /Apps change), not to the start
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
        ts = event_time(ev)
        if ts is None or ts > limit:
            continue
        name = str(ev.get("step"))
        begin = ts - float(ev["duration_ms"]) / 1000
        starts.setdefault(name, begin)
        kind = "launch" if name.startswith("launch_") else "provision"
        tl.spans.append(Span(f"step {name}", ms(begin), ms(ts), kind))
    if "launch_xvnc" in starts:
        # Xvnc's own line when it has one; else the session's launch, which waits for it
        ready = (_first_output(events, "xvnc", "Listening for VNC connections",
                               starts["launch_xvnc"]) or starts.get("launch_session"))
        if ready is not None:
            tl.spans.append(Span("Xvnc: spawned → listening", ms(starts["launch_xvnc"]),
                                 ms(ready), "child"))
    if "launch_websockify" in starts:
        # whaletop's relay in websockify's row says relay_ready (websockify itself, in
        # runs before it: "proxying from").
        ready = (_first_output(events, "websockify", "relay_ready", starts["launch_websockify"])
                 or _first_output(events, "websockify", "proxying from",
                                  starts["launch_websockify"]))
        if ready is not None:
            tl.spans.append(Span("websockify: spawned → listening",
                                 ms(starts["launch_websockify"]), ms(ready), "child"))
    started = next((event_time(e) for e in transitions if e.get("dest") == "STARTED"), None)
    if started is not None and end is not None:
        tl.spans.append(Span("health probes until all pass", ms(started), ms(end), "probe"))
    if end is not None and t_seen is not None:
        tl.spans.append(Span(f"status files written (fsync), {until} read by the runner",
                             ms(end), ms(t_seen), "host"))
    for ev in transitions:
        ts = event_time(ev)
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
