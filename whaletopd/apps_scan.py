"""The tree under /Apps read into a plan: which menu entry comes from which source, and
which sources are skipped and why.

Nothing here writes: apps.py applies a plan to the target folder.  Reading is careful
because the tree is the user's (mounted, possibly hostile, changing while we read): a
source must be a small regular file inside the root, symlinks pointing out are refused,
folder loops end, and whatever vanishes or cannot be read becomes a skip with a reason,
never an exception.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SUFFIX = ".desktop"
MAX_BYTES = 256 * 1024
MAX_FILES = 20000
GONE = "no such file"
# A file changed this recently may change again within the same timestamp tick without
# its stat changing, so its stat cannot vouch for its content yet ("racily clean").
RACY_NS = 2_000_000_000

# source (file or folder) -> (target name, reason); a folder's name is "".
Skips = dict[str, tuple[str, str]]
ListDir = Callable[[str], list[os.DirEntry[str]]]


class _Invalid(Exception):
    """A source that cannot be mapped; str() is the reason a user reads."""


def os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    return f"unreadable: {exc.strerror or exc}"


def inside(path: str, folder: str) -> bool:
    """`path` is `folder` or below it (by name: no symlink is resolved)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def is_app_name(name: str) -> bool:
    return name.endswith(SUFFIX) and len(name) > len(SUFFIX)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: str, root: Path, root_real: str, max_bytes: int) -> bytes:
    """The bytes of `path` if it is a small regular file inside root; else _Invalid."""
    try:
        st = os.stat(path)
        real = os.path.realpath(path, strict=True)
    except FileNotFoundError:
        raise _Invalid("broken symlink" if os.path.lexists(path) else GONE) from None
    except OSError as exc:
        raise _Invalid(os_reason(exc)) from None
    if not inside(real, root_real):
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
        raise _Invalid(os_reason(exc)) from None
    with os.fdopen(fd, "rb") as f:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the stat above
                raise _Invalid("not a regular file")
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise _Invalid(os_reason(exc)) from None
    if len(data) > max_bytes:
        raise _Invalid(f"larger than {max_bytes} bytes")
    return data


# How GLib's key-file parser, which LXDE's menu (menu-cache) reads entries with, sees a
# line: split at "\n" alone (a "\r" before it dropped), ASCII white space skipped.
_GLIB_SPACE = " \t\n\r\v\f"
_GROUP_RE = re.compile(r"\[([^\[\]\x00-\x1f\x7f]+)\][ \t]*")
_SHOWN = 40


def _shown(value: str) -> str:
    """A value from the file, for a reason a user reads in one log line."""
    cut = value[:_SHOWN] + ("..." if len(value) > _SHOWN else "")
    return cut if cut.isprintable() else repr(cut)


def check_entry(data: bytes) -> str | None:
    """Why LXDE's menu could not show this desktop entry, or None when it can.  The
    reason is one printable line, whatever the file holds."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    group: str | None = None
    found = False
    stray = 0  # the first key before any group, which GLib refuses
    keys: dict[str, str] = {}
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.removesuffix("\r").lstrip(_GLIB_SPACE)
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            match = _GROUP_RE.fullmatch(line)
            if match is None:
                # GLib refuses the whole file, so the menu shows nothing of it.
                return f"line {number} is not a valid [group] header"
            group = match.group(1)
            found = found or group == "Desktop Entry"
        elif "=" in line[1:]:
            stray = stray or (number if group is None else 0)
            if group == "Desktop Entry":
                key, _, value = line.partition("=")
                keys[key.rstrip(_GLIB_SPACE)] = value.strip(_GLIB_SPACE)  # the last counts
        else:
            return f"line {number} is not a key=value, [group] or # comment"
    if not found:
        return "no [Desktop Entry] group"
    if stray:
        return f"line {stray} is a key before the first [group]"
    kind = keys.get("Type", "Application")
    if kind != "Application":
        return f"Type={_shown(kind)} is not an application"
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
    if not inside(real, root_real):
        return f"symlink points outside {root}"
    if loops:
        return "symlink loop"
    return f"same folder as {os.path.join(root, os.path.relpath(real, root_real))}"


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


# A folder still to read: its path, its path relative to root, and the (dev, ino) of it
# and its ancestors (a symlink to one of them is a loop).
_Folder = tuple[str, str, frozenset[tuple[int, int]]]


@dataclass
class _Walk:
    """One scan's progress."""

    root: str
    root_real: str
    found: list[_Found] = field(default_factory=list)
    skips: Skips = field(default_factory=dict)
    seen_dirs: dict[tuple[int, int], str] = field(default_factory=dict)
    full: bool = False  # max_files reached: the scan ends


@dataclass
class Plan:
    """What the tree asks the target to hold, read in one scan."""

    want: dict[str, tuple[str, str]]  # target name -> (winning source, its sha256)
    rivals: dict[str, list[str]]  # target name -> the losing sources with that name
    skips: Skips
    root_real: str
    fresh: dict[str, bytes] = field(default_factory=dict)  # read by this scan, by source


class Scanner:
    """Reads the tree under `root` into a Plan.

    It remembers what each source's stat vouched for, so a scan of an unchanged tree
    reads folders and stats files, never their content.
    """

    def __init__(self, root: Path, listdir: ListDir, *, max_bytes: int = MAX_BYTES,
                 max_files: int = MAX_FILES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._listdir = listdir
        self._sources: dict[str, _Seen] = {}

    def plan(self) -> Plan:
        """Every valid source by target name (the first relative path wins), the rest
        skipped with a reason."""
        root_real = os.path.realpath(self.root)
        walk = self._scan()
        plan = Plan({}, {}, walk.skips, root_real)
        sources: dict[str, _Seen] = {}
        groups: dict[str, list[tuple[str, str, str]]] = {}  # name -> [(rel, path, sha)]
        for f in walk.found:
            seen = sources[f.path] = self._check(f, plan)
            name = os.path.basename(f.path)
            if seen.reason == GONE:
                continue
            if seen.reason:
                plan.skips[f.path] = (name, seen.reason)
            else:
                groups.setdefault(name, []).append((f.rel, f.path, seen.sha))
        self._sources = {p: s for p, s in sources.items() if s.key is not None}
        for name, group in groups.items():
            group.sort()
            _, winner, sha = group[0]
            plan.want[name] = (winner, sha)
            plan.rivals[name] = [other for _, other, _ in group[1:]]
            for other in plan.rivals[name]:
                plan.skips[other] = (name, f"same name as {winner}, which sorts first")
        return plan

    def content(self, source: str, plan: Plan) -> bytes | str:
        """The bytes to copy from a source the plan wants (read again when the scan
        trusted its stat), or why it cannot be copied now."""
        if source in plan.fresh:
            return plan.fresh[source]
        try:
            data = _read(source, self.root, plan.root_real, self.max_bytes)
        except _Invalid as exc:
            return str(exc)
        return check_entry(data) or data

    # -- walking the tree ----------------------------------------------------------------

    def _scan(self) -> _Walk:
        """Every *.desktop under root, and the folders skipped.

        Folder symlinks are not followed: one pointing outside root is refused, one
        inside only repeats a folder scanned anyway.  Each folder is read once (a bind
        mount of an ancestor ends too), and a folder that vanishes or cannot be read is
        a skip, never an exception.
        """
        root = os.fspath(self.root)
        walk = _Walk(root, root)
        try:
            st = os.stat(root)
        except FileNotFoundError:
            return walk
        except OSError as exc:
            walk.skips[root] = ("", os_reason(exc))
            return walk
        if not stat.S_ISDIR(st.st_mode):
            walk.skips[root] = ("", "not a folder")
            return walk
        walk.root_real = os.path.realpath(root)
        walk.seen_dirs[(st.st_dev, st.st_ino)] = root
        stack: list[_Folder] = [(root, "", frozenset({(st.st_dev, st.st_ino)}))]
        while stack and not walk.full:
            folder, rel, ancestors = stack.pop()
            try:
                entries = sorted(self._listdir(folder), key=lambda e: e.name)
            except (FileNotFoundError, NotADirectoryError):
                walk.skips[folder] = ("", "folder vanished during scan")
                continue
            except OSError as exc:
                walk.skips[folder] = ("", os_reason(exc))
                continue
            subdirs = [sub for entry in entries
                       if (sub := self._entry(walk, entry, rel, ancestors)) is not None]
            stack.extend(reversed(subdirs))  # depth first, in name order
        return walk

    def _entry(self, walk: _Walk, entry: os.DirEntry[str], rel: str,
               ancestors: frozenset[tuple[int, int]]) -> _Folder | None:
        """Record one folder entry; the folder to read next when it is one."""
        if walk.full:
            return None
        erel = f"{rel}/{entry.name}" if rel else entry.name
        is_app = is_app_name(entry.name)
        try:
            is_link = entry.is_symlink()
            is_dir = entry.is_dir()  # follows a symlink
            if is_dir:
                dst = entry.stat() if is_link else entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return None  # vanished since the listing: it is simply not there
        except OSError as exc:
            if is_app:  # a looping symlink named *.desktop: validation says why
                walk.found.append(_Found(erel, entry.path, entry))
            else:
                walk.skips[entry.path] = ("", os_reason(exc))
            return None
        if not is_dir:
            if is_app:
                if len(walk.found) >= self.max_files:
                    walk.skips[walk.root] = ("", f"more than {self.max_files} .desktop "
                                                 "files; the rest are ignored")
                    walk.full = True
                    return None
                walk.found.append(_Found(erel, entry.path, entry))
            return None
        ident = (dst.st_dev, dst.st_ino)
        if is_link:
            walk.skips[entry.path] = ("", _folder_link(entry.path, ident in ancestors,
                                                       self.root, walk.root_real))
            return None
        if ident in walk.seen_dirs:  # bind-mounted twice
            walk.skips[entry.path] = ("", f"same folder as {walk.seen_dirs[ident]}")
            return None
        walk.seen_dirs[ident] = entry.path
        return (entry.path, erel, ancestors | {ident})

    def _check(self, f: _Found, plan: Plan) -> _Seen:
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
            data = _read(f.path, self.root, plan.root_real, self.max_bytes)
        except _Invalid as exc:
            seen = _Seen(key, "", str(exc))
        else:
            reason = check_entry(data)
            seen = _Seen(key, "" if reason else sha256(data), reason or "")
            if not reason:
                plan.fresh[f.path] = data
        if key is not None and now - max(key[3], key[4]) < RACY_NS:
            seen = _Seen(None, seen.sha, seen.reason)
        return seen
