"""Applications in /Apps show up in the desktop's menu, live.

Any `.desktop` file anywhere under /Apps is copied into whaletop's own applications
folder (paths.applications_dir, on the session's XDG_DATA_DIRS after the system's, so
LXDE's menu lists it and a Debian entry of the same name wins); nothing of the image is
written, so the root filesystem may be read-only.  Images that extend ours add folders
to /Apps and users mount more (read-only) while the desktop runs, so copying once at
start is not enough: a watcher (watch.py) says when something changed and the mapper
reconciles the whole target with the plan apps_scan.py reads from the tree.

The target folder may hold files that are not ours (put there by an image or an older
version), so the mapper only ever replaces or removes a file it put there itself: a
manifest (name -> source, sha256) remembers which, and a file whose content is no
longer what we wrote stops being ours.  Every source that cannot be mapped is skipped
with a short reason instead of failing: one broken app must not hide the others, nor
stop the desktop.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from whaletopd import logs
from whaletopd.apps_scan import (
    GONE,
    MAX_BYTES,
    MAX_FILES,
    RACY_NS,
    SUFFIX,
    Plan,
    Scanner,
    check_entry,
    sha256,
    validate,
)
from whaletopd.files import atomic_write

__all__ = ["GONE", "MAX_BYTES", "MAX_FILES", "MODE", "RACY_NS", "SUFFIX", "AppMapper",
           "Change", "check_entry", "validate"]

log = logs.get("whaletopd.apps")

MODE = 0o644

Kind = Literal["added", "updated", "removed", "skipped"]
# Manifest: target file name -> (source path, sha256 of what we wrote).
Manifest = dict[str, tuple[str, str]]


@dataclass(frozen=True)
class Change:
    """One thing a sync did or refused.  A folder-level skip has name ""."""

    kind: Kind
    name: str
    source: str = ""
    reason: str = ""


def _is_name(name: object) -> bool:
    """A plain file name we may write in the target: manifest content never names a path."""
    return (isinstance(name, str) and name.endswith(SUFFIX) and len(name) > len(SUFFIX)
            and "/" not in name and "\0" not in name)


class _ManifestFile:
    """The manifest on disk, and the last version read or written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cached: Manifest | None = None

    def load(self) -> Manifest:
        if self._cached is None:
            self._cached = self._read()
        return self._cached

    def _read(self) -> Manifest:
        # An unreadable manifest is taken as empty: that only makes our old copies look
        # foreign (left alone), never a foreign file look ours.
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("apps_manifest_unreadable", path=str(self.path), error=str(exc))
            return {}
        out: Manifest = {}
        for name, entry in (doc.items() if isinstance(doc, dict) else ()):
            if (_is_name(name) and isinstance(entry, dict)
                    and isinstance(entry.get("source"), str)
                    and isinstance(entry.get("sha256"), str)):
                out[name] = (entry["source"], entry["sha256"])
        return out

    def save(self, manifest: Manifest) -> None:
        doc = {name: {"source": src, "sha256": sha} for name, (src, sha) in manifest.items()}
        data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, data, MODE)
        self._cached = dict(manifest)


class _Target:
    """The folder the menu reads; the sha256 of each file in it, cached by its stat."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._shas: dict[str, tuple[tuple[int, ...], str]] = {}

    def sha(self, name: str) -> str | None:
        """sha256 of path/name now; None when missing, "" when not a regular file."""
        path = self.path / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return ""
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._shas.get(name)
        if cached and cached[0] == key:
            return cached[1]
        try:
            sha = sha256(path.read_bytes())
        except OSError:
            return ""
        self._shas[name] = (key, sha)
        return sha

    def write(self, name: str, data: bytes) -> None:
        path = self.path / name
        atomic_write(path, data, MODE, durable=False)
        st = os.lstat(path)
        self._shas[name] = ((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns),
                            sha256(data))

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path / name)
        self.forget(name)

    def forget(self, name: str) -> None:
        self._shas.pop(name, None)


@dataclass
class _Sync:
    """One sync's working state: the plan, the manifest before and after, what changed."""

    plan: Plan
    before: Manifest
    after: Manifest
    changes: list[Change] = field(default_factory=list)

    def skip(self, source: str, name: str, reason: str) -> None:
        self.plan.skips[source] = (name, reason)


class AppMapper:
    """Reconciles `target` with the .desktop files under `root`; see sync()."""

    def __init__(self, root: Path, target: Path, manifest: Path, *,
                 max_bytes: int = MAX_BYTES, max_files: int = MAX_FILES) -> None:
        self.root = root
        self.target = target
        self.manifest_path = manifest
        self._lock = threading.Lock()
        self._scanner = Scanner(root, self._listdir, max_bytes=max_bytes,
                                max_files=max_files)
        self._manifest = _ManifestFile(manifest)
        self._target = _Target(target)
        self._skipped: dict[str, str] = {}  # source -> reason, as reported

    def mapped(self) -> dict[str, str]:
        """Target name -> source path of every file we put in the target."""
        with self._lock:
            return {name: src for name, (src, _) in sorted(self._manifest.load().items())}

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

    def _listdir(self, path: str) -> list[os.DirEntry[str]]:
        """One folder's entries (a seam: tests remove folders between two listings)."""
        with os.scandir(path) as it:
            return list(it)

    def _sync(self) -> list[Change]:
        manifest = self._manifest.load()
        self.target.mkdir(parents=True, exist_ok=True)
        run = _Sync(self._scanner.plan(), manifest, dict(manifest))
        self._refuse_foreign(run)
        # Claim new names before copying: a crash in between leaves a claimed name with
        # no file, which the next sync copies; the other order would leave a copy that
        # nobody owns and that blocks its own source for ever.
        claims = {name: v for name, v in run.plan.want.items() if name not in manifest}
        if claims:
            self._manifest.save({**manifest, **claims})
        for name in sorted(set(manifest) | set(run.plan.want)):
            if name in run.plan.want:
                self._copy(run, name)
            else:
                self._remove(run, name)
        if run.after != self._manifest.load():
            self._manifest.save(run.after)
        return self._report(run)

    def _refuse_foreign(self, run: _Sync) -> None:
        """A name taken in the target by a file we did not put there is not ours to use."""
        for name in list(run.plan.want):
            if name in run.before or not os.path.lexists(self.target / name):
                continue
            winner, _ = run.plan.want.pop(name)
            reason = f"{self.target / name} exists and was not put there by whaletopd"
            for src in (winner, *run.plan.rivals.get(name, ())):
                run.skip(src, name, reason)

    def _copy(self, run: _Sync, name: str) -> None:
        """Make target/name the winning source's copy."""
        want = src, sha = run.plan.want[name]
        old = run.before.get(name)
        now = self._target.sha(name)
        if old is not None and now == sha:
            if old != want:  # another source with the same bytes, or a copy the crash kept
                run.after[name] = want
                run.changes.append(Change("updated", name, src))
            return
        if old is not None and now is not None and now != old[1]:
            run.after.pop(name)
            run.skip(src, name, f"{self.target / name} was changed outside whaletopd; "
                                "left as it is")
            return
        content = self._scanner.content(src, run.plan)
        if isinstance(content, str):  # changed under us: the watcher will call again
            if old is None:
                run.after.pop(name, None)
            run.skip(src, name, content)
            return
        try:
            self._target.write(name, content)
        except OSError as exc:
            if old is None:
                run.after.pop(name, None)
            run.skip(src, name, f"cannot write {self.target / name}: {exc.strerror or exc}")
            return
        run.after[name] = (src, sha256(content))
        kind: Kind = "added" if old is None or now is None else "updated"
        run.changes.append(Change(kind, name, src))

    def _remove(self, run: _Sync, name: str) -> None:
        """Take out a copy whose source is gone or invalid, if it is still ours."""
        src, sha = run.before[name]
        why = run.plan.skips[src][1] if src in run.plan.skips else "source removed"
        now = self._target.sha(name)
        if now is not None and now != sha:
            run.after.pop(name)
            run.changes.append(Change("removed", name, src, f"{why}; {self.target / name} "
                                      "was changed outside whaletopd, so it stays"))
            return
        try:
            if now is None:
                self._target.forget(name)
            else:
                self._target.remove(name)
        except OSError as exc:
            run.skip(src, name, f"cannot remove {self.target / name}: {exc.strerror or exc}")
            return
        run.after.pop(name)
        run.changes.append(Change("removed", name, src, why))

    def _report(self, run: _Sync) -> list[Change]:
        """The changes, and the skips that are new or whose reason changed."""
        told = {c.source for c in run.changes if c.kind == "removed"}  # said why already
        for src, (name, reason) in run.plan.skips.items():
            if self._skipped.get(src) != reason and src not in told:
                run.changes.append(Change("skipped", name, src, reason))
        self._skipped = {src: reason for src, (_, reason) in run.plan.skips.items()}
        return sorted(run.changes, key=lambda c: (c.name, c.source, c.kind))
