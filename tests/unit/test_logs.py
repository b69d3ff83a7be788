"""The daemon's log: one JSON object per line on its stream, stdlib loggers included."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from whaletopd import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buf = io.StringIO()
    logs.configure("json", stream=buf)
    yield buf
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_every_line_is_a_json_object(stream: io.StringIO) -> None:
    log = logs.get("whaletopd")
    log.info("transition", source="STARTING", dest="STARTED")
    log.warning("restart_scheduled", child="websockify", delay_s=0.1)
    lines = _lines(stream)
    assert [(e["event"], e["level"], e["component"]) for e in lines] == [
        ("transition", "info", "whaletopd"), ("restart_scheduled", "warning", "whaletopd")]
    assert lines[0]["dest"] == "STARTED"
    assert all(e["timestamp"].endswith("Z") for e in lines)


def test_stdlib_warnings_are_json_too(stream: io.StringIO) -> None:
    logging.getLogger("transitions.core").warning("something odd")
    logging.getLogger("transitions.core").info("chatter")  # below WARNING: dropped
    assert [(e["event"], e["level"], e["logger"]) for e in _lines(stream)] == [
        ("something odd", "warning", "transitions.core")]


def _provision(password: str) -> None:
    raise RuntimeError("a bug while writing the password")


def test_crash_log_keeps_passwords_out(stream: io.StringIO) -> None:
    """cli.py logs a crash with its traceback; the frames' local variables hold the VNC
    password and the TLS key password, which must not end up in `docker logs`."""
    try:
        _provision("s3cret-vnc-pw")
    except RuntimeError:
        logs.get("whaletopd").exception("crash")
    out = stream.getvalue()
    assert json.loads(out)["event"] == "crash"
    assert "a bug while writing the password" in out
    assert "s3cret-vnc-pw" not in out
