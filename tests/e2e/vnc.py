"""A real VNC client (vncdotool) for the e2e tests."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

VNCDO = str(Path(sys.executable).parent / "vncdo")


def capture(password: str, out: Path, port: int = 5901) -> subprocess.CompletedProcess[str]:
    """Log in with `password` and save the screen; returncode 0 only on success."""
    return subprocess.run(
        [VNCDO, "-s", f"127.0.0.1::{port}", "-p", password, "capture", str(out)],
        capture_output=True, text=True, timeout=60, check=False)


def capture_drawn(password: str, out: Path, attempts: int = 40) -> bool:
    """HEALTHY means a client can log in; the session paints a moment later: retry."""
    for _ in range(attempts):
        if capture(password, out).returncode == 0 and looks_drawn(out):
            return True
        time.sleep(0.5)
    return False


def looks_drawn(png: Path) -> bool:
    """A desktop, not a black or grey screen: many colours, and a panel at the bottom."""
    with Image.open(png) as img:
        rgb = img.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        panel = rgb.crop((0, rgb.height - 30, rgb.width, rgb.height))
        panel_colours = panel.getcolors(maxcolors=1 << 16) or []
    return len(colours) > 200 and len(panel_colours) > 10
