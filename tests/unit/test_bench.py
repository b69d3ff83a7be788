"""The bench package without Docker: statistics, timestamps, log parsing, timeline,
rendering, the results document, cgroup files, and the scripts it runs in the container
(run here against temporary folders and this test's own processes).

The measurements themselves need real containers: `tox -e bench` runs them once.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import hashlib
import io
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from bench import (
    browser,
    certgen,
    cgroups,
    cli,
    cpu,
    figures,
    page_load,
    render,
    report,
    results,
    timeline,
)
from bench.browser import PAGE_LOAD
from bench.containers import BenchError, Running
from bench.in_container import kill_xvnc, snapshot, vnc_sessions, watch_app
from bench.measure import CERTGEN, KILL_XVNC, SNAPSHOT, VNC_SESSIONS, WATCH_APP
from bench.net import http_get, page_served, served_fingerprint
from bench.timeline import Timeline

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"

# A start as whaletopd logs it (trimmed): steps end at `timestamp` and took duration_ms;
# transitions carry elapsed_ms since the machine was made; children's output has `source`.
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
    return timeline.parse_time(f"2026-11-18T08:53:{clock}Z")


# -- statistics and verdicts --------------------------------------------------------------


def test_summarize_gives_median_min_max_and_count() -> None:
    assert figures.summarize([0.9, 0.7, 0.8]) == {"median": 0.8, "min": 0.7, "max": 0.9, "n": 3}
    assert figures.summarize([1.0, 2.0, 4.0, 3.0])["median"] == 2.5
    assert figures.summarize([5.0]) == {"median": 5.0, "min": 5.0, "max": 5.0, "n": 1}


def test_summarize_of_nothing_is_none_not_zero() -> None:
    assert figures.summarize([]) == {"median": None, "min": None, "max": None, "n": 0}


def test_verdict_judges_the_median_against_an_upper_bound() -> None:
    fig = figures.BY_KEY["start_healthy"]  # <= 0.8 s
    assert figures.verdict(fig, 0.8) == "yes"
    assert figures.verdict(fig, 0.81) == "no"
    assert figures.verdict(fig, None) == "no data"
    assert figures.verdict(fig, 0.5, error="docker run failed") == "error"


def test_verdict_needs_the_extra_condition_too() -> None:
    stop = figures.BY_KEY["stop"]  # <= 1 s and exit 0
    assert figures.verdict(stop, 0.2, conditions_ok=True) == "yes"
    assert figures.verdict(stop, 0.2, conditions_ok=False) == "no"


def test_figures_without_target_are_reported_only() -> None:
    fig = figures.BY_KEY["container_mem"]
    assert fig.target is None
    assert figures.verdict(fig, 123.0) == "—"
    assert figures.format_target(fig) == "report"


def test_every_figure_belongs_to_exactly_one_group() -> None:
    grouped = [key for keys in figures.GROUPS.values() for key in keys]
    assert sorted(grouped) == sorted(f.key for f in figures.FIGURES)


def test_targets_are_written_as_in_the_issue() -> None:
    assert figures.format_target(figures.BY_KEY["kill_leaves_healthy"]) == "≤ 0.05 s"
    assert figures.format_target(figures.BY_KEY["image_size"]) == "≤ 1000 MB"
    assert figures.format_target(figures.BY_KEY["home_ratio"]) == "≤ 1.1"
    assert figures.format_target(figures.BY_KEY["stop"]) == "≤ 1 s, exit 0"


# -- timestamps and logs ---------------------------------------------------------------------


def test_parse_time_reads_docker_nanoseconds_and_structlog_microseconds() -> None:
    base = timeline.parse_time("2026-11-18T08:53:20Z")
    assert timeline.parse_time("2026-11-18T08:53:20.123456789Z") == pytest.approx(
        base + 0.123456789)
    assert timeline.parse_time("2026-11-18T08:53:20.200300Z") == pytest.approx(base + 0.2003)
    assert timeline.parse_time("2026-11-18T09:53:20.5+01:00") == pytest.approx(base + 0.5)
    assert timeline.parse_time("2026-11-18T08:53:20") == base  # no zone: UTC


def test_parse_time_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        timeline.parse_time("yesterday")


def test_parse_log_keeps_json_objects_and_skips_the_rest() -> None:
    events = timeline.parse_log(SAMPLE_LOG + "[1, 2]\n{broken\n")
    assert len(events) == 12
    assert all(isinstance(e, dict) for e in events)


def test_daemon_t0_is_a_transition_time_minus_its_elapsed_ms() -> None:
    events = timeline.parse_log(SAMPLE_LOG)
    assert timeline.daemon_t0(events) == pytest.approx(_at("20.200"))
    assert timeline.daemon_t0([{"event": "step"}]) is None


def test_transition_time_is_the_first_into_that_state() -> None:
    events = timeline.parse_log(SAMPLE_LOG)
    assert timeline.transition_time(events, "STARTING") == pytest.approx(_at("20.230"))
    assert timeline.transition_time(events, "HEALTHY") == pytest.approx(_at("20.350"))
    assert timeline.transition_time(events, "UNHEALTHY") is None


def test_step_durations_are_those_before_healthy() -> None:
    steps = timeline.step_durations(timeline.parse_log(SAMPLE_LOG))
    assert steps == {"prepare_dirs": 0.3, "ensure_user": 20.0, "launch_xvnc": 5.0,
                     "launch_websockify": 4.0, "launch_session": 6.0}


# -- timeline ------------------------------------------------------------------------------


def _timeline() -> Timeline:
    events = timeline.parse_log(SAMPLE_LOG)
    t_run = _at("20.000")
    return timeline.build_timeline(events, t_run, t_created=_at("20.010"),
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
    events = timeline.parse_log(SAMPLE_LOG)
    tl = timeline.build_timeline(events, _at("20.000"))
    labels = [s.label for s in tl.spans]
    assert "docker: create the container" not in labels
    assert "health probes until all pass" in labels
    assert tl.total_ms == pytest.approx(350.0)  # the HEALTHY transition


def test_timeline_survives_a_json_round_trip() -> None:
    tl = _timeline()
    again = Timeline.from_json(json.loads(json.dumps(tl.to_json())))
    assert [s.label for s in again.spans] == [s.label for s in tl.spans]
    assert again.total_ms == pytest.approx(tl.total_ms, abs=0.1)
    assert again.markers[-1][0] == "HEALTHY"


def test_timeline_text_lists_every_span_and_the_total() -> None:
    text = render.render_timeline_text(_timeline())
    assert "websockify: spawned → listening" in text
    assert "status HEALTHY written" in text
    assert text.splitlines()[-1].strip().startswith("355.0")


def test_timeline_picture_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    from bench.picture import draw_timeline

    path = tmp_path / "timeline.png"
    draw_timeline([("a start", _timeline())], "test machine", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- CPU ------------------------------------------------------------------------------------


def test_idle_figures_scale_to_a_minute() -> None:
    before = {"t": 100.0, "cpu_s": 1.00, "tck": 100, "threads_ns": {"7": 1_000, "38": 5_000_000}}
    after = {"t": 130.0, "cpu_s": 1.01, "tck": 100,
             "threads_ns": {"7": 1_000, "38": 15_000_000, "99": 2_000_000}}  # 99: new thread
    fig = cpu.idle_figures(before, after)
    assert fig["cpu_s_per_min"] == pytest.approx(0.02)
    assert fig["schedstat_cpu_s_per_min"] == pytest.approx(0.012 * 2)
    assert next(iter(fig["busiest_threads_ms"])) == "38"


def test_idle_figures_need_time_to_pass() -> None:
    snap = {"t": 5.0, "cpu_s": 0.0, "tck": 100, "threads_ns": {}}
    with pytest.raises(ValueError, match="not later"):
        cpu.idle_figures(snap, snap)


def test_idle_note_summarizes_the_schedstat_figure() -> None:
    note = cpu.idle_note([{"schedstat_cpu_s_per_min": v} for v in (0.03, 0.028, 0.031)])
    assert "median 0.0300 (0.0280-0.0310) CPU-s/min" in note
    assert cpu.idle_note([]) == ""


def test_host_cpu_busy_from_proc_stat() -> None:
    a = cpu.host_cpu_times("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3\n")
    b = cpu.host_cpu_times("cpu  150 0 150 850 150 0 0 0 0 0\n")
    assert a == (700, 1000)  # iowait is not idle
    assert cpu.cpu_busy(a, b) == pytest.approx(0.5)  # 150 of 300 jiffies idle
    assert cpu.cpu_busy(a, a) == 0.0


# -- the results document ----------------------------------------------------------------


def test_results_judge_each_figure_and_keep_the_requested_ones_in_order() -> None:
    res = results.Results()
    for v in (0.9, 0.3, 0.2):
        res.record("stop", v)
    res.record("start_healthy", 0.5)
    doc = res.doc(["stop", "start_healthy", "image_size"], 100_000)
    assert [f["key"] for f in doc["figures"]] == ["start_healthy", "stop", "image_size"]
    stop = doc["figures"][1]
    assert (stop["median"], stop["min"], stop["max"], stop["n"]) == (0.3, 0.2, 0.9, 3)
    assert stop["values"] == [0.9, 0.3, 0.2]
    assert stop["met"] == "yes"
    assert doc["figures"][2]["met"] == "no data"


def test_results_condition_fails_the_figure_when_any_run_misses_it() -> None:
    res = results.Results()
    res.record("stop", 0.1)
    res.require("stop", True)
    res.require("stop", False)
    res.require("stop", True)
    res.detail["stop_exit_codes"] = [0, 137, 0]
    entry = res.doc(["stop"], 100_000)["figures"][0]
    assert entry["met"] == "no"
    assert entry["note"] == "exit codes [0, 137, 0]"


def test_results_note_busy_runs_repeated_notes_once_and_a_small_home() -> None:
    res = results.Results()
    res.record("home_big", 0.5, note="same note")
    res.record("home_big", 0.6, note="same note", busy=True)
    entry = res.doc(["home_big"], 5000)["figures"][0]
    assert entry["note"] == ("same note; 1 of 2 run(s) started while the host was busy with "
                             "other work (> 15% CPU); 5000 files, not 100,000")


def test_results_keep_the_first_error_of_a_figure() -> None:
    res = results.Results()
    res.fail(["cert_served", "cert_healthy"], "warm-up failed: boom")
    res.fail(["cert_served"], "later")
    doc = res.doc(["cert_served", "cert_healthy"], 100_000)
    assert [(f["met"], f["error"]) for f in doc["figures"]] == [
        ("error", "warm-up failed: boom"), ("error", "warm-up failed: boom")]


def test_results_take_the_median_runs_timeline() -> None:
    runs = [(0.5, Timeline(total_ms=500.0)), (0.3, Timeline(total_ms=300.0)),
            (0.4, Timeline(total_ms=400.0)), (0.6, Timeline(total_ms=600.0))]
    assert results.median_timeline(runs) == (2, runs[2][1])  # even count: the lower middle
    res = results.Results(timelines=runs[:3])
    doc = res.doc([], 100_000, host=[{"container": "start0"}])
    assert (doc["timeline"]["run"], doc["timeline"]["of"]) == (3, 3)  # 0.4 s of 0.3-0.5
    assert doc["timeline"]["total_ms"] == 400.0
    assert "timeline_tls" not in doc
    assert doc["host_before_each_container"] == [{"container": "start0"}]


def test_results_summarize_steps_and_phases_in_ms() -> None:
    res = results.Results(steps={"ensure_user": [20.04, 19.96, 30.0]})
    assert res.doc([], 100_000)["step_durations_ms"] == {
        "ensure_user": {"median": 20.0, "min": 20.0, "max": 30.0, "n": 3}}


# -- rendering ---------------------------------------------------------------------------


def _doc() -> dict[str, Any]:
    def entry(key: str, values: list[float], met: str, note: str | None = None,
              error: str | None = None) -> dict[str, Any]:
        return {"key": key, **figures.summarize(values), "values": values, "met": met,
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
    md = render.render_markdown(_doc())
    lines = md.splitlines()
    assert lines[0] == "<!-- generated by python -m bench from results.json; do not edit -->"
    header = next(i for i, line in enumerate(lines) if line.startswith("| figure"))
    assert lines[header] == "| figure | median | min | max | target | met? |"
    rows = lines[header + 2:header + 6]
    assert rows[0] == "| docker run → status HEALTHY | 0.500 s | 0.400 | 0.600 | ≤ 0.8 s | yes |"
    assert rows[1] == "| whaletopd RSS (idle) | 31.0 MiB | 30.0 | 32.0 | ≤ 30 MiB | **no** |"
    assert rows[2].endswith("| report | — |")
    assert rows[3].startswith("| start with a 100,000-file home ÷ with an empty one | — |")


def test_markdown_names_the_machine_and_explains_the_figures() -> None:
    md = render.render_markdown(_doc())
    assert "2 cores (Test CPU), 4.0 GiB memory, Linux 6.1.0" in md
    assert "median, min and max of 3 run(s)" in md
    assert "- whaletopd RSS (idle): a | in a note" in md
    assert "error: boom" in md


def test_terminal_table_lines_up() -> None:
    lines = render.render_table(_doc()).splitlines()
    assert lines[0].startswith("figure")
    assert set(lines[1]) <= {"-", " "}
    assert len({line.index(" s ") for line in lines if "HEALTHY" in line}) == 1
    assert any(line.rstrip().endswith("no") for line in lines)


def test_committed_results_md_is_rendered_from_results_json() -> None:
    """results.md is generated: `python -m bench --render bench/results.json` remakes it."""
    doc = json.loads((BENCH / "results.json").read_text(encoding="utf-8"))
    assert render.render_markdown(doc) == (BENCH / "results.md").read_text(encoding="utf-8")


def test_readme_shows_the_committed_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- bench-table -->\n", 1)[1].split("<!-- /bench-table -->", 1)[0]
    assert block.startswith((BENCH / "results.md").read_text(encoding="utf-8"))


def test_outputs_are_json_markdown_and_without_a_timeline_no_picture(tmp_path: Path) -> None:
    doc = _doc()
    assert report.write_outputs(doc, tmp_path / "out") == ["results.json", "results.md"]
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == doc
    assert (tmp_path / "out" / "results.md").read_text() == render.render_markdown(doc)
    assert not (tmp_path / "out" / "timeline.png").exists()


def test_outputs_draw_the_timeline_panels(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    doc = {**_doc(), "timeline": {"run": 1, "of": 1, **_timeline().to_json()}}
    assert report.write_outputs(doc, tmp_path)[-1] == "timeline.png"
    assert (tmp_path / "timeline.png").read_bytes()[:4] == b"\x89PNG"


# -- the command line --------------------------------------------------------------------


def test_help_works(capsys: pytest.CaptureFixture[str]) -> None:
    """Its text holds a per cent sign, which argparse would take for a format."""
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--quick" in out
    assert "< 15% CPU" in out


def test_unknown_group_is_refused_before_any_docker_call(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # a docker call would raise
    with pytest.raises(SystemExit) as info:
        cli.main(["--only", "start,bogus"])
    assert info.value.code == 2
    assert "unknown group(s) ['bogus']" in capsys.readouterr().err


def test_render_rewrites_the_outputs_from_a_results_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = {**_doc(), "mode": "quick", "runs": 1}
    source = tmp_path / "in" / "results.json"
    source.parent.mkdir()
    source.write_text(json.dumps(doc))
    assert cli.main(["--render", str(source), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "results.md").read_text() == render.render_markdown(doc)
    assert "whaletop benchmarks (quick, 1 run(s) each)" in capsys.readouterr().out


# -- cgroups ---------------------------------------------------------------------------------

CID = "0123456789ab" + "c" * 52


def _files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_cgroup_v1_cpu_and_memory(tmp_path: Path) -> None:
    root = _files(tmp_path, {
        f"cpu,cpuacct/docker/{CID}/cpuacct.usage": "2500000000\n",
        f"memory/docker/{CID}/memory.usage_in_bytes": "1000\n",
        f"memory/docker/{CID}/memory.stat": "total_inactive_file 300\ntotal_rss 500\n"
                                            "total_cache 400\ninactive_file 7\n",
    })
    assert cgroups.cpu_seconds(CID, root) == 2.5
    assert cgroups.memory(CID, root) == {"usage": 1000, "usage_minus_inactive_file": 700,
                                         "rss": 500, "cache": 400}


def test_cgroup_v2_cpu_and_memory(tmp_path: Path) -> None:
    scope = f"system.slice/docker-{CID}.scope"
    root = _files(tmp_path, {
        f"{scope}/cpu.stat": "usage_usec 1500000\nuser_usec 1000000\n",
        f"{scope}/memory.current": "2000\n",
        f"{scope}/memory.stat": "anon 800\nfile 900\ninactive_file 600\n",
    })
    assert cgroups.cpu_seconds(CID, root) == 1.5
    assert cgroups.memory(CID, root) == {"usage": 2000, "usage_minus_inactive_file": 1400,
                                         "rss": 800, "cache": 900}


def test_cgroup_missing_names_the_container(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="no cpu cgroup found for container 0123456789ab"):
        cgroups.cpu_seconds(CID, tmp_path)
    with pytest.raises(BenchError, match="no memory cgroup"):
        cgroups.memory(CID, tmp_path)


# -- talking to 127.0.0.1 --------------------------------------------------------------------


class _Page(BaseHTTPRequestHandler):
    body = b"<title>noVNC</title>"

    def do_GET(self) -> None:
        found = self.path == "/vnc.html"
        self.send_response(200 if found else 404)
        self.end_headers()
        self.wfile.write(self.body if found else b"")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def page_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_page_served_needs_status_200_and_novnc(page_server: ThreadingHTTPServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    port = page_server.server_address[1]
    assert page_served(port)
    assert http_get(port, "/other")[0] == 404
    monkeypatch.setattr(_Page, "body", b"<title>It works</title>")  # some other server
    assert not page_served(port)
    page_server.server_close()  # nobody listens any more
    assert not page_served(port)


def test_served_fingerprint_is_the_certificate_certgen_made(
        page_server: ThreadingHTTPServer, tmp_path: Path) -> None:
    cert, key = certgen.make(cn="localhost", names=("localhost", "127.0.0.1"))
    (tmp_path / "tls.pem").write_bytes(certgen.pem(cert, key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.pem")
    page_server.socket = context.wrap_socket(page_server.socket, server_side=True)
    port = page_server.server_address[1]
    fp, at = served_fingerprint(port)
    assert fp == certgen.fingerprint(cert)
    assert certgen.served_fingerprint(port) == fp
    assert at <= time.time()
    assert page_served(port, tls=True)


# -- the scripts run in the container --------------------------------------------------------

SCRIPTS = [CERTGEN, KILL_XVNC, SNAPSHOT, WATCH_APP, VNC_SESSIONS]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_in_container_scripts_stand_alone(script: Path) -> None:
    """The image has python3 and its packages, not this checkout: standard library only
    (and cryptography, which the image has), and a main guard to run them."""
    tree = ast.parse(script.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported - {"cryptography"} <= set(sys.stdlib_module_names)
    assert "if __name__ == \"__main__\":" in script.read_text()


def test_script_argv_sends_the_source_to_the_images_python3() -> None:
    running = Running("whaletop-bench-x", Path("/nonexistent"), 0.0,
                      subprocess.Popen(["true"]))
    running.proc.wait()
    argv = running.script_argv(WATCH_APP, "bench-1.desktop")
    assert argv[:6] == ["docker", "exec", "whaletop-bench-x", "python3", "-c",
                        WATCH_APP.read_text()]
    assert argv[6:] == ["bench-1.desktop"]


def _fake_proc(root: Path, pid: int) -> None:
    _files(root, {
        f"{pid}/stat": f"{pid} (odd) name) S 1 1 1 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 2\n",
        f"{pid}/task/{pid}/schedstat": "5000 10 2\n",
        f"{pid}/task/{pid + 6}/schedstat": "7000 1 1\n",
        f"{pid}/status": "Name:\twhaletopd\nVmRSS:\t   34000 kB\nRssAnon:\t 20000 kB\n"
                         "Threads:\t2\nVmSwap:\t0 kB\n",
    })


def test_snapshot_reads_the_daemons_proc_files(tmp_path: Path) -> None:
    state = _files(tmp_path / "state", {"status.json": json.dumps(
        {"pid": 1234, "state": "HEALTHY", "since": "2026-11-18T08:53:20Z"})})
    _fake_proc(tmp_path / "proc", 1234)
    before = time.time()
    snap = snapshot.snapshot(state, tmp_path / "proc")
    assert snap["cpu_s"] == pytest.approx(400 / os.sysconf("SC_CLK_TCK"))
    assert snap["threads_ns"] == {"1234": 5000, "1240": 7000}
    assert snap["mem"] == {"VmRSS": 34000, "RssAnon": 20000, "Threads": 2}
    assert (snap["pid"], snap["state"], snap["since"]) == (1234, "HEALTHY",
                                                          "2026-11-18T08:53:20Z")
    assert snap["t"] >= before


def test_snapshots_of_a_real_process_give_idle_figures(tmp_path: Path) -> None:
    state = _files(tmp_path, {"status.json": json.dumps(
        {"pid": os.getpid(), "state": "HEALTHY", "since": "x"})})
    first = snapshot.snapshot(state)
    sum(i * i for i in range(300_000))  # some CPU time of our own between the two
    second = snapshot.snapshot(state)
    assert str(os.getpid()) in second["threads_ns"]
    assert second["mem"]["VmRSS"] > 0
    fig = cpu.idle_figures(first, second)
    assert fig["schedstat_cpu_s_per_min"] > 0


def test_kill_xvnc_kills_and_times_the_status_change(tmp_path: Path) -> None:
    xvnc = subprocess.Popen(["sleep", "60"])
    state = _files(tmp_path, {"status": "HEALTHY\n", "status.json": json.dumps(
        {"children": {"xvnc": {"pid": xvnc.pid}}})})

    def daemon() -> None:  # as whaletopd would: notice the exit, write the new word
        xvnc.wait()
        time.sleep(0.02)
        # Renamed into place, as StatusFile does: write_text() would let the watcher
        # read an empty file between truncating and writing.
        (state / "status.new").write_text("UNHEALTHY\n")
        (state / "status.new").replace(state / "status")
    thread = threading.Thread(target=daemon)
    thread.start()
    try:
        res = kill_xvnc.kill_and_watch(state)
    finally:
        xvnc.kill()
        thread.join()
    assert xvnc.returncode == -signal.SIGKILL
    assert res["word"] == "UNHEALTHY"
    assert res["xvnc_pid"] == xvnc.pid
    assert 0.02 <= res["t_left"] - res["t_kill"] < 5


def test_kill_xvnc_gives_up_after_its_limit(tmp_path: Path) -> None:
    xvnc = subprocess.Popen(["sleep", "60"])
    state = _files(tmp_path, {"status": "HEALTHY\n", "status.json": json.dumps(
        {"children": {"xvnc": {"pid": xvnc.pid}}})})
    res = kill_xvnc.kill_and_watch(state, limit=0.05)
    xvnc.wait()
    assert res["word"] == "HEALTHY"
    assert res["t_left"] - res["t_kill"] >= 0.05


def _watch(tmp_path: Path, name: str, write: dict[str, str],
           limit: float) -> tuple[dict[str, Any], str]:
    """watch_app.watch with the menu cache ready; `write` lands after READY."""
    apps = tmp_path / "applications"
    menus = _files(tmp_path / "menus", {"3f2a-0": "# lxde-applications.menu\n-other.desktop\n"})
    apps.mkdir()
    out = io.StringIO()

    def writer() -> None:
        deadline = time.monotonic() + limit
        while "READY" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.03)
        _files(tmp_path, write)
    thread = threading.Thread(target=writer)
    thread.start()
    res = watch_app.watch(name, apps, menus, limit=limit, out=out)
    thread.join()
    return res, out.getvalue()


def test_watch_app_sees_the_copy_and_the_menu_entry(tmp_path: Path) -> None:
    t0 = time.time()
    res, out = _watch(tmp_path, "bench-1.desktop", {
        "applications/bench-1.desktop": "[Desktop Entry]\n",
        "menus/3f2a-0": "# lxde-applications.menu\n-other.desktop\n-bench-1.desktop\n",
    }, limit=10)
    assert out == "READY\n"
    assert res["t_app"] is not None
    assert res["t_menu"] is not None
    assert t0 + 0.03 <= res["t_app"] < t0 + 10
    assert t0 + 0.03 <= res["t_menu"] < t0 + 10


def test_watch_app_ignores_hidden_files_and_other_entries(tmp_path: Path) -> None:
    res, _ = _watch(tmp_path, "bench-1.desktop", {
        "menus/.3f2a-0.tmp": "# lxde-applications.menu\n-bench-1.desktop\n",
        "menus/3f2a-0": "# lxde-applications.menu\n-bench-1.desktop.old\n",
    }, limit=0.3)
    assert res == {"t_app": None, "t_menu": None}


def test_watch_app_survives_a_cache_file_gone_while_read(tmp_path: Path) -> None:
    """menu-cached writes a temporary file and renames it: one listed a moment ago may be
    gone when it is opened (seen in a full bench run, which crashed on it)."""
    menus = tmp_path / "menus"
    menus.mkdir()
    (menus / "3f2aV0ECZ3").symlink_to(menus / "gone")  # listed, cannot be opened
    (menus / "3f2a").write_text("# lxde-applications.menu\n")
    assert watch_app.wait_menu_cache(menus, limit=5), "the real cache file never recognised"


# -- certificates ------------------------------------------------------------------------------


def _alt_names(cert: x509.Certificate) -> list[tuple[str, str]]:
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [(type(n).__name__, str(n.value)) for n in alt]


def test_certgen_makes_a_certificate_for_its_name() -> None:
    start = datetime.now(UTC) - timedelta(days=2)
    cert, key = certgen.make(not_before=start, lifetime=timedelta(days=1), cn="a.test")
    assert _alt_names(cert) == [("DNSName", "a.test")]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=1)
    assert abs(cert.not_valid_before_utc - start) < timedelta(seconds=1)
    assert cert.public_key() == key.public_key()


def test_certgen_pem_is_certificate_then_key_optionally_encrypted() -> None:
    cert, key = certgen.make()
    plain = certgen.pem(cert, key)
    assert plain.startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"-----BEGIN PRIVATE KEY-----" in plain
    assert b"ENCRYPTED PRIVATE KEY" in certgen.pem(cert, key, password=b"hunter22")
    assert b"PRIVATE KEY" not in certgen.pem(cert, None)
    assert certgen.fingerprint(x509.load_pem_x509_certificate(plain)) == certgen.fingerprint(
        cert)


def test_certgen_pool_as_the_bench_runs_it(tmp_path: Path) -> None:
    """python3 -c SOURCE OUT COUNT, as `docker exec` runs it in the warm-up container."""
    out = subprocess.run([sys.executable, "-c", CERTGEN.read_text(), str(tmp_path), "2"],
                         capture_output=True, text=True, check=True).stdout
    prints = json.loads(out)
    assert sorted(prints) == ["cert0.pem", "cert1.pem"]
    for name, fp in prints.items():
        path = tmp_path / name
        assert path.stat().st_mode & 0o777 == 0o600
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        assert certgen.fingerprint(cert) == fp
        assert _alt_names(cert) == [("DNSName", "localhost"), ("IPAddress", "127.0.0.1")]
        assert cert.not_valid_before_utc < datetime.now(UTC) < cert.not_valid_after_utc
    assert prints["cert0.pem"] != prints["cert1.pem"]


def test_certgen_usage_error() -> None:
    assert certgen.main(["only-one"]) == 2


# -- the front door: figures, skips, the browser and the VNC sessions -------------------------


def test_a_rotation_must_drop_no_session_in_any_run() -> None:
    fig = figures.BY_KEY["cert_dropped"]
    assert figures.format_target(fig) == "0 sessions, every run"
    assert figures.verdict(fig, 0.0) == "yes"
    assert figures.verdict(fig, 0.0, conditions_ok=False) == "no"  # one run dropped one
    assert figures.verdict(fig, 1.0) == "no"
    assert str(figures.SESSIONS) in fig.label


def test_skipped_figures_are_not_errors_and_say_why() -> None:
    res = results.Results()
    res.skip(figures.GROUPS["browser"], "Playwright is not installed")
    doc = res.doc(["page_cold", "start_healthy"], 100_000)
    start, page = doc["figures"]  # in the table's order
    assert page["met"] == "skipped"
    assert page["note"] == "skipped: Playwright is not installed"
    assert page["error"] is None
    assert start["met"] == "no data"
    assert not res.errors
    md = render.render_markdown(doc)
    assert "| report | skipped |" in md


def test_a_session_figure_notes_every_runs_drops() -> None:
    res = results.Results()
    for dropped in (0, 1, 0):
        res.record("cert_dropped", dropped)
        res.require("cert_dropped", dropped == 0)
        res.detail.setdefault("cert_sessions", []).append({"dropped": dropped})
    entry = res.doc(["cert_dropped"], 100_000)["figures"][0]
    assert (entry["median"], entry["met"]) == (0, "no")
    assert entry["note"].startswith("dropped per run [0, 1, 0]")


def test_the_bench_needs_no_vnc_port() -> None:
    """nginx's web port is the desktop's only TCP listener: the runner passes no
    --vnc-port and checks only the web port."""
    assert "--vnc-port" not in cli.parser().format_help()
    source = (BENCH / "containers.py").read_text()
    assert "vnc_port" not in source
    assert "--vnc-port" not in source


def test_script_argv_with_stdin_is_interactive() -> None:
    running = Running("whaletop-bench-x", Path("/nonexistent"), 0.0,
                      subprocess.Popen(["true"]))
    running.proc.wait()
    argv = running.script_argv(VNC_SESSIONS, "8280", "3", stdin=True)
    assert argv[:4] == ["docker", "exec", "-i", "whaletop-bench-x"]
    assert argv[-2:] == ["8280", "3"]


def _request_event(clock: str, path: str, status: int, sent: int,
                   source: str = "nginx") -> dict[str, Any]:
    return {"source": source, "event": "request", "path": path, "status": status,
            "bytes": sent, "timestamp": f"2026-11-18T08:53:{clock}Z"}


def test_nginx_answers_count_a_visits_requests_by_status() -> None:
    events = [
        _request_event("20.0", "/vnc.html", 200, 100),  # before the visit
        _request_event("21.0", "/index.html", 200, 600),
        _request_event("21.1", "/app/ui.js", 304, 0),
        _request_event("21.2", "/auth/session", 404, 181),
        _request_event("21.3", "/websockify", 101, 36),  # not a page request
        _request_event("21.4", "/app/x.js", 200, 5, source="xvnc"),
        {"source": "nginx", "event": "child_started", "timestamp": "2026-11-18T08:53:21.5Z"},
        _request_event("23.0", "/vnc.html", 304, 0),  # the next visit
    ]
    answers = browser.nginx_answers(events, _at("21.0"), _at("22.0"))
    assert answers == {"statuses": {"200": 1, "304": 1, "404": 1}, "bytes": 781}


def _visit(total: float, resources: int, statuses: dict[str, int]) -> dict[str, Any]:
    return {"total_ms": total, "load_ms": total - 50, "redirect_ms": 70.0,
            "resources": resources, "transferred_bytes": 35_000, "decoded_bytes": 1_130_000,
            "nginx": {"statuses": statuses, "bytes": 0}}


def test_browser_notes_give_the_medians_of_the_runs() -> None:
    runs = [{"cold": _visit(v, 91, {"200": 88, "404": 3}),
             "warm": _visit(v, 89, {"304": 87, "404": n})} for v, n in ((700, 2), (800, 2),
                                                                          (900, 1))]
    notes = browser.browser_notes(runs)
    assert notes["page_cold"].startswith("91 resources (2 documents")
    assert "load event at 750 ms" in notes["page_cold"]
    assert "nginx answered 200 to 88, 404 to 3" in notes["page_cold"]
    assert "nginx answered 304 to 87, 404 to 2" in notes["page_warm"]
    assert "1130 kB uncompressed" in notes["page_bytes"]
    assert browser.browser_notes([]) == {}


def _executable(path: Path, text: str) -> str:
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(0o755)
    return str(path)


def test_find_browser_never_downloads_and_says_what_is_missing(tmp_path: Path) -> None:
    none = browser.find_browser(None, str(tmp_path / "no-chromium"))
    assert none.python is None
    assert "no browser at" in none.missing
    chromium = _executable(tmp_path / "chromium", 'echo "Chromium 1.2.3 built on Debian"\n')
    without = browser.find_browser(_executable(tmp_path / "py", "exit 1\n"), chromium)
    assert without.python is None
    assert "Playwright is not installed for" in without.missing
    found = browser.find_browser(_executable(tmp_path / "py3", "exit 0\n"), chromium)
    assert (found.python, found.missing) == (str(tmp_path / "py3"), "")
    assert found.version == "Chromium 1.2.3 built on Debian"
    assert not browser.has_playwright(str(tmp_path / "nonexistent"))


def test_page_load_times_from_the_web_roots_navigation_start() -> None:
    t0 = 1_800_000_000_000.0  # ms since the epoch
    entries = [
        {"name": "http://127.0.0.1:8280/", "type": "navigation", "start": t0, "end": t0 + 5,
         "load_end": t0 + 8, "transfer": 900, "encoded": 600, "decoded": 600},
        {"name": "http://127.0.0.1:8280/vnc.html?autoconnect=true", "type": "navigation",
         "start": t0 + 70, "end": t0 + 80, "load_end": t0 + 650, "transfer": 5000,
         "encoded": 4700, "decoded": 17000},
        {"name": "http://127.0.0.1:8280/app/images/info.svg", "type": "resource",
         "start": t0 + 600, "end": t0 + 700, "load_end": None, "transfer": 400,
         "encoded": 300, "decoded": 900},
    ]
    visit = page_load.summarize({"t0": t0, "origin": t0 + 70, "now": t0 + 1300,
                                 "entries": entries})
    assert visit["total_ms"] == 700.0  # the last asset, after the load event
    assert (visit["load_ms"], visit["redirect_ms"]) == (650.0, 70.0)
    assert (visit["resources"], visit["documents"]) == (3, 2)
    assert (visit["transferred_bytes"], visit["decoded_bytes"]) == (6300, 18500)
    assert visit["t_begin"] == pytest.approx(t0 / 1000)
    assert visit["t_end"] == pytest.approx(t0 / 1000 + 1.3)
    assert visit["slowest"][0] == {"name": "app/images/info.svg", "ms": 100.0}
    with pytest.raises(ValueError, match=r"vnc\.html was never loaded"):
        page_load.summarize({"t0": t0, "origin": t0, "now": t0, "entries": entries[:1]})


def test_page_load_script_runs_without_the_bench_package() -> None:
    """Run by another interpreter (tox's e2e one): the standard library and Playwright."""
    tree = ast.parse(PAGE_LOAD.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported - {"playwright"} <= set(sys.stdlib_module_names)
    assert "/usr/bin/chromium" in PAGE_LOAD.read_text()


class FakeVnc:
    """A WebSocket + RFB server as nginx, websockify and Xvnc look to a client: VNC
    authentication, a 100x80 screen, a FramebufferUpdate for each non-incremental
    request (incremental ones wait for a change, which never comes).  drop() ends a
    connection, as a restart of the server would."""

    PASSWORD = "s3cret!x"

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.tls = tls
        self.conns: list[socket.socket] = []
        self.errors: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def drop(self, n: int) -> None:
        self.conns[n].shutdown(socket.SHUT_RDWR)
        self.conns[n].close()

    def close(self) -> None:
        self.server.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.close()

    @staticmethod
    def _des(challenge: bytes, password: str) -> bytes:
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
        from cryptography.hazmat.primitives.ciphers import Cipher, modes

        key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode()[:8].ljust(8, b"\0"))
        enc = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
        return enc.update(challenge) + enc.finalize()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self.conns.append(conn)
            reader = conn.makefile("rb")
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += reader.read(1)
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + vnc_sessions.WS_GUID).digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
                         + b"\r\n\r\n")
            buffer = b""

            def recv(size: int) -> bytes:
                nonlocal buffer
                while len(buffer) < size:
                    head = reader.read(2)
                    if len(head) < 2:
                        raise EOFError  # the client closed: the end of the session
                    length = head[1] & 0x7F
                    if length == 126:
                        length = struct.unpack("!H", reader.read(2))[0]
                    mask = reader.read(4)
                    payload = reader.read(length)
                    buffer += bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                data, buffer = buffer[:size], buffer[size:]
                return data

            def send(data: bytes) -> None:
                size = len(data)
                head = (bytes([0x82, size]) if size < 126
                        else bytes([0x82, 126]) + struct.pack("!H", size))
                conn.sendall(head + data)

            send(b"RFB 003.008\n")
            assert recv(12) == b"RFB 003.008\n"
            send(b"\x01\x02")
            assert recv(1) == b"\x02"
            challenge = os.urandom(16)
            send(challenge)
            ok = recv(16) == self._des(challenge, self.PASSWORD)
            send(struct.pack("!I", 0 if ok else 1))
            if not ok:
                return
            assert recv(1) == b"\x01"  # shared
            pixel_format = bytes([32, 24, 0, 1]) + bytes(12)
            send(struct.pack("!HH", 100, 80) + pixel_format + struct.pack("!I", 4) + b"fake")
            while True:
                kind = recv(1)[0]
                if kind == 2:  # SetEncodings
                    count = struct.unpack("!xH", recv(3))[0]
                    assert struct.unpack(f"!{count}i", recv(4 * count)) == (0,)
                elif kind == 3:
                    incremental, x, y, w, h = struct.unpack("!BHHHH", recv(9))
                    if not incremental:
                        send(b"\x02")  # a bell first: a client skips it
                        send(struct.pack("!BxH", 0, 1) + struct.pack("!HHHHi", x, y, w, h, 0)
                             + bytes(w * h * 4))
                else:
                    raise AssertionError(f"unexpected client message {kind}")
        except EOFError:
            pass
        except (OSError, ValueError, AssertionError) as exc:
            self.errors.append(repr(exc))


def _sessions(server: FakeVnc, count: int, tls: bool,
              between: Callable[[], None] = lambda: None) -> tuple[dict[str, Any], str]:
    """vnc_sessions.run against the fake server; `between` runs once all are ready."""
    read_end, write_end = os.pipe()
    out = io.StringIO()
    result: dict[str, Any] = {}

    def run() -> None:
        with os.fdopen(read_end) as stdin:
            result.update(vnc_sessions.run(server.port, count, tls, FakeVnc.PASSWORD,
                                           stdin=stdin, out=out, limit=2.0))
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 10
    while "ready" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    between()
    os.write(write_end, b"check\n")
    os.close(write_end)
    thread.join(timeout=20)
    return result, out.getvalue()


def test_vnc_sessions_log_in_and_stay_through_a_change() -> None:
    server = FakeVnc()
    try:
        result, out = _sessions(server, 3, tls=False)
        errors = list(server.errors)  # before close() ends the server's side
    finally:
        server.close()
    ready = json.loads(out.splitlines()[0])
    assert (ready["ready"], ready["screen"]) == (3, [100, 80])
    assert (result["opened"], result["alive"], result["dropped"]) == (3, 3, 0)
    assert all(s["updates"] == 2 and s["error"] is None for s in result["sessions"])
    assert json.loads(out.splitlines()[1])["alive"] == 3
    assert not errors


def test_vnc_sessions_count_a_dropped_connection_over_tls(tmp_path: Path) -> None:
    cert, key = certgen.make(cn="localhost", names=("127.0.0.1",))
    (tmp_path / "tls.pem").write_bytes(certgen.pem(cert, key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.pem")
    server = FakeVnc(tls=context)
    try:
        result, _ = _sessions(server, 2, tls=True, between=lambda: server.drop(1))
    finally:
        server.close()
    assert (result["alive"], result["dropped"]) == (1, 1)
    assert result["sessions"][0]["alive"]
    assert result["sessions"][1]["error"]


def test_vnc_sessions_refuse_a_wrong_password() -> None:
    server = FakeVnc()
    try:
        with pytest.raises(vnc_sessions.SessionError, match="authentication failed"):
            vnc_sessions.open_session("127.0.0.1", server.port, "wrong", tls=False)
    finally:
        server.close()


def test_ws_frames_are_masked_with_the_right_length() -> None:
    for size, head in ((5, 2), (300, 4), (70_000, 10)):
        frame = vnc_sessions.ws_frame(b"x" * size)
        assert frame[0] == 0x82
        assert frame[1] & 0x80
        assert len(frame) == head + 4 + size


def test_nginx_workers_lists_the_workers_by_their_title(tmp_path: Path) -> None:
    _files(tmp_path, {"7/cmdline": "nginx: master process nginx -c x\0",
                      "8/cmdline": "nginx: worker process\0",
                      "9/cmdline": "nginx: worker process is shutting down\0",
                      "10/cmdline": "python3\0-m\0whaletopd\0",
                      "self/cmdline": "nginx: worker process\0"})
    assert vnc_sessions.nginx_workers(tmp_path) == [
        "nginx: worker process", "nginx: worker process is shutting down"]


def test_every_figure_of_a_group_can_be_rendered() -> None:
    """BY_KEY is built from FIGURES: a figure added after it could be measured, then
    not rendered (KeyError after the runs)."""
    assert {k for keys in figures.GROUPS.values() for k in keys} <= set(figures.BY_KEY)
