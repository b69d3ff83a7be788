"""Writing files so that no reader ever sees a partial one."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path


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
