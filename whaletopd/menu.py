"""The part that owns /Apps in the menu: the mapper (apps.py) and the watch on /Apps.
Mapped before the session starts, and again on every change the watcher reports
(apps_changed), each change one log line.

LXDE's menu comes from menu-cached, which the session starts: it reads the application
folders, writes its cache, then sets up its own watches.  A file mapped in between is
missed until the next change.  So the part keeps looking (settle(), on a deadline the
desktop arms) until menu-cached is up, and if anything was mapped since the session
started, touches the folder once: menu-cached then reads it all again.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whaletopd import logs
from whaletopd.events import AppsChanged, EventQueue
from whaletopd.paths import Paths

if TYPE_CHECKING:
    from whaletopd.apps import AppMapper, Change
    from whaletopd.watch import Watcher

log = logs.get("whaletopd")
# menu-cached's watches are in place this long after its socket appeared, at the latest
# (measured: its cache is written ~0.1 s after the socket, the watches right after).
MENU_CACHED_SETTLE = 1.0
SETTLE_CHECKS = 120  # how many looks (one every SETTLE_INTERVAL) before giving up
SETTLE_INTERVAL = 0.25
FS_TIME_SLACK = 0.05  # file times are coarser than the clock


@dataclass
class _Session:
    """What is known of the session's menu-cached since the session started."""

    started: float  # wall clock: compared with file times
    cache_dir: Path
    socket: Path | None
    mapped_since: bool = False  # something in the folder changed since `started`
    checks: int = 0
    socket_seen: float | None = None  # clock time of the look that first saw the socket
    cache_seen: int | None = None  # the look that first saw a cache written since `started`


def _watching(s: _Session, now: float) -> bool:
    """menu-cached has read the folders and watches them: its cache was written since the
    session started and a look has passed since (the watches come right after the
    cache), or its socket has been there for MENU_CACHED_SETTLE."""
    if s.socket_seen is None and s.socket is not None and s.socket.exists():
        s.socket_seen = now
    if s.cache_seen is None and _newest(s.cache_dir) >= s.started - FS_TIME_SLACK:
        s.cache_seen = s.checks
    return ((s.cache_seen is not None and s.checks > s.cache_seen)
            or (s.socket_seen is not None and now - s.socket_seen >= MENU_CACHED_SETTLE))


class AppMenu:
    def __init__(self, paths: Paths, events: EventQueue,
                 clock: Callable[[], float] = time.time) -> None:
        self._paths = paths
        self._events = events
        self._clock = clock
        self._mapper: AppMapper | None = None
        self._watcher: Watcher | None = None
        self._session: _Session | None = None

    def start(self) -> dict[str, Any]:
        """Watch, then map: a file written during the first sync causes a second one."""
        # Imported here: watchdog's import is paid while Xvnc and websockify start, not
        # before the daemon's first status word.
        from whaletopd.apps import AppMapper
        from whaletopd.watch import Watcher

        self._mapper = AppMapper(self._paths.apps_root, self._paths.applications_dir,
                                 self._paths.apps_manifest)
        self._watcher = Watcher(self._paths.apps_root,
                                lambda: self._events.post(AppsChanged()), tree=True)
        self._watcher.start()
        changes = self.sync()
        return {"mapped": len(self._mapper.mapped()), "changes": changes}

    def sync(self) -> int:
        """Map the tree again; log and count what changed.  Never raises for a bad file
        or a manifest that cannot be written: one broken app must not stop the desktop."""
        if self._mapper is None:
            return 0
        try:
            changes = self._mapper.sync()
        except OSError as exc:
            log.error("apps_sync_failed", reason=str(exc))
            return 0
        for change in changes:
            _log_change(change)
        if changes and self._session is not None:
            self._session.mapped_since = True
        return len(changes)

    # -- menu-cached's start -------------------------------------------------------------

    def session_started(self, home: Path, runtime_dir: str | None) -> None:
        """The session (and soon its menu-cached) runs: settle() starts looking."""
        self._session = _Session(self._clock(), home / ".cache" / "menus",
                                 Path(runtime_dir) / "menu-cached-:1" if runtime_dir else None)

    def settle(self) -> bool:
        """One look at menu-cached; True when there is nothing more to wait for."""
        s = self._session
        if s is None:
            return True
        s.checks += 1
        if not _watching(s, self._clock()):
            if s.checks < SETTLE_CHECKS:
                return False
            log.info("menu_cache_not_seen", checks=s.checks,
                     reason="menu-cached did not start; the menu is read when it does")
        elif s.mapped_since:
            with contextlib.suppress(OSError):
                os.utime(self._paths.applications_dir)
                log.info("menu_refreshed", reason="apps mapped while menu-cached was starting")
        self._session = None
        return True

    def describe(self) -> dict[str, Any]:
        mapper = self._mapper
        return {"apps": mapper.mapped() if mapper else {},
                "apps_skipped": mapper.skipped() if mapper else {}}

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()


def _newest(folder: Path) -> float:
    """The newest modification time of a file in `folder` (0 when there is none)."""
    try:
        return max((e.stat().st_mtime for e in os.scandir(folder) if e.is_file()), default=0.0)
    except OSError:
        return 0.0


def _log_change(change: Change) -> None:
    fields = {"name": change.name, "source": change.source}
    if change.kind == "skipped":
        log.warning("app_skipped", reason=change.reason, **fields)
    else:
        log.info(f"app_{change.kind}", **fields,
                 **({"reason": change.reason} if change.reason else {}))
