"""The `interactive` group: typing, scrolling and a still desktop, measured in the real
noVNC page (headless Debian Chromium through nginx, driven by interactive_page.py in an
interpreter with Playwright), and the curve of noVNC's and Xvnc's settings.

Each run is its own container (the image's defaults, `--link lan`: its /defaults.json
and Xvnc's FrameRate are read from it); the page measures
the run's setting (keys, scrolling) and then the connected-but-still window.  The last
run also sweeps the curve's settings on the same connection (noVNC's quality and
compression levels, Xvnc's FrameRate and CompareFB), fewer keys each.  The curve is
kept in results.json (`detail.interactive_curve`) and written by `write_curve` as
interactive.md (a table) and interactive.png.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.containers import BenchError, docker
from bench.figures import GROUPS
from bench.log import log

if TYPE_CHECKING:
    from bench.measure import Bench

HERE = Path(__file__).resolve().parent
PAGE = HERE / "interactive_page.py"
# Xvnc's own defaults, set again before each point so a point changes one knob.
XVNC_DEFAULTS = {"FrameRate": 60, "CompareFB": 2}
# noVNC's own levels and Xvnc's frame rate: what a run measures when the image says
# nothing else (its /defaults.json and Xvnc's FrameRate are read from each container).
NOVNC_DEFAULTS = {"quality": 6, "compression": 2}
# --link wan's settings (whaletopd/link.py; the unit tests hold them equal: the runner
# measures the image and imports nothing of whaletopd).
WAN = {"name": "--link wan", "quality": 2, "compression": 9,
       "xvnc": {**XVNC_DEFAULTS, "FrameRate": 30}}


def base_setting(defaults_json: str, frame_rate: str) -> dict[str, Any]:
    """The container's own setting: its noVNC defaults.json (what the page starts with)
    and Xvnc's FrameRate."""
    try:
        given = json.loads(defaults_json) if defaults_json.strip() else {}
    except ValueError:
        given = {}
    levels = {k: int(given.get(k, v)) if isinstance(given, dict) else v
              for k, v in NOVNC_DEFAULTS.items()}
    rate = int(frame_rate) if frame_rate.strip().isdigit() else XVNC_DEFAULTS["FrameRate"]
    return {"name": "the image's defaults (--link lan)", **levels,
            "xvnc": {**XVNC_DEFAULTS, "FrameRate": rate}}


def _point(name: str, quality: int, compression: int, **xvnc: int) -> dict[str, Any]:
    return {"name": name, "quality": quality, "compression": compression,
            "xvnc": {**XVNC_DEFAULTS, **xvnc}}


# One knob at a time from BASE.  Xvnc's ZlibLevel is not swept: noVNC asks for Tight
# (then ZRLE...), whose zlib level is the client's compression level.
CURVE: list[dict[str, Any]] = [
    *[_point(f"quality {q}", q, 2) for q in (0, 2, 4, 8, 9)],
    *[_point(f"compression {c}", 6, c) for c in (0, 5, 9)],
    _point("FrameRate 30", 6, 2, FrameRate=30),
    _point("FrameRate 120", 6, 2, FrameRate=120),
    _point("CompareFB 0", 6, 2, CompareFB=0),
    _point("CompareFB 1", 6, 2, CompareFB=1),
    WAN,
]
QUICK_CURVE = CURVE[:1]


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile, linear between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:  # 127.0.0.1 only
            return str(answer.read().decode())
    except (OSError, ValueError):
        return ""


def point_summary(setting: dict[str, Any]) -> dict[str, Any]:
    """One measured setting as a row of the curve."""
    keys = setting["keys_ms"]
    sc = setting["scroll"]
    arrived = setting.get("keys_to_message_ms")  # None: measured before it was
    return {"name": setting["name"], "quality": setting["quality"],
            "compression": setting["compression"], "xvnc": setting["xvnc"],
            "keys": len(keys), "key_p50_ms": round(statistics.median(keys), 1),
            "key_p95_ms": round(percentile(keys, 95), 1),
            "key_to_message_p50_ms": round(statistics.median(arrived), 1) if arrived else None,
            "key_to_message_p95_ms": round(percentile(arrived, 95), 1) if arrived else None,
            "scroll_fps": sc["fps"],
            "scroll_mb_s": round(sc["bytes_per_s"] / 1e6, 3),
            "scroll_server_cpu_percent": round(sum(sc["cpu_percent"].values()), 1)}


def plan(quick: bool, last: bool, base: dict[str, Any]) -> dict[str, Any]:
    keys = 30 if quick else 120
    settings = [{**base, "keys": keys}]
    if last:
        settings += [{**p, "keys": 20 if quick else 50}
                     for p in (QUICK_CURVE if quick else CURVE)]
    return {"keys": keys, "scroll_seconds": 2.0 if quick else 5.0,
            "still_seconds": 5.0 if quick else 60.0, "still_settle": 3.0,
            "settings": settings}


def run(bench: Bench, i: int) -> None:
    """Run i of the group: a container, the page's measurements, the figures."""
    if bench.browser.missing:
        if i == 0:
            log(f"interactive: skipped: {bench.browser.missing}")
            bench.results.skip(GROUPS["interactive"], bench.browser.missing)
        return
    assert bench.browser.python is not None
    last = i == bench.runs - 1
    with bench.container(f"interactive{i}") as c:
        c.wait_healthy()
        bench.settle(5)  # the LXDE session finishes starting
        base = base_setting(_get(f"http://127.0.0.1:{bench.web_port}/defaults.json"),
                            docker("exec", "-u", "1000", c.name, "vncconfig", "-display", ":1",
                                   "-get", "FrameRate", check=False).stdout)
        plan_file = Path(tempfile.mkstemp(prefix="plan-", suffix=".json",
                                          dir=bench.workdir)[1])
        plan_file.write_text(json.dumps(plan(bench.quick, last, base)))
        argv = [bench.browser.python, str(PAGE), str(bench.web_port), c.name,
                str(c.state / "vnc_passwd"), "--plan", str(plan_file),
                "--chromium", bench.browser.chromium]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=900,
                                  check=False)
        except subprocess.SubprocessError as exc:
            raise BenchError(f"interactive_page.py: {exc}") from None
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if done.returncode != 0 or not lines:
            raise BenchError(f"interactive_page.py failed ({done.returncode}): "
                             f"{done.stderr.strip()[-800:]}")
        if c.word() != "HEALTHY":
            raise BenchError(f"the desktop left HEALTHY while measured: {c.word()}")
    res = json.loads(lines[-1])
    own = point_summary(res["settings"][0])
    still = res["still"]
    still_cpu = sum(still["cpu_percent"].values())
    fps = own["scroll_fps"]
    bench.record("key_p50", own["key_p50_ms"])
    bench.record("key_p95", own["key_p95_ms"])
    bench.record("scroll_frame", 1000 / fps if fps > 0 else float("inf"))
    bench.record("scroll_bytes", own["scroll_mb_s"])
    bench.record("still_cpu", still_cpu)
    detail = bench.results.detail
    detail.setdefault("interactive", []).append({
        "framebuffer": res["framebuffer"], "setting": own,
        "keys_ms": res["settings"][0]["keys_ms"],
        "keys_to_message_ms": res["settings"][0].get("keys_to_message_ms"),
        "scroll": res["settings"][0]["scroll"],
        "still": still})
    if last:
        detail["interactive_curve"] = [point_summary(s) for s in res["settings"]]
        for key, note in notes(detail).items():
            bench.results.notes[key].append(note)
    log(f"interactive {i + 1}/{bench.runs}: keys p50 {own['key_p50_ms']} ms, p95 "
        f"{own['key_p95_ms']} ms; scrolling {fps} fps, {own['scroll_mb_s']} MB/s; still "
        f"{still_cpu:.3f} % of a core ({still['flips']} screen updates in "
        f"{still['seconds']:.0f} s)")


def notes(detail: dict[str, Any]) -> dict[str, str]:
    """The notes of the figures, from the runs' detail."""
    runs = detail.get("interactive") or []
    if not runs:
        return {}
    fb = runs[0]["framebuffer"]
    keys = sum(len(r["keys_ms"]) for r in runs)
    fps = [r["setting"]["scroll_fps"] for r in runs]
    still = runs[-1]["still"]
    mb = [r["setting"]["scroll_mb_s"] for r in runs]
    flips = [r["still"]["flips"] for r in runs]
    by_proc = {name: round(statistics.median(r["still"]["cpu_percent"].get(name, 0.0)
                                             for r in runs), 3)
               for name in still["cpu_percent"]}
    return {
        "key_p95": (f"{keys} keys over {len(runs)} run(s), `x` and BackSpace in turns into "
                    f"lxterminal, desktop {fb['width']}x{fb['height']}; keydown's timeStamp → "
                    "noVNC's Display.flip drawing a non-empty damage (same clock)"
                    + _arrival_note(runs)),
        "scroll_frame": (f"seq printing in a maximized lxterminal: {fps} fps seen by the "
                         "page (flips drawing something), the figure is 1000 / fps"),
        "scroll_bytes": f"WebSocket message bytes counted in the page: {mb} MB/s",
        "still_cpu": (f"Xvnc, websockify and nginx (all threads' schedstat, host /proc), "
                      f"median per process {by_proc} (% of a core); the page still drew "
                      f"{flips} updates per window: lxpanel's CPU monitor redraws every "
                      "1.5 s"),
    }


def _arrival_note(runs: Sequence[dict[str, Any]]) -> str:
    """The server's share: keydown → the first WebSocket message after it."""
    p95 = [percentile(r["keys_to_message_ms"], 95) for r in runs if r.get("keys_to_message_ms")]
    p50 = [statistics.median(r["keys_to_message_ms"]) for r in runs
           if r.get("keys_to_message_ms")]
    if not p95:
        return ""
    return (f"; keydown → the update's first bytes in the page: p50 "
            f"{statistics.median(p50):.1f} ms, p95 {statistics.median(p95):.1f} ms "
            f"(median of {len(p95)} run(s)); the rest is noVNC decoding and drawing")


def write_curve(doc: dict[str, Any], out: Path) -> list[str]:
    """The curve as interactive.md (a table) and interactive.png; the names written
    (none without a curve)."""
    curve = doc.get("detail", {}).get("interactive_curve")
    if not curve:
        return []
    (out / "interactive.md").write_text(curve_markdown(curve))
    try:
        draw_curve(curve, out / "interactive.png",
                   str(doc.get("detail", {}).get("interactive_curve_source", "")))
    except ImportError:
        log("Pillow is not installed: no interactive.png")
        return ["interactive.md"]
    return ["interactive.md", "interactive.png"]


def curve_markdown(curve: Sequence[dict[str, Any]]) -> str:
    lines = ["<!-- generated by python -m bench from results.json; do not edit -->",
             "| setting | noVNC quality | compression | Xvnc | keys | key p50 ms | "
             "key p95 ms | key → bytes in p95 ms | scrolling fps | MB/s | server CPU % |",
             "|---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|"]
    for p in curve:
        xvnc = ", ".join(f"{k}={v}" for k, v in p["xvnc"].items())
        lines.append(f"| {p['name']} | {p['quality']} | {p['compression']} | {xvnc} | "
                     f"{p['keys']} | {p['key_p50_ms']} | {p['key_p95_ms']} | "
                     f"{p.get('key_to_message_p95_ms') or '—'} | "
                     f"{p['scroll_fps']:.1f} | {p['scroll_mb_s']:.2f} | "
                     f"{p['scroll_server_cpu_percent']:.0f} |")
    return "\n".join(lines) + "\n"


def draw_curve(curve: Sequence[dict[str, Any]], path: Path, caption: str = "") -> None:
    """Scrolling fps against MB/s for every setting (numbered, listed on the right with
    its keystroke p95, which also sizes the dot); the targets as lines.  ImportError
    without Pillow."""
    from PIL import Image, ImageDraw, ImageFont

    def load_font(size: int) -> Any:
        for name in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf"):
            with contextlib.suppress(OSError):
                return ImageFont.truetype(name, size)
        return ImageFont.load_default(size=size)

    width, height, left, bottom, top, legend_w = 1500, 760, 90, 90, 80, 560
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    f_title, f_text, f_small = load_font(22), load_font(14), load_font(12)
    d.text((20, 14), "whaletop settings: scrolling frames per second against bytes per "
                     "second to the browser", fill="black", font=f_title)
    if caption:
        d.text((20, 46), caption[:210], fill=(80, 80, 80), font=f_small)
    most = max(p["scroll_mb_s"] for p in curve)
    x_max = 5.5 if most > 2.5 else max(0.5, -(-most * 1.25 // 0.5) * 0.5)
    y_max = max(60.0, *(p["scroll_fps"] * 1.15 for p in curve))
    x0, x1, y0, y1 = left, width - legend_w - 30, height - bottom, top

    def xy(mb: float, fps: float) -> tuple[float, float]:
        return x0 + (x1 - x0) * mb / x_max, y0 - (y0 - y1) * fps / y_max

    d.rectangle((x0, y1, x1, y0), outline=(120, 120, 120))
    step = 1.0 if x_max > 3 else 0.5 if x_max > 1 else 0.1
    k = 0.0
    while k <= x_max + 1e-9:
        x, _ = xy(k, 0)
        d.line((x, y0, x, y0 + 5), fill="black")
        d.text((x - 8, y0 + 8), f"{k:g}", fill="black", font=f_text)
        k += step
    for k10 in range(0, int(y_max) + 1, 10):
        _, y = xy(0, k10)
        d.line((x0 - 5, y, x0, y), fill="black")
        d.text((x0 - 35, y - 8), str(k10), fill="black", font=f_text)
    d.text((x0 + 60, y0 + 34), "MB/s to the browser while a terminal scrolls "
           + ("(the 5 MB/s target is off the right edge: every setting is far below it)"
              if x_max < 5 else ""), fill="black", font=f_text)
    d.text((10, y1 - 24), "frames/s", fill="black", font=f_text)
    red = (200, 60, 60)
    if x_max >= 5:
        tx, _ = xy(5, 0)
        d.line((tx, y1, tx, y0), fill=red, width=1)
        d.text((tx + 4, y1 + 4), "≤ 5 MB/s", fill=red, font=f_text)
    _, ty = xy(0, 30)
    d.line((x0, ty, x1, ty), fill=red, width=1)
    d.text((x1 - 70, ty - 20), "≥ 30 fps", fill=red, font=f_text)
    lx = width - legend_w
    d.text((lx, y1 - 24), "setting: keystroke p50 / p95, fps, MB/s", fill="black",
           font=f_text)
    for n, p in enumerate(curve, 1):
        x, y = xy(p["scroll_mb_s"], p["scroll_fps"])
        r = 4 + min(16.0, p["key_p95_ms"] / 6)
        colour = (40, 160, 90) if p["key_p95_ms"] <= 25 else (230, 140, 30)
        d.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=2)
        d.text((x + r + 2, y - 8), str(n), fill="black", font=f_text)
        d.text((lx, y1 + 4 + 22 * (n - 1)),
               f"{n:>2}  {p['name'][:44]}: {p['key_p50_ms']:.0f} / {p['key_p95_ms']:.0f} ms, "
               f"{p['scroll_fps']:.0f} fps, {p['scroll_mb_s']:.2f}", fill=colour
               if colour != (40, 160, 90) else (20, 110, 60), font=f_small)
    d.text((20, height - 24), "dot radius grows with the keystroke p95; green: p95 ≤ 25 ms, "
           "orange: above", fill=(80, 80, 80), font=f_text)
    img.save(path)
