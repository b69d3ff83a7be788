"""The runner's progress lines, on stderr so stdout keeps only the report."""

from __future__ import annotations

import sys


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)
