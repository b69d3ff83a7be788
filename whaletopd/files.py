"""Writing files so that no reader ever sees a partial one; reading files a person
names (secrets, users, certificates) so that no file can stall or swell the daemon."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Literal


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644,
                 owner: tuple[int, int] | None = None, durable: bool = True) -> None:
    """Write via a temporary file in the same directory (mode and owner set before the
    content goes in) and rename it over `path`.  `durable=False` skips the fsyncs, for
    files that are cheap to write again (thousands of menu entries at start)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            os.fchmod(f.fileno(), mode)
            f.write(raw)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if not durable:
        return
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def file_digest(path: Path, limit: int | None = None) -> str | None:
    """SHA-256 of the file's content (of its first `limit` bytes when given); None when
    it is missing or unreadable.  What a watched file's change is told from a touch by."""
    try:
        with path.open("rb") as f:
            if limit is None:
                return hashlib.file_digest(f, "sha256").hexdigest()
            return hashlib.sha256(f.read(limit)).hexdigest()
    except OSError:
        return None


class ReadRefused(Exception):
    """read_regular() gave no bytes: at which step (`open`, `kind`: not a regular file,
    `read`, `size`: over the limit), with the OSError or the file's mode."""

    def __init__(self, step: Literal["open", "kind", "read", "size"],
                 error: OSError | None = None, mode: int = 0) -> None:
        super().__init__(step, error)
        self.step = step
        self.error = error
        self.mode = mode

    @property
    def strerror(self) -> str:
        return (self.error.strerror or str(self.error)) if self.error else ""


def read_regular(path: str | Path, limit: int, follow: bool = True) -> bytes:
    """The bytes of a regular file (links followed, as Kubernetes mounts secrets) of at
    most `limit` bytes.  Opened without blocking and checked with fstat before a byte is
    read: a FIFO (which would wait for a writer for ever) or a device is refused, never
    read; a file larger than `limit` (also a sparse one) is refused by its size, and one
    growing while read after `limit` + 1 bytes.  follow=False: a link is refused too
    (a file another account wrote).  Raises ReadRefused."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags if follow else flags | os.O_NOFOLLOW)
    except OSError as exc:
        raise ReadRefused("open", exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ReadRefused("kind", mode=st.st_mode)
        if st.st_size > limit:
            raise ReadRefused("size")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ReadRefused("read", exc) from None
    finally:
        os.close(fd)
    if size > limit:
        raise ReadRefused("size")
    return b"".join(chunks)


def copy_missing(src: Path, dest: Path, owner: tuple[int, int] | None = None) -> None:
    """What `dest` lacks of the tree `src` (e.g. /etc/skel into a home), copied without
    following links; nothing that exists is overwritten or re-owned.  `owner`: who the
    new entries belong to (root's work); None: whoever runs this."""
    if not src.is_dir():
        return
    for entry in src.rglob("*"):
        target = dest / entry.relative_to(src)
        if target.exists() or target.is_symlink():
            continue
        if entry.is_dir():
            target.mkdir()
        else:
            shutil.copy2(entry, target, follow_symlinks=False)
        if owner is not None:
            os.lchown(target, *owner)
