"""logs.step(): one `step` line per piece of work, with its duration (the bench's
timeline reads them)."""

from __future__ import annotations

import time

from structlog.testing import capture_logs

from whaletopd import logs


def test_one_step_line_with_its_duration_and_fields() -> None:
    with capture_logs() as captured, logs.step("launch_xvnc", child="xvnc") as out:
        out["pid"] = 42
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.02:  # the work being measured, not a wait
            pass
    assert len(captured) == 1, captured
    line = captured[0]
    assert line["event"] == "step"
    assert line["step"] == "launch_xvnc"
    assert line["child"] == "xvnc"
    assert line["pid"] == 42
    assert line["log_level"] == "info"
    assert line["component"] == "whaletopd"
    assert 20.0 <= line["duration_ms"] < 10_000.0


def test_the_line_is_written_when_the_step_ends() -> None:
    with capture_logs() as captured, logs.step("provision"):
        assert captured == [], "logged before the step ended"
    assert [e["step"] for e in captured] == ["provision"]


def test_duration_is_in_milliseconds_rounded_to_a_tenth() -> None:
    with capture_logs() as captured, logs.step("nothing"):
        pass
    duration = captured[0]["duration_ms"]
    assert isinstance(duration, float)
    assert duration == round(duration, 1)
    assert 0.0 <= duration < 1000.0


def test_a_field_the_caller_adds_overrides_none_of_the_others() -> None:
    with capture_logs() as captured, logs.step("tls_validate", source="file") as out:
        out.update({"fingerprint_sha256": "ab" * 32})
    assert captured[0]["source"] == "file"
    assert captured[0]["fingerprint_sha256"] == "ab" * 32
    assert captured[0]["step"] == "tls_validate"
