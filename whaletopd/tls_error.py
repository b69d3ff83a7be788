"""The error of a certificate file that cannot be served, apart from tls.py so that
catching it (desktop.py) does not load cryptography when TLS is off."""

from __future__ import annotations

from pathlib import Path


class TLSError(ValueError):
    """A certificate file that cannot be served; the message is one line naming the file."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = " ".join(problem.split())
        super().__init__(f"{path}: {self.problem}")
