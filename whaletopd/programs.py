"""The desktop's children as data, like the [program:x] sections of Supervisor: each row
says how a child is started, when it counts as ready, whether a restart repairs it, when
it stops, and which health checks point at it.  supervisor.py runs whatever this table
says; adding a child is adding a row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from whaletopd.backoff import Restart
from whaletopd.config import Config
from whaletopd.paths import Paths

DISPLAY = 1
# Xvnc logs every connection (status, level 10), health probes included, a dozen lines
# each: keep only errors (level 0) of those modules.  websockify logs browser connections.
XVNC_LOG = ",".join(["*:stderr:30"] + [
    f"{module}:stderr:0"
    for module in ("Connections", "SConnection", "VNCSConnST", "EncodeManager",
                   "ComparingUpdateTracker")])


@dataclass(frozen=True)
class Launch:
    """What command lines are made of: the configuration, where things are, and what
    other parts provide (the web front's certificate file, a readiness pipe)."""

    config: Config
    paths: Paths
    web_pem: Path | None = None  # websockify's certificate and key, with TLS
    ready_fd: int | None = None  # the pipe a `displayfd` program writes to when ready


@dataclass(frozen=True)
class Program:
    name: str
    argv: Callable[[Launch], list[str]]
    # "started": ready once spawned; "displayfd": ready when it writes to its pipe.
    ready: Literal["started", "displayfd"] = "started"
    after: str | None = None  # started only once this program is ready
    restart: Restart | None = None  # None: its death loses the user's windows
    stop_order: int = 0  # lower stops first
    probes: tuple[str, ...] = ()  # health checks whose failure this child is blamed for


def xvnc_argv(launch: Launch) -> list[str]:
    cfg, paths = launch.config, launch.paths
    return [
        "Xvnc", f":{DISPLAY}",
        "-geometry", cfg.geometry, "-depth", str(cfg.depth),
        "-rfbport", str(cfg.vnc_port),
        "-localhost", "0" if cfg.expose_vnc else "1",
        "-SecurityTypes", "VncAuth", "-PasswordFile", str(paths.vnc_auth),
        "-AlwaysShared", "-AcceptSetDesktopSize", "-desktop", "whaletop",
        "-nolisten", "tcp", "-nolisten", "local", "-Log", XVNC_LOG,
        "-displayfd", str(launch.ready_fd),
    ]


def websockify_argv(launch: Launch) -> list[str]:
    cfg = launch.config
    tls = [] if launch.web_pem is None else ["--cert", str(launch.web_pem), "--ssl-only"]
    # It needs only the VNC port number, not a running Xvnc: it starts alongside.
    return ["websockify", *tls, "--web", str(launch.paths.novnc_dir),
            f"0.0.0.0:{cfg.web_port}", f"127.0.0.1:{cfg.vnc_port}"]


def session_argv(launch: Launch) -> list[str]:
    return ["dbus-run-session", "--", "startlxde"]


PROGRAMS: tuple[Program, ...] = (
    Program("xvnc", xvnc_argv, ready="displayfd", stop_order=3, probes=("x_display",)),
    Program("websockify", websockify_argv, restart=Restart(), stop_order=2,
            probes=("websocket_login", "novnc_page")),
    Program("session", session_argv, after="xvnc", stop_order=1),
)


def blame(programs: Iterable[Program]) -> dict[str, str]:
    """Health check name -> the program its failure points at."""
    return {probe: p.name for p in programs for probe in p.probes}
