"""The status the user reads: one word in `status`, detail in `status.json`.

Both are replaced atomically (write a temporary file, fsync, rename), so a reader
never sees a partial word.  status.json is written first: whoever sees a new word
finds its detail already there.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: str, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StatusFile:
    def __init__(self, word_path: Path, json_path: Path) -> None:
        self.word_path = word_path
        self.json_path = json_path

    def write(self, state: str, reason: str, detail: dict[str, Any]) -> None:
        doc = {"state": state, "since": now_iso(), "reason": reason, "pid": os.getpid(), **detail}
        atomic_write(self.json_path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
        atomic_write(self.word_path, state + "\n")


def read(word_path: Path, json_path: Path) -> tuple[str, dict[str, Any]]:
    """The current word and detail; ('', {}) when nothing was written yet."""
    try:
        word = word_path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return "", {}
    try:
        detail = json.loads(json_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        detail = {}
    return word, detail
