"""Switching the session's keyboard layout from the page, without a server of our own.

The page (whaletop-keys.js) sends `PUT /whaletop/keyboard/layout` with a layout's name
as the body.  nginx's own WebDAV module writes it, as its worker's account, into the
requests folder (only full access may: with sign-in, the sign-in service answers 403 to
a viewer; without sign-in, nginx asks for HTTP Basic with the desktop's user name and
the full VNC password, as for files: see nginx_conf.py), one file per person:
`layout.NAME` (NAME as the sign-in service or HTTP Basic named them; never holds '/').
A watch on that folder (watch.py) posts KeyboardAsked; the machine hands the work to a
worker thread, which takes every request file (read bounded, never through a link,
deleted), checks the last one against xkb-data and the page's list, and runs setxkbmap
as the desktop user on the display.  The loop then remembers the new layout (a fresh
session after a crash gets it), rewrites the file nginx serves at /whaletop/keyboard,
and logs one line, `keyboard_layout_changed`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from whaletopd import keyboard, logs
from whaletopd.children import RunAs
from whaletopd.config import Config
from whaletopd.events import EventQueue, KeyboardAsked
from whaletopd.files import ReadRefused, atomic_write, read_regular
from whaletopd.paths import Paths

if TYPE_CHECKING:
    from whaletopd.watch import Watcher

log = logs.get("whaletopd")
# What the page can ask for: the layouts it tells apart (whaletop-keys.js guessLayout).
CHOICES = ("us", "de", "fr")
MAX_BODY = 64  # bytes: a layout's name and a line end; nginx refuses more (413)
REQUEST_PREFIX = "layout."
SETXKBMAP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Asked:
    """What a worker found in the requests folder: the layout to apply (None: nothing
    usable), and who asked ("" when nobody could be named)."""

    layout: str | None
    who: str = ""


def check(body: bytes) -> str | None:
    """Why a request's body is no layout the page may ask for; None when it is one."""
    try:
        text = body.decode("ascii").strip()
    except UnicodeDecodeError:
        return "is not ASCII"
    if (why := keyboard.problem(text)) is not None:
        return why
    if text not in CHOICES:
        return f"is not one the page may ask for ({', '.join(CHOICES)})"
    return None


def shown(body: bytes) -> str | None:
    """The body, for a log line, only when it looks like a layout's name (a request
    file is the web account's: it must not carry another file's bytes into the log)."""
    text = body.decode("ascii", errors="replace").strip()
    return text if keyboard.LAYOUT_RE.fullmatch(text) else None


class KeyboardSwitch:
    """Owns the session's current layout, the file nginx serves at /whaletop/keyboard,
    and the requests folder and its watch."""

    def __init__(self, config: Config, paths: Paths, events: EventQueue) -> None:
        self._config = config
        self._paths = paths
        self._events = events
        self.layout = config.keyboard_layout
        self._watcher: Watcher | None = None

    # -- before the children start ------------------------------------------------------

    def prepare(self, web: RunAs | None) -> None:
        """The served file, and the requests folder: the web account's (nginx's
        worker writes there), 0700, emptied of a previous run's requests.  Raises
        OSError."""
        folder = self._paths.keyboard_file.parent
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        self.publish()
        requests = self._paths.requests_dir
        requests.mkdir(parents=True, exist_ok=True)
        for leftover in requests.iterdir():
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                leftover.unlink()
        if web is not None and os.geteuid() == 0:
            os.chown(requests, web.uid, web.gid)
        requests.chmod(0o700)

    def watch(self) -> None:
        from whaletopd.watch import Watcher  # watchdog, loaded once it is needed

        self._watcher = Watcher(self._paths.requests_dir,
                                lambda: self._events.post(KeyboardAsked()),
                                tree=False, quiet=0.05)
        self._watcher.start()

    def publish(self) -> None:
        """What the page reads at /whaletop/keyboard, rewritten whole."""
        # How the page asks: with its sign-in session, or (default mode) with HTTP
        # Basic, the desktop's user name and the VNC password the person typed.
        auth = ({"auth": "sign-in"} if self._config.sign_in else
                {"auth": "vnc-password", "user": self._config.username})
        doc = {"layout": self.layout, "dpi": self._config.dpi, "switch": True,
               "choices": list(CHOICES), **auth}
        atomic_write(self._paths.keyboard_file, json.dumps(doc) + "\n", mode=0o644,
                     durable=False)

    # -- a request (in a worker thread) ---------------------------------------------------

    def take(self) -> Asked:
        """Every request file, read and deleted; the newest usable one wins.  A bad one
        is one warning line and changes nothing."""
        found: list[tuple[float, str, bytes]] = []
        try:
            names = os.listdir(self._paths.requests_dir)
        except OSError as exc:
            log.warning("keyboard_request_unreadable", folder=str(self._paths.requests_dir),
                        error=exc.strerror)
            return Asked(None)
        for name in names:
            path = self._paths.requests_dir / name
            who = name.removeprefix(REQUEST_PREFIX) if name.startswith(REQUEST_PREFIX) else ""
            try:
                mtime = os.lstat(path).st_mtime
                body = read_regular(path, MAX_BODY, follow=False)
            except FileNotFoundError:
                continue  # taken by the worker before
            except ReadRefused as exc:
                if isinstance(exc.error, FileNotFoundError):
                    continue
                log.warning("keyboard_request_refused", who=who,
                            reason={"kind": "not a regular file",
                                    "size": f"over {MAX_BODY} bytes"}.get(
                                        exc.step, f"unreadable: {exc.strerror}"),
                            hint="only nginx's PUT writes in this folder")
                body = None
            except OSError as exc:
                log.warning("keyboard_request_refused", who=who,
                            reason=f"unreadable ({exc.strerror})",
                            hint="only nginx's PUT writes in this folder")
                body = None
            finally:
                with contextlib.suppress(OSError):
                    path.unlink()
            if body is None:
                continue
            if (why := check(body)) is not None:
                log.warning("keyboard_request_refused", who=who, layout=shown(body),
                            reason=f"the layout {why}", layout_now=self.layout,
                            hint=f"ask for one of {', '.join(CHOICES)}")
                continue
            found.append((mtime, who, body))
        if not found:
            return Asked(None)
        _, who, body = max(found)
        return Asked(body.decode("ascii").strip(), who)

    def apply(self, layout: str, run_as: RunAs, env: Mapping[str, str]) -> bool:
        """setxkbmap as the desktop user on the display; False (and a warning) when it
        fails."""
        name, variant = keyboard.split(layout)
        root = os.geteuid() == 0
        try:
            result = subprocess.run(
                ["setxkbmap", "-layout", name, "-variant", variant, "-option", ""],
                env=dict(env), cwd=run_as.home, capture_output=True, check=False,
                timeout=SETXKBMAP_TIMEOUT, stdin=subprocess.DEVNULL,
                user=run_as.uid if root else None, group=run_as.gid if root else None,
                extra_groups=list(run_as.groups) if root else None)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("keyboard_layout_failed", layout=layout, error=str(exc),
                        hint="the layout stays as it was; is the X server up?")
            return False
        if result.returncode != 0:
            err = result.stderr.decode(errors="replace").strip().splitlines()
            log.warning("keyboard_layout_failed", layout=layout, code=result.returncode,
                        error=err[-1] if err else "", hint="the layout stays as it was")
            return False
        return True

    # -- back on the loop ---------------------------------------------------------------

    def switched(self, layout: str, who: str) -> None:
        """setxkbmap applied it: remembered for the next session, served, logged."""
        old, self.layout = self.layout, layout
        log.info("keyboard_layout_changed", old=old, new=layout, who=who or None)
        try:
            self.publish()
        except OSError as exc:
            log.warning("keyboard_publish_failed", path=str(self._paths.keyboard_file),
                        error=exc.strerror, hint="/whaletop/keyboard says the old layout "
                                                 "until the file can be written")

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
