"""The bench package without Docker: statistics, timestamps, log parsing, timeline,
rendering, the results document, cgroup files, and the scripts it runs in the container
(run here against temporary folders and this test's own processes).

The measurements themselves need real containers: `tox -e bench` runs them once.
"""

from __future__ import annotations

import ast
import io
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from bench import certgen, cgroups, cli, cpu, figures, render, report, results, timeline
from bench.containers import BenchError, Running
from bench.in_container import kill_xvnc, snapshot, watch_app
from bench.measure import CERTGEN, KILL_XVNC, SNAPSHOT, WATCH_APP
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
    assert rows[1] == "| whaletopd RSS (idle) | 31.0 MiB | 30.0 | 32.0 | ≤ 25 MiB | **no** |"
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

SCRIPTS = [CERTGEN, KILL_XVNC, SNAPSHOT, WATCH_APP]


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
        (state / "status").write_text("UNHEALTHY\n")
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
