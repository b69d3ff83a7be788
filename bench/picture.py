"""timeline.png: the start-up timeline as a Gantt chart (Pillow, imported only here so the
runner works without it)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.timeline import Timeline

COLOURS = {"docker": (120, 130, 140), "python": (142, 92, 190), "provision": (52, 120, 200),
           "launch": (40, 160, 90), "child": (230, 140, 30), "probe": (210, 60, 60),
           "host": (30, 160, 170)}
KIND_NAMES = {"docker": "Docker", "python": "interpreter", "provision": "provisioning step",
              "launch": "launch step", "child": "child start-up", "probe": "health probes",
              "host": "status write + runner's poll"}


def draw_timeline(panels: Sequence[tuple[str, Timeline]], subtitle: str, path: Path) -> None:
    """A Gantt chart per panel, one row per span, time in ms.  ImportError without Pillow."""
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
