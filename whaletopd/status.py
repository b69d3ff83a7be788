"""The status the user reads: one word in `status`, detail in `status.json`.

Both are replaced atomically (write a temporary file, fsync, rename), so a reader
never sees a partial word.  status.json is written first: whoever sees a new word
finds its detail already there.

The word file's modification time is also the daemon's heartbeat: the loop refreshes it
(`touch()`) every few seconds while the desktop runs, so a reader that needs no Python
(the image's HEALTHCHECK, docker/healthcheck) can tell a live daemon's HEALTHY from the
last word of a hung or stopped one: an old file is a daemon that stopped looking.

A folder that cannot hold them at start (mounted read-only) is bad input: the desktop
asks `unwritable()` before provisioning and ends FAILED, saying so in its log line and
exit code, the only places left.  A write that fails later (the disk filled up) must
not end a running desktop: it is a warning, once, and a line again when writes work.
"""

from __future__ import annotations

import contextlib
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
        self._written = False  # a write succeeded since the daemon started
        self._error: OSError | None = None  # the last write's failure, if it failed

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
        try:
            atomic_write(self.json_path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
            atomic_write(self.word_path, state + "\n")
        except OSError as exc:
            if self._written and self._error is None:
                _log().warning("status_write_failed", path=str(self.json_path.parent),
                            state=state, reason=exc.strerror or str(exc),
                            hint="the desktop runs on; its status files show the state "
                                 "before until the folder takes writes again "
                                 "(free space on its disk)")
            self._error = exc
            return
        if self._error is not None and self._written:
            _log().info("status_write_recovered", path=str(self.json_path.parent), state=state)
        self._written, self._error = True, None

    def touch(self) -> None:
        """The heartbeat: the word file's mtime becomes now, its content untouched (no
        write, no fsync: one utime).  Quiet when it fails: a folder that takes no writes
        is reported by write(), and a stale heartbeat says the rest."""
        if not self._written:
            return
        with contextlib.suppress(OSError):
            os.utime(self.word_path)

    def unwritable(self) -> str | None:
        """Why the folder cannot hold the status, when no write has succeeded yet (the
        first state's): the reason to end FAILED with.  None once one did."""
        if self._written:
            return None
        folder = self.json_path.parent
        why = (self._error.strerror or str(self._error)) if self._error else "not written"
        return (f"cannot write the status files in {folder} ({why}): mount {folder} "
                f"writable (-v DIR:{folder}, without :ro) or as a tmpfs (--tmpfs {folder})")


def _log() -> Any:
    # Imported when needed: `whaletopd status` (Docker's HEALTHCHECK) reads through this
    # module and must not pay for structlog.
    from whaletopd import logs

    return logs.get("whaletopd")


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
