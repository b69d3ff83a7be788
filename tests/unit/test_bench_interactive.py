"""The `interactive` bench group's arithmetic and outputs (no browser, no container:
those run in `python -m bench --only interactive`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from bench import interactive, interactive_page
from bench.figures import BY_KEY, GROUPS
from whaletopd import link
from whaletopd.link import LINKS


def _setting(name: str, keys: list[float], fps: float, bytes_per_s: int) -> dict[str, Any]:
    return {"name": name, "quality": 6, "compression": 2, "xvnc": {"FrameRate": 60},
            "keys_ms": keys, "scroll": {"fps": fps, "bytes_per_s": bytes_per_s,
                                        "cpu_percent": {"Xvnc": 30.0, "nginx": 2.5}}}


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert interactive.percentile(values, 50) == pytest.approx(50.5)
    assert interactive.percentile(values, 95) == pytest.approx(95.05)
    assert interactive.percentile([7.0], 95) == 7.0
    assert interactive.percentile([3.0, 1.0, 2.0], 100) == 3.0
    with pytest.raises(ValueError, match="no values"):
        interactive.percentile([], 95)


def test_point_summary_is_a_row_of_the_curve() -> None:
    keys = [10.0] * 90 + [40.0] * 10
    row = interactive.point_summary(_setting("q", keys, 31.5, 2_500_000))
    assert row["keys"] == 100
    assert row["key_p50_ms"] == 10.0
    assert row["key_p95_ms"] == 40.0
    assert row["scroll_fps"] == 31.5
    assert row["scroll_mb_s"] == 2.5
    assert row["scroll_server_cpu_percent"] == 32.5


def _lan() -> dict[str, Any]:
    return interactive.base_setting(link.novnc_defaults("lan"),
                                    f"{LINKS['lan'].frame_rate}\n")


def test_each_run_measures_the_image_s_setting_and_only_the_last_sweeps_the_curve() -> None:
    first = interactive.plan(quick=False, last=False, base=_lan())
    last = interactive.plan(quick=False, last=True, base=_lan())
    assert len(first["settings"]) == 1
    assert first["keys"] >= 100, "p95 over at least 100 keys"
    base = first["settings"][0]
    assert (base["quality"], base["compression"], base["xvnc"]["FrameRate"]) == (
        LINKS["lan"].quality, LINKS["lan"].compression, LINKS["lan"].frame_rate)
    assert last["settings"][0] == base
    names = [s["name"] for s in last["settings"]]
    assert len(names) == len(set(names)) == 1 + len(interactive.CURVE)
    assert "--link wan" in names
    assert first["still_seconds"] == 60
    quick = interactive.plan(quick=True, last=True, base=_lan())
    assert quick["still_seconds"] < 60
    assert len(quick["settings"]) == 2
    # every point sets every Xvnc knob, so one point's knob does not leak into the next
    assert all(set(s["xvnc"]) == set(interactive.XVNC_DEFAULTS) for s in last["settings"])
    json.dumps(last)  # the page script reads it as JSON


def test_the_bench_s_wan_point_is_link_wan() -> None:
    """The runner imports nothing of whaletopd: its copy of --link wan is held equal here."""
    wan = LINKS["wan"]
    assert (interactive.WAN["quality"], interactive.WAN["compression"],
            interactive.WAN["xvnc"]["FrameRate"]) == (wan.quality, wan.compression,
                                                      wan.frame_rate)


@pytest.mark.parametrize(("defaults", "rate", "expected"), [
    ('{"quality":2,"compression":9}', "30\n", (2, 9, 30)),
    ("{}", "60", (6, 2, 60)),  # the image's own defaults.json: noVNC's levels
    ("", "", (6, 2, 60)),  # no answer: noVNC's and Xvnc's defaults
    ("<html>404</html>", "oops", (6, 2, 60)),
])
def test_base_setting_is_what_the_container_says(defaults: str, rate: str,
                                                 expected: tuple[int, int, int]) -> None:
    got = interactive.base_setting(defaults, rate)
    assert (got["quality"], got["compression"], got["xvnc"]["FrameRate"]) == expected
    assert set(got["xvnc"]) == set(interactive.XVNC_DEFAULTS)


def test_the_group_s_figures_and_targets() -> None:
    assert GROUPS["interactive"] == ["key_p50", "key_p95", "scroll_frame", "scroll_bytes",
                                     "still_cpu"]
    assert BY_KEY["key_p95"].target == 25.0
    assert BY_KEY["scroll_frame"].target == pytest.approx(1000 / 30, abs=0.05)
    assert BY_KEY["scroll_bytes"].target == 5.0
    assert BY_KEY["still_cpu"].target == 0.5


def test_the_curve_is_a_table_and_a_png(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    curve = [interactive.point_summary(_setting("lan", [12.0, 14.0], 35.0, 1_200_000)),
             interactive.point_summary(_setting("wan", [20.0, 30.0], 25.0, 400_000))]
    written = interactive.write_curve({"detail": {"interactive_curve": curve}}, tmp_path)
    assert written == ["interactive.md", "interactive.png"]
    assert (tmp_path / "interactive.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "interactive.md").read_text()
    assert "| lan | 6 | 2 | FrameRate=60 | 2 | 13.0 |" in md
    assert md.startswith("<!-- generated")
    assert "| wan |" in md


def test_no_curve_writes_nothing(tmp_path: Path) -> None:
    assert interactive.write_curve({"detail": {}}, tmp_path) == []
    assert not list(tmp_path.iterdir())


def test_cpu_seconds_reads_every_thread_s_schedstat() -> None:
    """Real /proc: this process's CPU time only grows, and a busy loop shows."""
    me = [os.getpid()]
    before = interactive_page.cpu_seconds(me)
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    after = interactive_page.cpu_seconds(me)
    assert after - before >= 0.04


def test_cpu_share_per_process_name_in_percent_of_a_core() -> None:
    pids = {10: "Xvnc", 11: "nginx", 12: "nginx", 13: "websockify.py"}
    t0 = {10: 1.0, 11: 0.0, 12: 0.0, 13: 5.0}
    t1 = {10: 1.6, 11: 0.1, 12: 0.2, 13: 5.06}
    assert interactive_page.by_name(pids, t0, t1, 60.0) == {
        "Xvnc": 1.0, "nginx": 0.5, "websockify": 0.1}
