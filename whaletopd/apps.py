"""Applications in /Apps show up in the desktop's menu, live.

Any `.desktop` file anywhere under /Apps is copied into /usr/share/applications, where
LXDE's menu looks.  Images that extend ours add folders to /Apps and users mount more
(read-only) while the desktop runs, so copying once at start is not enough: a watcher
says when something changed and the mapper reconciles the whole target with the tree.

The target directory also holds Debian's own files, so the mapper only ever replaces
or removes a file it put there itself: a manifest (name -> source, sha256) remembers
which, and a file whose content is no longer what we wrote stops being ours.  Every
source that cannot be mapped is skipped with a short reason instead of failing: one
broken app must not hide the others, nor stop the desktop.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

from whaletopd import logs
from whaletopd.files import atomic_write

log = logs.get("whaletopd.apps")

SUFFIX = ".desktop"
MODE = 0o644
MAX_BYTES = 256 * 1024
MAX_FILES = 20000
GONE = "no such file"
# A file changed this recently may change again within the same timestamp tick without
# its stat changing, so its stat cannot vouch for its content yet ("racily clean").
RACY_NS = 2_000_000_000
# Events that can change what we map.  Opens and read-only closes are left out: the
# mapper's own reads produce them, and a sync must not trigger the next one.
WRITE_EVENTS = frozenset({"created", "modified", "moved", "deleted", "closed", "attrib"})

# The same, as inotify masks: events left out are never even delivered.  The folder
# above /Apps is often "/", where every `ls` and every HEALTHCHECK opens and reads.
TREE_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent, FileClosedEvent,
    DirCreatedEvent, DirModifiedEvent, DirMovedEvent, DirDeletedEvent]
ANCHOR_EVENTS: list[type[FileSystemEvent]] = [
    DirCreatedEvent, DirMovedEvent, DirDeletedEvent, FileCreatedEvent, FileMovedEvent,
    FileDeletedEvent]

Kind = Literal["added", "updated", "removed", "skipped"]


@dataclass(frozen=True)
class Change:
    """One thing a sync did or refused.  A folder-level skip has name ""."""

    kind: Kind
    name: str
    source: str = ""
    reason: str = ""


class _Invalid(Exception):
    """A source that cannot be mapped; str() is the reason a user reads."""


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    return f"unreadable: {exc.strerror or exc}"


def _inside(path: str, root_real: str) -> bool:
    return path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep)


def _read(path: str, root: Path, root_real: str, max_bytes: int) -> bytes:
    """The bytes of `path` if it is a small regular file inside root; else _Invalid."""
    try:
        st = os.stat(path)
        real = os.path.realpath(path, strict=True)
    except FileNotFoundError:
        raise _Invalid("broken symlink" if os.path.lexists(path) else GONE) from None
    except OSError as exc:
        raise _Invalid(_os_reason(exc)) from None
    if not _inside(real, root_real):
        raise _Invalid(f"symlink points outside {root}")
    # Checked before opening: opening a FIFO or a device can block or have effects.
    if not stat.S_ISREG(st.st_mode):
        raise _Invalid("not a regular file")
    if st.st_size > max_bytes:
        raise _Invalid(f"larger than {max_bytes} bytes")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _Invalid(GONE) from None
    except OSError as exc:
        raise _Invalid(_os_reason(exc)) from None
    with os.fdopen(fd, "rb") as f:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the stat above
                raise _Invalid("not a regular file")
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise _Invalid(_os_reason(exc)) from None
    if len(data) > max_bytes:
        raise _Invalid(f"larger than {max_bytes} bytes")
    return data


def check_entry(data: bytes) -> str | None:
    """Why LXDE's menu could not show this desktop entry, or None when it can."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    group: str | None = None
    found = False
    keys: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1]
            found = found or group == "Desktop Entry"
        elif group == "Desktop Entry" and "=" in line:
            key, _, value = line.partition("=")
            keys.setdefault(key.strip(), value.strip())  # the first of duplicates counts
    if not found:
        return "no [Desktop Entry] group"
    kind = keys.get("Type", "Application")
    if kind != "Application":
        return f"Type={kind} is not an application"
    if not keys.get("Name"):
        return "no Name="
    if not keys.get("Exec"):
        return "no Exec="
    return None


def validate(path: Path, root: Path, max_bytes: int = MAX_BYTES) -> str | None:
    """Why `path` cannot be mapped from `root`, or None when it can."""
    try:
        data = _read(os.fspath(path), root, os.path.realpath(root), max_bytes)
    except _Invalid as exc:
        return str(exc)
    return check_entry(data)


def _folder_link(path: str, loops: bool, root: Path, root_real: str) -> str:
    """Why a symlinked folder is not followed: outside root it is refused; inside, it only
    repeats a folder that the scan reads anyway."""
    real = os.path.realpath(path)
    if not _inside(real, root_real):
        return f"symlink points outside {root}"
    if loops:
        return "symlink loop"
    return f"same folder as {os.path.join(root, os.path.relpath(real, root_real))}"


def _is_name(name: object) -> bool:
    """A plain file name we may write in the target: manifest content never names a path."""
    return (isinstance(name, str) and name.endswith(SUFFIX) and len(name) > len(SUFFIX)
            and "/" not in name and "\0" not in name)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class _Seen:
    """What a source's stat vouches for: its sha256 when valid, else why it is not."""

    key: tuple[int, ...] | None
    sha: str
    reason: str


@dataclass(frozen=True)
class _Found:
    rel: str  # relative to root: two sources with one name are ranked by it
    path: str
    entry: os.DirEntry[str]


# Manifest: target file name -> (source path, sha256 of what we wrote).
Manifest = dict[str, tuple[str, str]]


class AppMapper:
    """Reconciles `target` with the .desktop files under `root`; see sync()."""

    def __init__(self, root: Path, target: Path, manifest: Path, *,
                 max_bytes: int = MAX_BYTES, max_files: int = MAX_FILES) -> None:
        self.root = root
        self.target = target
        self.manifest_path = manifest
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._lock = threading.Lock()
        self._manifest: Manifest | None = None
        self._sources: dict[str, _Seen] = {}
        self._targets: dict[str, tuple[tuple[int, ...], str]] = {}
        self._skipped: dict[str, str] = {}  # source -> reason, as reported

    def mapped(self) -> dict[str, str]:
        """Target name -> source path of every file we put in the target."""
        with self._lock:
            return {name: src for name, (src, _) in sorted(self._load().items())}

    def skipped(self) -> dict[str, str]:
        """Source (file or folder) -> why the last sync did not map it."""
        with self._lock:
            return dict(self._skipped)

    def sync(self) -> list[Change]:
        """Make the target hold exactly the valid sources; return what changed.

        A skip is returned when it is new or its reason changed, not at every sync
        (skipped() lists them all).  Unchanged files produce nothing.
        """
        with self._lock:
            return self._sync()

    # -- the manifest ------------------------------------------------------------------

    def _load(self) -> Manifest:
        if self._manifest is None:
            self._manifest = self._read_manifest()
        return self._manifest

    def _read_manifest(self) -> Manifest:
        # An unreadable manifest is taken as empty: that only makes our old copies look
        # foreign (left alone), never a foreign file look ours.
        try:
            doc = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("apps_manifest_unreadable", path=str(self.manifest_path), error=str(exc))
            return {}
        out: Manifest = {}
        for name, entry in (doc.items() if isinstance(doc, dict) else ()):
            if (_is_name(name) and isinstance(entry, dict)
                    and isinstance(entry.get("source"), str)
                    and isinstance(entry.get("sha256"), str)):
                out[name] = (entry["source"], entry["sha256"])
        return out

    def _save(self, manifest: Manifest) -> None:
        doc = {name: {"source": src, "sha256": sha} for name, (src, sha) in manifest.items()}
        data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
        self.manifest_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.manifest_path, data, MODE)
        self._manifest = dict(manifest)

    # -- scanning ----------------------------------------------------------------------

    def _listdir(self, path: str) -> list[os.DirEntry[str]]:
        """One folder's entries (a seam: tests remove folders between two listings)."""
        with os.scandir(path) as it:
            return list(it)

    def _scan(self) -> tuple[list[_Found], dict[str, tuple[str, str]]]:
        """Every *.desktop under root, and skips (path -> (name, reason)).

        Folder symlinks are not followed: one pointing outside root is refused, one
        inside only repeats a folder scanned anyway.  Each folder is read once (a bind
        mount of an ancestor ends too), and a folder that vanishes or cannot be read is
        a skip, never an exception.
        """
        found: list[_Found] = []
        skips: dict[str, tuple[str, str]] = {}
        root = os.fspath(self.root)
        try:
            st = os.stat(root)
        except FileNotFoundError:
            return found, skips
        except OSError as exc:
            skips[root] = ("", _os_reason(exc))
            return found, skips
        if not stat.S_ISDIR(st.st_mode):
            skips[root] = ("", "not a folder")
            return found, skips
        root_real = os.path.realpath(root)
        seen_dirs = {(st.st_dev, st.st_ino): root}
        stack: list[tuple[str, str, frozenset[tuple[int, int]]]] = [
            (root, "", frozenset({(st.st_dev, st.st_ino)}))]
        while stack:
            folder, rel, ancestors = stack.pop()
            try:
                entries = sorted(self._listdir(folder), key=lambda e: e.name)
            except (FileNotFoundError, NotADirectoryError):
                skips[folder] = ("", "folder vanished during scan")
                continue
            except OSError as exc:
                skips[folder] = ("", _os_reason(exc))
                continue
            subdirs: list[tuple[str, str, frozenset[tuple[int, int]]]] = []
            for entry in entries:
                erel = f"{rel}/{entry.name}" if rel else entry.name
                is_app = entry.name.endswith(SUFFIX) and len(entry.name) > len(SUFFIX)
                try:
                    is_link = entry.is_symlink()
                    is_dir = entry.is_dir()  # follows a symlink
                    if is_dir:
                        dst = entry.stat() if is_link else entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # vanished since the listing: it is simply not there
                except OSError as exc:
                    if is_app:  # a looping symlink named *.desktop: validation says why
                        found.append(_Found(erel, entry.path, entry))
                    else:
                        skips[entry.path] = ("", _os_reason(exc))
                    continue
                if not is_dir:
                    if is_app:
                        if len(found) >= self.max_files:
                            skips[root] = ("", f"more than {self.max_files} .desktop files; "
                                               "the rest are ignored")
                            return found, skips
                        found.append(_Found(erel, entry.path, entry))
                    continue
                ident = (dst.st_dev, dst.st_ino)
                if is_link:
                    skips[entry.path] = ("", _folder_link(entry.path, ident in ancestors,
                                                          self.root, root_real))
                elif ident in seen_dirs:  # bind-mounted twice
                    skips[entry.path] = ("", f"same folder as {seen_dirs[ident]}")
                else:
                    seen_dirs[ident] = entry.path
                    subdirs.append((entry.path, erel, ancestors | {ident}))
            stack.extend(reversed(subdirs))  # depth first, in name order
        return found, skips

    def _check(self, f: _Found, fresh: dict[str, bytes], root_real: str) -> _Seen:
        """Validate a source, unless its stat says it is what we validated before."""
        key: tuple[int, ...] | None
        try:
            st = f.entry.stat()
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if f.entry.is_symlink():
                lst = f.entry.stat(follow_symlinks=False)
                key += (lst.st_ino, lst.st_ctime_ns)
        except OSError:
            key = None  # broken, looping or gone: validation says which
        old = self._sources.get(f.path)
        if key is not None and old is not None and old.key == key:
            return old
        now = time.time_ns()
        try:
            data = _read(f.path, self.root, root_real, self.max_bytes)
        except _Invalid as exc:
            seen = _Seen(key, "", str(exc))
        else:
            reason = check_entry(data)
            seen = _Seen(key, "" if reason else _sha(data), reason or "")
            if not reason:
                fresh[f.path] = data
        if key is not None and now - max(key[3], key[4]) < RACY_NS:
            seen = _Seen(None, seen.sha, seen.reason)
        return seen

    # -- the target --------------------------------------------------------------------

    def _target_sha(self, name: str) -> str | None:
        """sha256 of target/name now; None when missing, "" when not a regular file."""
        path = self.target / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return ""
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._targets.get(name)
        if cached and cached[0] == key:
            return cached[1]
        try:
            sha = _sha(path.read_bytes())
        except OSError:
            return ""
        self._targets[name] = (key, sha)
        return sha

    def _write(self, name: str, data: bytes) -> None:
        path = self.target / name
        atomic_write(path, data, MODE, durable=False)
        st = os.lstat(path)
        self._targets[name] = ((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns),
                               _sha(data))

    def _content(self, path: str, fresh: dict[str, bytes], root_real: str) -> bytes | str:
        """The bytes to copy from a valid source (re-read if cached), or why it is not."""
        if path in fresh:
            return fresh[path]
        try:
            data = _read(path, self.root, root_real, self.max_bytes)
        except _Invalid as exc:
            return str(exc)
        return check_entry(data) or data

    # -- the reconcile -----------------------------------------------------------------

    def _sync(self) -> list[Change]:
        manifest = self._load()
        self.target.mkdir(parents=True, exist_ok=True)
        root_real = os.path.realpath(self.root)
        found, skips = self._scan()
        fresh: dict[str, bytes] = {}
        sources: dict[str, _Seen] = {}
        groups: dict[str, list[tuple[str, str, str]]] = {}  # name -> [(rel, path, sha)]
        for f in found:
            seen = sources[f.path] = self._check(f, fresh, root_real)
            name = os.path.basename(f.path)
            if seen.reason == GONE:
                continue
            if seen.reason:
                skips[f.path] = (name, seen.reason)
            else:
                groups.setdefault(name, []).append((f.rel, f.path, seen.sha))
        self._sources = {p: s for p, s in sources.items() if s.key is not None}

        plan: Manifest = {}
        for name, group in groups.items():
            group.sort()
            _, winner, sha = group[0]
            for _, other, _ in group[1:]:
                skips[other] = (name, f"same name as {winner}, which sorts first")
            if name not in manifest and os.path.lexists(self.target / name):
                reason = f"{self.target / name} exists and was not put there by whaletopd"
                for _, src, _ in group:
                    skips[src] = (name, reason)
            else:
                plan[name] = (winner, sha)

        # Claim new names before copying: a crash in between leaves a claimed name with
        # no file, which the next sync copies; the other order would leave a copy that
        # nobody owns and that blocks its own source for ever.
        final = dict(manifest)
        claims = {name: v for name, v in plan.items() if name not in manifest}
        if claims:
            self._save({**manifest, **claims})
        changes: list[Change] = []
        for name in sorted(set(manifest) | set(plan)):
            if name in plan:
                self._apply(name, plan[name], manifest.get(name), final, skips, changes,
                            fresh, root_real)
            else:
                old_src, old_sha = manifest[name]
                why = skips[old_src][1] if old_src in skips else "source removed"
                self._remove(name, old_src, old_sha, why, final, skips, changes)
        if final != self._manifest:
            self._save(final)

        told = {c.source for c in changes if c.kind == "removed"}  # said why already
        reported = {src: reason for src, (_, reason) in skips.items()}
        for src, (name, reason) in skips.items():
            if self._skipped.get(src) != reason and src not in told:
                changes.append(Change("skipped", name, src, reason))
        self._skipped = reported
        return sorted(changes, key=lambda c: (c.name, c.source, c.kind))

    def _apply(self, name: str, want: tuple[str, str], old: tuple[str, str] | None,
               final: Manifest, skips: dict[str, tuple[str, str]], changes: list[Change],
               fresh: dict[str, bytes], root_real: str) -> None:
        """Make target/name the winning source's copy."""
        src, sha = want
        now = self._target_sha(name)
        if old is not None and now == sha:
            if old != want:  # another source with the same bytes, or a copy the crash kept
                final[name] = want
                changes.append(Change("updated", name, src))
            return
        if old is not None and now is not None and now != old[1]:
            final.pop(name)
            skips[src] = (name, f"{self.target / name} was changed outside whaletopd; "
                                "left as it is")
            return
        content = self._content(src, fresh, root_real)
        if isinstance(content, str):  # changed under us: the watcher will call again
            if old is None:
                final.pop(name, None)
            skips[src] = (name, content)
            return
        try:
            self._write(name, content)
        except OSError as exc:
            if old is None:
                final.pop(name, None)
            skips[src] = (name, f"cannot write {self.target / name}: {exc.strerror or exc}")
            return
        final[name] = (src, _sha(content))
        if old is None or now is None:
            changes.append(Change("added", name, src))
        else:
            changes.append(Change("updated", name, src))

    def _remove(self, name: str, src: str, sha: str, why: str, final: Manifest,
                skips: dict[str, tuple[str, str]], changes: list[Change]) -> None:
        """Take out a copy whose source is gone or invalid, if it is still ours."""
        now = self._target_sha(name)
        if now is not None and now != sha:
            final.pop(name)
            changes.append(Change("removed", name, src, f"{why}; {self.target / name} was "
                                  "changed outside whaletopd, so it stays"))
            return
        if now is not None:
            try:
                os.unlink(self.target / name)
            except FileNotFoundError:
                pass
            except OSError as exc:
                skips[src] = (name, f"cannot remove {self.target / name}: "
                                    f"{exc.strerror or exc}")
                return
        self._targets.pop(name, None)
        final.pop(name)
        changes.append(Change("removed", name, src, why))


class _Handler(FileSystemEventHandler):
    def __init__(self, callback: Callable[[FileSystemEvent], None]) -> None:
        super().__init__()
        self._callback = callback

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._callback(event)


class AppsWatcher:
    """Calls on_change() once per burst of changes under root, from its own thread.

    Calls come `debounce` seconds after the last event of a burst, and at least every
    `max_delay` seconds while events keep coming.  The parent folder (or the nearest
    one that exists) is watched too, so a root created, replaced or mounted after
    start() is watched from then on.  start() itself does not call on_change.
    """

    def __init__(self, root: Path, on_change: Callable[[], None], *,
                 debounce: float = 0.05, max_delay: float = 0.5) -> None:
        self.root = os.path.abspath(root)
        self._on_change = on_change
        self._debounce = debounce
        self._max_delay = max_delay
        self._observer = Observer()
        self._handler = _Handler(self._event)
        self._arm_lock = threading.Lock()
        self._anchor: tuple[str, ObservedWatch] | None = None
        self._root_watch: tuple[tuple[int, int], str, ObservedWatch] | None = None
        self._cond = threading.Condition()
        self._first: float | None = None  # first event of the pending burst
        self._last = 0.0
        self._rearm = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="apps-watcher", daemon=True)

    def start(self) -> None:
        self._observer.start()
        self._arm()
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; returns when no on_change() call runs nor will run."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join()

    def _arm(self) -> bool:
        """Watch what exists now; True when the root watch was (re)started."""
        with self._arm_lock:
            try:
                return self._arm_locked()
            except OSError as exc:  # a folder vanished meanwhile: the next event re-arms
                log.warning("apps_watch_failed", root=self.root, error=str(exc))
                return False

    def _arm_locked(self) -> bool:
        anchor = os.path.dirname(self.root)
        while not os.path.isdir(anchor) and anchor != os.path.dirname(anchor):
            anchor = os.path.dirname(anchor)
        if self._anchor is None or self._anchor[0] != anchor:
            self._unschedule(self._anchor[1] if self._anchor else None)
            self._anchor = None
            self._anchor = (anchor, self._observer.schedule(
                self._handler, anchor, event_filter=ANCHOR_EVENTS))
        try:
            st = os.stat(self.root)
            ident = (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None
        except OSError:
            ident = None
        if ident == (self._root_watch[0] if self._root_watch else None):
            return False
        self._unschedule(self._root_watch[2] if self._root_watch else None)
        self._root_watch = None
        if ident is not None:
            # inotify does not follow a symlinked root: watch where it points.
            real = os.path.realpath(self.root)
            watch = self._observer.schedule(self._handler, real, recursive=True,
                                            event_filter=TREE_EVENTS)
            self._root_watch = (ident, real, watch)
        return True

    def _unschedule(self, watch: ObservedWatch | None) -> None:
        if watch is not None:
            with contextlib.suppress(KeyError):
                self._observer.unschedule(watch)

    def _event(self, event: FileSystemEvent) -> None:
        """Runs in watchdog's thread: only decides and pokes."""
        if event.event_type not in WRITE_EVENTS:
            return
        real = self._root_watch[1] if self._root_watch else self.root
        anchor = self._anchor[0] if self._anchor else ""
        for raw in (event.src_path, event.dest_path):
            path = os.fsdecode(raw)
            if not path or (path == anchor and event.event_type not in {"deleted", "moved"}):
                continue  # a sibling of root came or went
            if path == self.root or _inside(self.root, path):  # root or one of its parents
                self._poke(rearm=event.event_type in {"created", "deleted", "moved"})
            elif ((event.is_directory or path.endswith(SUFFIX))
                  and (_inside(path, self.root) or _inside(path, real))):
                self._poke()

    def _poke(self, *, rearm: bool = False) -> None:
        now = time.monotonic()
        with self._cond:
            if self._first is None:
                self._first = now
            self._last = now
            self._rearm = self._rearm or rearm
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._first is None and not self._stopping:
                    self._cond.wait()
                while not self._stopping and self._first is not None:
                    due = min(self._last + self._debounce, self._first + self._max_delay)
                    left = due - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._stopping:
                    return
                self._first = None
                rearm, self._rearm = self._rearm, False
            # A new root watch starts in watchdog's thread a moment later; whatever was
            # created before it is seen by this call's sync or the follow-up's.
            rearmed = rearm and self._arm()
            try:
                self._on_change()
            except Exception:
                log.exception("apps_on_change_failed")
            if rearmed:
                self._poke()
