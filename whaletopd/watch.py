"""Watching files: a burst of inotify events becomes one call of a callback.

whaletopd watches two things: the tree under /Apps (the menu) and the folder holding
--tls-certificate.  For both, the callback only posts an event to the daemon's loop,
which does the work; what this module decides is when, and how often, it is called.

Calls are debounced: one comes `quiet` seconds after the last event of a burst, and at
the latest `max_delay` seconds after its first, so that a stream of writes that never
pauses (a copy of thousands of files) still gets the menu updated as it goes.  The
timing is the pure class Burst; the Debouncer thread only waits for what it says.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import watchdog.events as wev
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from whaletopd import logs
from whaletopd.apps_scan import SUFFIX, inside

log = logs.get("whaletopd.watch")

# Events that can change what a watcher's user reads.  Opens and reads are left out: the
# menu mapper's own reads produce them, and a sync must not trigger the next one.
WRITE_EVENTS = frozenset({"created", "modified", "moved", "deleted", "closed", "attrib"})


def _classes(*names: str) -> list[type[FileSystemEvent]]:
    """The watchdog event classes of these names that this watchdog has: a chmod (which
    can make a .desktop file unreadable) is "modified" to watchdog 6, and an event of
    its own, filtered out unless asked for, to newer ones."""
    return [getattr(wev, name) for name in names if hasattr(wev, name)]


# The same, as inotify masks: events left out are never even delivered.  The folder
# above /Apps is often "/", where every `ls` and every HEALTHCHECK opens and reads.
TREE_EVENTS = _classes(
    "FileCreatedEvent", "FileModifiedEvent", "FileAttribEvent", "FileMovedEvent",
    "FileDeletedEvent", "FileClosedEvent", "DirCreatedEvent", "DirModifiedEvent",
    "DirAttribEvent", "DirMovedEvent", "DirDeletedEvent")
# Above the tree only its own arrival, departure or replacement matters.
ANCHOR_EVENTS = _classes(
    "DirCreatedEvent", "DirMovedEvent", "DirDeletedEvent", "FileCreatedEvent",
    "FileMovedEvent", "FileDeletedEvent")
# A certificate folder: writes, renames (the kubelet's `..data` swap) and deletions.
FOLDER_EVENTS = _classes(
    "FileCreatedEvent", "FileModifiedEvent", "FileClosedEvent", "FileMovedEvent",
    "FileDeletedEvent", "DirMovedEvent")


@dataclass
class Burst:
    """Pokes not yet acted on.  Pure: tests drive it with made-up times."""

    quiet: float
    max_delay: float
    first: float | None = None
    last: float = 0.0

    def poke(self, now: float) -> None:
        if self.first is None:
            self.first = now
        self.last = now

    def due(self) -> float | None:
        """When to act on the pokes so far; None when there are none."""
        if self.first is None:
            return None
        return min(self.last + self.quiet, self.first + self.max_delay)

    def take(self, now: float) -> bool:
        """True, and a new burst begins, when the pokes so far are due at `now`."""
        due = self.due()
        if due is None or now < due:
            return False
        self.first = None
        return True


class Debouncer:
    """Calls `action` once per burst of poke()s, from its own thread (see Burst)."""

    def __init__(self, action: Callable[[], None], *, quiet: float, max_delay: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._action = action
        self._clock = clock
        self._burst = Burst(quiet, max_delay)
        self._cond = threading.Condition()
        self._running = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="debounce", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        with self._cond:
            self._burst.poke(self._clock())
            self._cond.notify_all()

    def idle(self, timeout: float) -> bool:
        """Wait until no poke is pending and `action` is not running; False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._burst.first is None and not self._running, timeout)

    def stop(self) -> None:
        """Returns when `action` neither runs nor will run (unless called from it)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while self._next():
            try:
                self._action()
            except Exception:
                log.exception("watch_callback_failed")
            finally:
                with self._cond:
                    self._running = False
                    self._cond.notify_all()

    def _next(self) -> bool:
        """Wait until a burst is due (True) or stop() is called (False)."""
        with self._cond:
            while not self._stopping:
                if self._burst.take(now := self._clock()):
                    self._running = True
                    return True
                due = self._burst.due()
                self._cond.wait(None if due is None else due - now)
            return False


class _Handler(FileSystemEventHandler):
    def __init__(self, callback: Callable[[FileSystemEvent], None]) -> None:
        super().__init__()
        self._callback = callback

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._callback(event)


def _paths(event: FileSystemEvent) -> list[str]:
    return [p for p in (os.fsdecode(event.src_path), os.fsdecode(event.dest_path)) if p]


def in_tree(event: FileSystemEvent, root: str, real: str, anchor: str) -> bool:
    """Whether an event can change what the tree under `root` maps.

    `real` is where root resolves to (events inside a symlinked root are named from
    there) and `anchor` the watched folder above it.  Root or a parent of it coming,
    going or being replaced matters; inside, only folders and .desktop files do.
    """
    if event.event_type not in WRITE_EVENTS:
        return False
    for path in _paths(event):
        if path == anchor and event.event_type not in {"deleted", "moved"}:
            continue  # a sibling of root came or went
        if inside(root, path):  # root or one of its parents
            return True
        if ((event.is_directory or path.endswith(SUFFIX))
                and (inside(path, root) or inside(path, real))):
            return True
    return False


@dataclass(frozen=True)
class _Armed:
    path: str
    watch: ObservedWatch
    ident: tuple[int, int] | None = None  # (dev, ino) of the watched folder


class Watcher:
    """Calls on_change() once per burst of changes to `path`, from its own thread.

    tree=True watches the tree under `path` (/Apps): every folder in it, for changes
    to folders and .desktop files.  The nearest existing parent is watched too, so a
    root created, removed, replaced or mounted after start() is followed; a symlinked
    root is watched where it points.  tree=False watches the one folder `path` (a
    certificate's): any file in it written, created, renamed over or deleted.  Reads
    cause no call in either.  Calls come `quiet` seconds after a burst's last event,
    and at least every `max_delay` seconds while events keep coming.
    """

    def __init__(self, path: Path, on_change: Callable[[], None], *, tree: bool,
                 quiet: float = 0.05, max_delay: float = 0.5) -> None:
        self.path = os.path.abspath(path)
        self.tree = tree
        self._on_change = on_change
        self._debouncer = Debouncer(self._fire, quiet=quiet, max_delay=max_delay,
                                    clock=self._now)
        self._handler = _Handler(self._event)
        self._observer: BaseObserver | None = None
        self._lock = threading.Lock()
        self._anchor: _Armed | None = None
        self._watched: _Armed | None = None

    def start(self) -> None:
        """Watch.  On return the inotify watches are in place: any change made after
        start() returns is seen.  start() itself does not call on_change.  Raises
        OSError when (tree=False) the folder cannot be watched."""
        self._observer = Observer()
        self._observer.start()
        try:
            if self.tree:
                self._arm()
            else:
                real = os.path.realpath(self.path)
                self._watched = _Armed(real, self._observer.schedule(
                    self._handler, real, event_filter=FOLDER_EVENTS))
        except OSError:
            self._stop_observer()
            raise
        self._debouncer.start()

    def stop(self) -> None:
        """Stop watching; returns when no on_change() call runs nor will run."""
        self._debouncer.stop()
        self._stop_observer()

    def idle(self, timeout: float) -> bool:
        """Wait until no change is pending and on_change() is not running; False on
        timeout.  An event inotify has not delivered yet is not known here."""
        return self._debouncer.idle(timeout)

    def _now(self) -> float:
        """The debouncer's clock (a seam: tests run a watcher on a made-up clock)."""
        return time.monotonic()

    def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            with contextlib.suppress(RuntimeError):  # never started
                observer.join()

    def _event(self, event: FileSystemEvent) -> None:
        """Runs in watchdog's thread: only decides and pokes."""
        if self.tree:
            watched, anchor = self._watched, self._anchor
            matters = in_tree(event, self.path, watched.path if watched else self.path,
                              anchor.path if anchor else "")
        else:
            matters = event.event_type in WRITE_EVENTS
        if matters:
            self._debouncer.poke()

    def _fire(self) -> None:
        """Runs in the debouncer's thread, once per burst."""
        # Re-armed at every burst, not only after events that look like the root was
        # replaced: a few stats, and no event type can be misjudged.
        rearmed = self.tree and self._arm()
        try:
            self._on_change()
        except Exception:
            log.exception("watch_callback_failed", path=self.path)
        if rearmed:
            # Whatever the new watch missed before it was placed, this call's reader
            # or the next one sees.
            self._debouncer.poke()

    def _arm(self) -> bool:
        """Watch what exists now; True when the tree's watch was (re)placed."""
        with self._lock:
            try:
                return self._arm_locked()
            except OSError as exc:  # a folder vanished meanwhile: the next event re-arms
                log.warning("watch_failed", path=self.path, error=str(exc))
                return False

    def _arm_locked(self) -> bool:
        observer = self._observer
        if observer is None:
            return False
        anchor = os.path.dirname(self.path)
        while not os.path.isdir(anchor) and anchor != os.path.dirname(anchor):
            anchor = os.path.dirname(anchor)
        if self._anchor is None or self._anchor.path != anchor:
            self._unschedule(self._anchor)
            self._anchor = None
            self._anchor = _Armed(anchor, observer.schedule(
                self._handler, anchor, event_filter=ANCHOR_EVENTS))
        try:
            st = os.stat(self.path)
            ident = (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None
        except OSError:
            ident = None
        if ident == (self._watched.ident if self._watched else None):
            return False
        self._unschedule(self._watched)
        self._watched = None
        if ident is not None:
            # inotify does not follow a symlinked root: watch where it points.
            real = os.path.realpath(self.path)
            self._watched = _Armed(real, observer.schedule(
                self._handler, real, recursive=True, event_filter=TREE_EVENTS), ident)
        return True

    def _unschedule(self, armed: _Armed | None) -> None:
        if armed is not None and self._observer is not None:
            with contextlib.suppress(KeyError):
                self._observer.unschedule(armed.watch)
