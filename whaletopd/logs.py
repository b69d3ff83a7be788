"""structlog set-up: every line on stdout is one JSON object, stdlib loggers included."""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import structlog
import structlog.tracebacks

# Tracebacks without local variables: a frame's locals can hold the VNC or key password.
_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False))

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure(fmt: str = "json", stream: TextIO | None = None) -> None:
    out = sys.stdout if stream is None else stream
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=False) if fmt == "console"
                     else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[*_SHARED, _TRACEBACKS, renderer],
        logger_factory=structlog.WriteLoggerFactory(file=out),
        # Not cached: tests swap processors with structlog.testing.capture_logs(), and a
        # daemon that logs a few lines a minute gains nothing from caching.
        cache_logger_on_first_use=False,
    )
    # transitions and anything else using stdlib logging: same JSON, same stream.
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    _TRACEBACKS, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # Python warnings too become JSON lines, not bare text on stderr.
    logging.captureWarnings(True)
    # watchdog 7 warns when a folder is created together with its parent; harmless.
    warnings.filterwarnings("ignore", "Callback with id", RuntimeWarning)


def get(name: str) -> Any:
    # get_logger(**values), not .bind(): bind() would fix the configuration at import time.
    return structlog.get_logger(component=name)


@contextmanager
def step(name: str, **fields: Any) -> Iterator[dict[str, Any]]:
    """One `step` line with its duration (the bench's timeline reads them); the caller
    may add fields to the dict it gets."""
    t0 = time.monotonic()
    extra: dict[str, Any] = {}
    yield extra
    get("whaletopd").info("step", step=name,
                          duration_ms=round((time.monotonic() - t0) * 1000, 1),
                          **fields, **extra)
