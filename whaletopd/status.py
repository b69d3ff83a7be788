"""The status the user reads: one word in `status`, detail in `status.json`.

Both are replaced atomically (write a temporary file, fsync, rename), so a reader
never sees a partial word.  status.json is written first: whoever sees a new word
finds its detail already there.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from whaletopd.files import atomic_write


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StatusFile:
    def __init__(self, word_path: Path, json_path: Path) -> None:
        self.word_path = word_path
        self.json_path = json_path
        self._entered = ""
        self._since = ""

    def enter(self, state: str) -> None:
        """A state was entered: `since` is now, unless the machine re-entered the state it
        was in (a second restart while RECOVERING is still the same RECOVERING)."""
        if state != self._entered or not self._since:
            self._entered, self._since = state, now_iso()

    def write(self, state: str, reason: str, detail: dict[str, Any]) -> None:
        """`since` in the file is when the state was entered (the last enter()): detail
        may change within a state."""
        doc = {"state": state, "since": self._since or now_iso(), "reason": reason,
               "pid": os.getpid(), **detail}
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
