"""The desktop's children as data, like the [program:x] sections of Supervisor: each row
says how a child is started, when it counts as ready, whether a restart repairs it, when
it stops, and which health checks point at it.  supervisor.py runs whatever this table
says; adding a child is adding a row.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from whaletopd import filedav, link
from whaletopd.backoff import Restart
from whaletopd.config import Config
from whaletopd.keyboard import session_prefix
from whaletopd.paths import Paths

DISPLAY = 1
# Xvnc logs every connection (status, level 10), health probes included, a dozen lines
# each: keep only errors (level 0) of those modules.  websockify logs browser connections.
XVNC_LOG = ",".join(["*:stderr:30"] + [
    f"{module}:stderr:0"
    for module in ("Connections", "SConnection", "VNCSConnST", "EncodeManager",
                   "ComparingUpdateTracker")])

# Sound's children: restarted like the web side's, and once their budget is used up,
# again when it allows (they are optional: the desktop never gives up on them).
SOUND_RESTART = Restart()
# WirePlumber's notices at each start (the image's drop-ins turn D-Bus, realtime
# scheduling and the hardware monitors off, so those say nothing).
PIPEWIRE_CHATTER = re.compile(
    r"Loading profile 'main'|skipping component .* because some of its dependencies")


@dataclass(frozen=True)
class Launch:
    """What command lines are made of: the configuration, where things are, and what
    other parts provide (a readiness pipe)."""

    config: Config
    paths: Paths
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
    # Who it runs as: the desktop user; "web", the web front's own account (www-data
    # when whaletopd is root); "root", a master that drops to "web" itself (nginx).
    account: Literal["desktop", "web", "root"] = "desktop"
    wanted: Callable[[Config], bool] | None = None  # None: always; else only when true
    quiet: re.Pattern[str] | None = None  # output lines that are routine: not logged
    json_lines: bool = False  # its output lines are JSON objects whose fields are kept
    # Exit codes that mean a person asked the desktop to stop (the session's Logout).
    stop_exits: tuple[int, ...] = ()
    # Optional (sound): HEALTHY does not wait for it, and its death is logged and
    # repaired (restarted, later again when its budget is used up) in whatever state the
    # desktop is, never changing that state.
    optional: bool = False

    def enabled(self, config: Config) -> bool:
        return self.wanted is None or self.wanted(config)


def xvnc_argv(launch: Launch) -> list[str]:
    cfg, paths = launch.config, launch.paths
    # RFB on a UNIX socket for websockify; TCP only when asked.  Every web client
    # reaches Xvnc through that one socket, so Xvnc's per-address blacklist would lock
    # out everyone (health checks included) for one guesser: nginx limits per address.
    tcp = (["-rfbport", str(cfg.vnc_port), "-localhost", "0"] if cfg.expose_vnc
           else ["-rfbport", "-1"])
    return [
        "Xvnc", f":{DISPLAY}",
        "-geometry", cfg.geometry, "-depth", str(cfg.depth), "-dpi", str(cfg.dpi),
        "-rfbunixpath", str(paths.vnc_socket), "-rfbunixmode", "0600", *tcp,
        "-UseBlacklist=0",
        "-SecurityTypes", "VncAuth", "-PasswordFile", str(paths.vnc_auth),
        "-AlwaysShared", "-AcceptSetDesktopSize", "-desktop", "whaletop",
        # noVNC's QEMU extended key events carry the physical key: mapped through the
        # session's layout (--keyboard-layout), not guessed back from the browser's
        # keysym (which loses dead keys: the browser has no keysym for them).
        "-RawKeyboard",
        *link.xvnc_args(cfg.link),
        # Only clients with the cookie (xauth.py): the X socket itself is 0777, as X's
        # are.  No TCP, no abstract socket ("local": with --network host, the host's).
        "-auth", str(paths.xauthority),
        "-nolisten", "tcp", "-nolisten", "local", "-Log", XVNC_LOG,
        "-displayfd", str(launch.ready_fd),
    ]


def websockify_argv(launch: Launch) -> list[str]:
    """The desktop's relay (vncrelay.py) between nginx and Xvnc, both on UNIX sockets:
    it took websockify's place (and row name: noVNC asks for /websockify), and reads
    what clients say.  It needs no running Xvnc to start."""
    paths = launch.paths
    return ["python3", "-m", "whaletopd.vncrelay", "--socket", str(paths.websockify_socket),
            "--settings", str(paths.relay_settings)]


def nginx_argv(launch: Launch) -> list[str]:
    # A killed nginx leaves the health checks' socket behind (a stopped one removes
    # it), and a new one could not bind to it: removed first.
    paths = launch.paths
    return ["/bin/sh", "-c", 'rm -f -- "$1" && exec nginx -c "$2" -p "$3" -e stderr',
            "nginx", str(paths.probe_socket), str(paths.nginx_conf), str(paths.nginx_dir)]


def webauth_argv(launch: Launch) -> list[str]:
    paths = launch.paths
    return ["python3", "-m", "whaletopd.webauth", "--socket", str(paths.auth_socket),
            "--settings", str(paths.web_dir / "auth.json")]


def files_argv(launch: Launch) -> list[str]:
    # The desktop user's nginx for /files/ (filedav.py), on a UNIX socket only; the
    # front nginx proxies to it after checking who asks.  A killed nginx leaves its
    # socket behind and a new one could not bind to it: removed first.  The desktop
    # user's PATH has no sbin.
    paths = launch.paths
    return ["/bin/sh", "-c", 'rm -f -- "$1" && exec "$2" -c "$3" -p "$4" -e stderr', "files",
            str(filedav.socket_path(paths)), filedav.NGINX, str(filedav.conf_path(paths)),
            str(filedav.files_dir(paths))]


def _file_transfer(config: Config) -> bool:
    return config.file_transfer


def _sign_in(config: Config) -> bool:
    return config.sign_in


def _sound(config: Config) -> bool:
    return config.sound


def _own_name(command: str) -> Callable[[Launch], list[str]]:
    def argv(launch: Launch) -> list[str]:
        return [command]
    return argv


def sound_argv(launch: Launch) -> list[str]:
    return ["python3", "-m", "whaletopd.sound", "--socket", str(launch.paths.sound_socket)]


def session_argv(launch: Launch) -> list[str]:
    # Keyboard layout and density first, on the ready X server (keyboard.py).
    cfg = launch.config
    return [*session_prefix(cfg.keyboard_layout, cfg.dpi),
            "dbus-run-session", "--", "startlxde"]


# The web side holds no user state: each is restarted when it dies or hangs, windows
# untouched.  nginx stops first (no new connections), then the sound bridge, the
# session before the sound server its programs play into, Xvnc last.
# The session: LXDE's Logout (lxsession-logout) sends SIGTERM to lxsession, and
# dbus-run-session exits 128 + 15 = 143 (0 when lxsession ends by itself; -15 when
# dbus-run-session itself gets the SIGTERM): the person asked to stop, so the desktop
# stops (exit 0).  Any other end is a crash: what is left of its process group is
# stopped and a fresh session starts on the same X server.
PROGRAMS: tuple[Program, ...] = (
    Program("xvnc", xvnc_argv, ready="displayfd", stop_order=8, probes=("x_display",)),
    Program("websockify", websockify_argv, restart=Restart(), stop_order=7,
            probes=("websockify_login",), json_lines=True),
    Program("nginx", nginx_argv, restart=Restart(), stop_order=0, account="root",
            probes=("web_login", "novnc_page"), json_lines=True),
    Program("webauth", webauth_argv, restart=Restart(), stop_order=2, account="web",
            probes=("sign_in_check",), wanted=_sign_in, json_lines=True),
    Program("files", files_argv, restart=Restart(), stop_order=9,
            wanted=_file_transfer),
    Program("session", session_argv, after="xvnc", restart=Restart(), stop_order=3,
            stop_exits=(0, 128 + signal.SIGTERM, -signal.SIGTERM)),
    # Sound (optional): PipeWire with its Pulse interface in the session's runtime folder
    # (the image's drop-ins make a "whaletop" null sink, the default one), and the bridge
    # that serves it to the page.  PipeWire's own configuration is the image's
    # (/etc/pipewire/*.conf.d/whaletop.conf).
    *(Program(name, _own_name(name), restart=SOUND_RESTART, stop_order=order,
              wanted=_sound, optional=True, quiet=PIPEWIRE_CHATTER)
      for name, order in (("pipewire", 6), ("wireplumber", 5), ("pipewire-pulse", 4))),
    Program("sound", sound_argv, restart=SOUND_RESTART, stop_order=1, wanted=_sound,
            optional=True, json_lines=True),
)


def blame(programs: Iterable[Program]) -> dict[str, str]:
    """Health check name -> the program its failure points at."""
    return {probe: p.name for p in programs for probe in p.probes}
