"""bench/run.py's pure parts: statistics, timestamps, log parsing, timeline, rendering.

No Docker here: the runner's measurements need real containers and are not tests.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

RUN_PY = Path(__file__).resolve().parents[2] / "bench" / "run.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("whaletop_bench_run", RUN_PY)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


bench = _load()

# A start as whaletopd logs it (trimmed): steps end at `timestamp` and took duration_ms;
# transitions carry elapsed_ms since the machine was made; children's output has `source`.
T_RUN = 1_795_000_000.0  # when the runner invoked docker run (wall clock)
SAMPLE_LOG = """\
{"component": "whaletopd", "step": "prepare_dirs", "duration_ms": 0.3, "event": "step", "level": "info", "timestamp": "2026-11-18T08:53:20.200300Z"}
{"component": "whaletopd", "step": "ensure_user", "duration_ms": 20.0, "event": "step", "level": "info", "timestamp": "2026-11-18T08:53:20.220500Z"}
not json: a stray line
{"component": "whaletopd", "trigger": "start", "source": "INIT", "dest": "STARTING", "reason": "", "elapsed_ms": 30.0, "event": "transition", "level": "info", "timestamp": "2026-11-18T08:53:20.230000Z"}
{"component": "whaletopd", "step": "launch_xvnc", "duration_ms": 5.0, "event": "step", "level": "info", "timestamp": "2026-11-18T08:53:20.235000Z"}
{"component": "whaletopd.children", "source": "xvnc", "pid": 25, "event": " vncext:      Listening for VNC connections on local interface(s), port 5921", "level": "info", "timestamp": "2026-11-18T08:53:20.250000Z"}
{"component": "whaletopd", "step": "launch_websockify", "duration_ms": 4.0, "event": "step", "level": "info", "timestamp": "2026-11-18T08:53:20.239000Z"}
{"component": "whaletopd", "trigger": "provisioned", "source": "STARTING", "dest": "STARTING", "reason": "", "elapsed_ms": 39.5, "event": "transition", "level": "info", "timestamp": "2026-11-18T08:53:20.239500Z"}
{"component": "whaletopd", "step": "launch_session", "duration_ms": 6.0, "event": "step", "level": "info", "timestamp": "2026-11-18T08:53:20.256000Z"}
{"component": "whaletopd", "trigger": "launched", "source": "STARTING", "dest": "STARTED", "reason": "", "elapsed_ms": 60.0, "event": "transition", "level": "info", "timestamp": "2026-11-18T08:53:20.260000Z"}
{"component": "whaletopd.children", "source": "websockify", "pid": 31, "event": "  - proxying from 0.0.0.0:8280 to 127.0.0.1:5921", "level": "info", "timestamp": "2026-11-18T08:53:20.335000Z"}
{"component": "whaletopd", "trigger": "probe_passed", "source": "STARTED", "dest": "HEALTHY", "reason": "", "elapsed_ms": 150.0, "event": "transition", "level": "info", "timestamp": "2026-11-18T08:53:20.350000Z"}
{"component": "whaletopd", "step": "map_apps", "duration_ms": 2.0, "event": "step", "level": "info", "timestamp": "2026-11-18T08:53:21.000000Z"}
"""  # noqa: E501


def _at(clock: str) -> float:
    """Wall time of 08:53:<clock> on the sample's day."""
    return bench.parse_time(f"2026-11-18T08:53:{clock}Z")


# -- statistics ------------------------------------------------------------------------------


def test_summarize_gives_median_min_max_and_count() -> None:
    assert bench.summarize([0.9, 0.7, 0.8]) == {"median": 0.8, "min": 0.7, "max": 0.9, "n": 3}
    assert bench.summarize([1.0, 2.0, 4.0, 3.0])["median"] == 2.5
    assert bench.summarize([5.0]) == {"median": 5.0, "min": 5.0, "max": 5.0, "n": 1}


def test_summarize_of_nothing_is_none_not_zero() -> None:
    assert bench.summarize([]) == {"median": None, "min": None, "max": None, "n": 0}


def test_verdict_judges_the_median_against_an_upper_bound() -> None:
    fig = bench.BY_KEY["start_healthy"]  # <= 0.8 s
    assert bench.verdict(fig, 0.8) == "yes"
    assert bench.verdict(fig, 0.81) == "no"
    assert bench.verdict(fig, None) == "no data"
    assert bench.verdict(fig, 0.5, error="docker run failed") == "error"


def test_verdict_needs_the_extra_condition_too() -> None:
    stop = bench.BY_KEY["stop"]  # <= 1 s and exit 0
    assert bench.verdict(stop, 0.2, conditions_ok=True) == "yes"
    assert bench.verdict(stop, 0.2, conditions_ok=False) == "no"


def test_figures_without_target_are_reported_only() -> None:
    fig = bench.BY_KEY["container_mem"]
    assert fig.target is None
    assert bench.verdict(fig, 123.0) == "—"
    assert bench.format_target(fig) == "report"


def test_every_figure_belongs_to_exactly_one_group() -> None:
    grouped = [key for keys in bench.GROUPS.values() for key in keys]
    assert sorted(grouped) == sorted(f.key for f in bench.FIGURES)


# -- timestamps and logs ---------------------------------------------------------------------


def test_parse_time_reads_docker_nanoseconds_and_structlog_microseconds() -> None:
    base = bench.parse_time("2026-11-18T08:53:20Z")
    assert bench.parse_time("2026-11-18T08:53:20.123456789Z") == pytest.approx(base + 0.123456789)
    assert bench.parse_time("2026-11-18T08:53:20.200300Z") == pytest.approx(base + 0.2003)
    assert bench.parse_time("2026-11-18T09:53:20.5+01:00") == pytest.approx(base + 0.5)
    assert bench.parse_time("2026-11-18T08:53:20") == base  # no zone: UTC


def test_parse_time_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        bench.parse_time("yesterday")


def test_parse_log_keeps_json_objects_and_skips_the_rest() -> None:
    events = bench.parse_log(SAMPLE_LOG + "[1, 2]\n{broken\n")
    assert len(events) == 12
    assert all(isinstance(e, dict) for e in events)


def test_daemon_t0_is_a_transition_time_minus_its_elapsed_ms() -> None:
    events = bench.parse_log(SAMPLE_LOG)
    assert bench.daemon_t0(events) == pytest.approx(_at("20.200"))
    assert bench.daemon_t0([{"event": "step"}]) is None


def test_step_durations_are_those_before_healthy() -> None:
    steps = bench.step_durations(bench.parse_log(SAMPLE_LOG))
    assert steps == {"prepare_dirs": 0.3, "ensure_user": 20.0, "launch_xvnc": 5.0,
                     "launch_websockify": 4.0, "launch_session": 6.0}


# -- timeline ------------------------------------------------------------------------------


def _timeline() -> Any:
    events = bench.parse_log(SAMPLE_LOG)
    t_run = _at("20.000")
    return bench.build_timeline(events, t_run, t_created=_at("20.010"),
                                t_started=_at("20.100"), t_seen=_at("20.355"))


def test_timeline_puts_each_phase_on_the_docker_run_clock() -> None:
    tl = _timeline()
    spans = {s.label: (round(s.start_ms, 1), round(s.end_ms, 1), s.kind) for s in tl.spans}
    assert spans["docker: create the container"] == (0.0, 10.0, "docker")
    assert spans["docker: start it (runc, mounts)"] == (10.0, 100.0, "docker")
    assert spans["python3 start-up, whaletopd imports"] == (100.0, 200.0, "python")
    assert spans["step ensure_user"] == (200.5, 220.5, "provision")
    assert spans["step launch_xvnc"] == (230.0, 235.0, "launch")
    assert spans["Xvnc: spawned → listening"] == (230.0, 250.0, "child")
    assert spans["websockify: spawned → listening"] == (235.0, 335.0, "child")
    assert spans["health probes until all pass"] == (260.0, 350.0, "probe")
    assert spans["status files written (fsync), HEALTHY read by the runner"] == (
        350.0, 355.0, "host")
    assert tl.total_ms == pytest.approx(355.0)


def test_timeline_ignores_steps_after_healthy_and_orders_spans() -> None:
    tl = _timeline()
    assert "step map_apps" not in {s.label for s in tl.spans}  # a later /Apps change
    starts = [s.start_ms for s in tl.spans]
    assert starts == sorted(starts)


def test_timeline_markers_are_status_words_only() -> None:
    markers = [(w, round(ms, 1)) for w, ms in _timeline().markers]
    assert markers == [("STARTING", 230.0), ("STARTED", 260.0), ("HEALTHY", 350.0)]


def test_timeline_without_docker_times_still_has_the_daemon_part() -> None:
    events = bench.parse_log(SAMPLE_LOG)
    tl = bench.build_timeline(events, _at("20.000"))
    labels = [s.label for s in tl.spans]
    assert "docker: create the container" not in labels
    assert "health probes until all pass" in labels
    assert tl.total_ms == pytest.approx(350.0)  # the HEALTHY transition


def test_timeline_survives_a_json_round_trip() -> None:
    tl = _timeline()
    again = bench.Timeline.from_json(json.loads(json.dumps(tl.to_json())))
    assert [s.label for s in again.spans] == [s.label for s in tl.spans]
    assert again.total_ms == pytest.approx(tl.total_ms, abs=0.1)
    assert again.markers[-1][0] == "HEALTHY"


def test_timeline_text_lists_every_span_and_the_total() -> None:
    text = bench.render_timeline_text(_timeline())
    assert "websockify: spawned → listening" in text
    assert "status HEALTHY written" in text
    assert text.splitlines()[-1].strip().startswith("355.0")


def test_timeline_picture_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    path = tmp_path / "timeline.png"
    bench.draw_timeline([("a start", _timeline())], "test machine", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- CPU ------------------------------------------------------------------------------------


def test_idle_figures_scale_to_a_minute() -> None:
    before = {"t": 100.0, "cpu_s": 1.00, "tck": 100, "threads_ns": {"7": 1_000, "38": 5_000_000}}
    after = {"t": 130.0, "cpu_s": 1.01, "tck": 100,
             "threads_ns": {"7": 1_000, "38": 15_000_000, "99": 2_000_000}}  # 99: new thread
    fig = bench.idle_figures(before, after)
    assert fig["cpu_s_per_min"] == pytest.approx(0.02)
    assert fig["schedstat_cpu_s_per_min"] == pytest.approx(0.012 * 2)
    assert next(iter(fig["busiest_threads_ms"])) == "38"


def test_idle_figures_need_time_to_pass() -> None:
    snap = {"t": 5.0, "cpu_s": 0.0, "tck": 100, "threads_ns": {}}
    with pytest.raises(ValueError, match="not later"):
        bench.idle_figures(snap, snap)


def test_idle_note_summarizes_the_schedstat_figure() -> None:
    note = bench.idle_note([{"schedstat_cpu_s_per_min": v} for v in (0.03, 0.028, 0.031)])
    assert "median 0.0300 (0.0280-0.0310) CPU-s/min" in note
    assert bench.idle_note([]) == ""


def test_host_cpu_busy_from_proc_stat() -> None:
    a = bench.host_cpu_times("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3\n")
    b = bench.host_cpu_times("cpu  150 0 150 850 150 0 0 0 0 0\n")
    assert a == (700, 1000)  # iowait is not idle
    assert bench.cpu_busy(a, b) == pytest.approx(0.5)  # 150 of 300 jiffies idle
    assert bench.cpu_busy(a, a) == 0.0


# -- rendering ---------------------------------------------------------------------------


def _doc() -> dict[str, Any]:
    def entry(key: str, values: list[float], met: str, note: str | None = None,
              error: str | None = None) -> dict[str, Any]:
        return {"key": key, **bench.summarize(values), "values": values, "met": met,
                "note": note, "error": error}
    return {
        "date": "2026-11-18 08:53 UTC", "mode": "full", "runs": 3, "commit": "0123456789abcdef",
        "image": {"tag": "whaletop:test", "id": "sha256:abcdef0123456789abcdef"},
        "machine": {"cores": 2, "cpu": "Test CPU", "memory_gib": 4.0, "kernel": "6.1.0",
                    "docker": "20.10", "cgroup": "1"},
        "figures": [
            entry("start_healthy", [0.5, 0.4, 0.6], "yes"),
            entry("daemon_rss", [30.0, 31.0, 32.0], "no", note="a | in a note"),
            entry("container_mem", [120.0], "—"),
            entry("home_ratio", [], "error", error="boom"),
        ],
    }


def test_markdown_table_has_the_issue_columns_and_one_row_per_figure() -> None:
    md = bench.render_markdown(_doc())
    lines = md.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| figure"))
    assert lines[header] == "| figure | median | min | max | target | met? |"
    rows = lines[header + 2:header + 6]
    assert rows[0] == "| docker run → status HEALTHY | 0.500 s | 0.400 | 0.600 | ≤ 0.8 s | yes |"
    assert rows[1] == "| whaletopd RSS (idle) | 31.0 MiB | 30.0 | 32.0 | ≤ 25 MiB | **no** |"
    assert rows[2].endswith("| report | — |")
    assert rows[3].startswith("| start with a 100,000-file home ÷ with an empty one | — |")


def test_markdown_names_the_machine_and_explains_the_figures() -> None:
    md = bench.render_markdown(_doc())
    assert "2 cores (Test CPU), 4.0 GiB memory, Linux 6.1.0" in md
    assert "median, min and max of 3 run(s)" in md
    assert "- whaletopd RSS (idle): a | in a note" in md
    assert "error: boom" in md


def test_terminal_table_lines_up() -> None:
    lines = bench.render_table(_doc()).splitlines()
    assert lines[0].startswith("figure")
    assert set(lines[1]) <= {"-", " "}
    assert len({line.index(" s ") for line in lines if "HEALTHY" in line}) == 1
    assert any(line.rstrip().endswith("no") for line in lines)


def test_targets_are_written_as_in_the_issue() -> None:
    assert bench.format_target(bench.BY_KEY["kill_leaves_healthy"]) == "≤ 0.05 s"
    assert bench.format_target(bench.BY_KEY["image_size"]) == "≤ 1000 MB"
    assert bench.format_target(bench.BY_KEY["home_ratio"]) == "≤ 1.1"
    assert bench.format_target(bench.BY_KEY["stop"]) == "≤ 1 s, exit 0"
