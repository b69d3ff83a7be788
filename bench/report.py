"""A results document written out (results.json, results.md, timeline.png) and printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.fleet import draw_fleet
from bench.interactive import write_curve
from bench.log import log
from bench.picture import draw_timeline
from bench.render import machine_line, render_markdown, render_table, render_timeline_text
from bench.timeline import Timeline

PANELS = (("timeline", "docker run → HEALTHY"),
          ("timeline_tls", "docker run → HEALTHY with --enable-tls "
                           "(self-signed certificate generated)"))


def write_outputs(doc: dict[str, Any], out: Path) -> list[str]:
    """results.json, results.md and (with Pillow and a timeline) timeline.png; their names."""
    out.mkdir(parents=True, exist_ok=True)
    written = ["results.json", "results.md"]
    (out / "results.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    (out / "results.md").write_text(render_markdown(doc))
    panels = []
    for key, title in PANELS:
        if key in doc:
            t = doc[key]
            panels.append((f"{title}: run {t['run']} of {t['of']} (the median run), "
                           f"{t['total_ms']:.0f} ms", Timeline.from_json(t)))
    written += write_curve(doc, out)
    if panels:
        try:
            draw_timeline(panels, machine_line(doc.get("machine", {})), out / "timeline.png")
            written.append("timeline.png")
        except ImportError:
            log("Pillow is not installed: no timeline.png")
    fleet = doc.get("detail", {}).get("fleet", {}).get("runs")
    if fleet:
        try:
            draw_fleet(fleet, machine_line(doc.get("machine", {})), out / "fleet.png")
            written.append("fleet.png")
        except ImportError:
            log("Pillow is not installed: no fleet.png")
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
