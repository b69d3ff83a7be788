"""What is measured: the figures, their targets, the groups they run in, and the verdict."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    target: float | None  # every target is an upper bound; None: reported only
    digits: int
    condition: str = ""  # an extra requirement shown with the target (exit code)
    original: str = ""  # the original project's figure, for context


SESSIONS = 3  # VNC sessions open through the web port while the certificate rotates

FLEET_SIZES = (1, 2, 4, 8, 16)  # desktops at once in the fleet group

FIGURES: list[Figure] = [
    Figure("start_healthy", "docker run → status HEALTHY", "s", 0.8, 3, original="3.6 s"),
    Figure("start_http", "docker run → noVNC page served (HTTP 200)", "s", 0.8, 3),
    Figure("start_https", "docker run → noVNC page served over TLS (self-signed generated)",
           "s", 0.9, 3, original="5-10 s"),
    Figure("start_healthy_tls", "docker run → status HEALTHY with TLS", "s", None, 3),
    Figure("page_cold", "noVNC page fully loaded in the browser (all assets, fresh profile)",
           "s", None, 3),
    Figure("page_warm", "noVNC page loaded again, same profile (cached, revalidated: 304)",
           "s", None, 3),
    Figure("page_bytes", "noVNC page's assets transferred (fresh profile)", "kB", None, 0),
    Figure("kill_leaves_healthy", "kill -9 Xvnc → status leaves HEALTHY", "s", 0.05, 3),
    Figure("kill_exited", "kill -9 Xvnc → container exited", "s", 0.5, 3,
           condition="exit ≠ 0"),
    Figure("stop", "docker stop of a HEALTHY desktop", "s", 1.0, 3, condition="exit 0",
           original="10 s, SIGKILL"),
    Figure("restart_healthy", "docker restart → HEALTHY again", "s", 1.5, 3),
    Figure("idle_cpu", "whaletopd CPU while idle and HEALTHY", "CPU-s/min", 0.02, 4,
           original="0.04-0.06"),
    Figure("daemon_rss", "whaletopd RSS (idle)", "MiB", 30.0, 1, original="25.3 MB"),
    Figure("daemon_rss_tls", "whaletopd RSS (idle, --enable-tls)", "MiB", 30.0, 1),
    Figure("container_mem", "container memory when idle (cgroup, as docker stats)", "MiB",
           None, 1),
    Figure("container_cpu", "container CPU while idle (cgroup; HEALTHCHECK included)",
           "CPU-s/min", 0.05, 3, original="0.083"),
    Figure("unused_mem", "container memory of a desktop nobody uses (--stop-when-idle, "
           "before it stops)", "MiB", None, 1),
    Figure("unused_cpu", "container CPU of a desktop nobody uses (before it stops)",
           "CPU-s/min", None, 3),
    Figure("idle_stop_late", "--stop-when-idle: container exited, after its timeout", "s",
           None, 3, condition="exit 0"),
    Figure("unused_mem_after", "memory of that desktop after it stopped itself", "MiB",
           None, 1),
    Figure("image_size", "image size (with Chromium)", "MB", 1000.0, 0, original="1882 MB"),
    Figure("apps_copied", ".desktop written under /Apps → in the menu folder", "s",
           None, 3),
    Figure("apps_menu", ".desktop written under /Apps → menu entry (LXDE menu cache)", "s",
           0.3, 3),
    Figure("cert_served", "new certificate written → served", "s", 1.0, 3),
    Figure("cert_healthy", "new certificate written → HEALTHY again", "s", None, 3),
    Figure("cert_dropped", f"VNC sessions dropped by the rotation (of {SESSIONS} open)",
           "sessions", 0.0, 0, condition="every run"),
    Figure("home_empty", "docker run → HEALTHY, empty mounted home", "s", None, 3),
    Figure("home_big", "docker run → HEALTHY, 100,000-file mounted home", "s", None, 3),
    Figure("sound_latency", "sound: paplay starts in the container → the page's analyser "
           "hears it", "s", 0.25, 3),
    Figure("sound_bitrate", "sound: WebSocket bitrate while noise plays (Opus)", "kbit/s",
           160.0, 0),
    Figure("sound_cpu", "sound: pipeline CPU while playing to a listener (bridge + parec)",
           "% of a core", 5.0, 2),
    Figure("sound_cpu_unheard", "sound: pipeline CPU while playing to nobody", "% of a core",
           0.1, 2),
    Figure("sound_image", "sound: image growth (packages that came with it)", "MB", 60.0, 1),
    Figure("home_ratio", "start with a 100,000-file home ÷ with an empty one", "ratio", 1.1, 3),
    Figure("key_p50", "key typed in the noVNC page → its glyph drawn on the canvas, p50",
           "ms", None, 1),
    Figure("key_p95", "key typed in the noVNC page → its glyph drawn on the canvas, p95",
           "ms", 25.0, 1),
    Figure("scroll_frame", "scrolling terminal: time per frame drawn by the page "
           "(1000 / fps; ≥ 30 fps)", "ms", 33.3, 1),
    Figure("scroll_bytes", "scrolling terminal: bytes to the browser (WebSocket, 1280x800)",
           "MB/s", 5.0, 2),
    Figure("still_cpu", "Xvnc + websockify + nginx CPU, one page connected, desktop still",
           "% of a core", 0.5, 3),
    Figure("files_up", "upload through the front door (PUT /files/Desktop/, 512 MiB)",
           "MB/s", None, 0),
    Figure("files_down", "download through the front door (GET /files/Downloads/, "
           "512 MiB)", "MB/s", None, 0),
    Figure("files_up_tls", "upload over TLS (512 MiB)", "MB/s", None, 0),
    Figure("files_down_tls", "download over TLS (512 MiB)", "MB/s", None, 0),
    # Desktops per host (bench/fleet.py): N started together; memory and CPU per desktop.
    *(row for n in FLEET_SIZES for row in (
        Figure(f"fleet_healthy_{n}", f"{n} desktop(s) started together → all HEALTHY", "s",
               5.0 if n == 8 else None, 2),
        Figure(f"fleet_mem_{n}", f"{n} idle desktop(s): memory per desktop (cgroup, as "
               "docker stats)", "MiB", 120.0, 1),
        Figure(f"fleet_anon_{n}", f"{n} idle desktop(s): anonymous memory per desktop "
               "(cgroup rss: not shared)", "MiB", None, 1),
        Figure(f"fleet_cpu_{n}", f"{n} idle desktop(s): CPU per desktop (cgroup)",
               "CPU-s/min", None, 3))),
]
BY_KEY = {f.key: f for f in FIGURES}

# Groups of figures measured together, in the order they run (--only takes these names).
GROUPS: dict[str, list[str]] = {
    "image": ["image_size"],
    "start": ["start_healthy", "restart_healthy", "stop"],
    "http": ["start_http"],
    "tls": ["start_https", "start_healthy_tls"],
    "browser": ["page_cold", "page_warm", "page_bytes"],
    "kill": ["kill_leaves_healthy", "kill_exited"],
    "apps": ["apps_copied", "apps_menu"],
    "cert": ["cert_served", "cert_healthy", "cert_dropped"],
    "home": ["home_empty", "home_big", "home_ratio"],
    "idle": ["idle_cpu", "daemon_rss", "container_mem", "container_cpu"],
    "sound": ["sound_latency", "sound_bitrate", "sound_cpu", "sound_cpu_unheard",
              "sound_image"],
    "idle_stop": ["unused_mem", "unused_cpu", "idle_stop_late", "unused_mem_after"],
    "interactive": ["key_p50", "key_p95", "scroll_frame", "scroll_bytes", "still_cpu"],
    "files": ["files_up", "files_down", "files_up_tls", "files_down_tls"],
    "fleet": [f"fleet_{what}_{n}" for n in FLEET_SIZES
              for what in ("healthy", "mem", "anon", "cpu")],
    "idle_tls": ["daemon_rss_tls"],
}


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and count of the runs; None for each when there is none."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def verdict(fig: Figure, median: float | None, conditions_ok: bool = True,
            error: str | None = None, skipped: str | None = None) -> str:
    """'yes' / 'no' against the target (judged on the median), '—' without one;
    'skipped' when the runner could not measure it here (no browser), 'error' when a
    measurement failed."""
    if error:
        return "error"
    if skipped and median is None:
        return "skipped"
    if median is None:
        return "—" if fig.target is None else "no data"
    if fig.target is None:
        return "—"
    return "yes" if median <= fig.target and conditions_ok else "no"


def format_value(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def format_target(fig: Figure) -> str:
    if fig.target is None:
        return "report"
    bound = "" if fig.target == 0 else "≤ "  # nothing at all: "0 sessions"
    text = f"{bound}{fig.target:g}" + ("" if fig.unit == "ratio" else f" {fig.unit}")
    return text + (f", {fig.condition}" if fig.condition else "")
