"""`python -m bench --original SOURCE` without Docker: its option, the original's base
image, how each side is run, the results section merged into results.json and its table,
and compare.py (the in-container part) against this test's own processes and files.

The comparison itself needs real containers: `python -m bench --original` runs it.
"""

from __future__ import annotations

import ast
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bench import cli, original, render
from bench.containers import BenchError
from bench.in_container import compare
from tests.unit.rfb import RFBServer

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


# -- the option ------------------------------------------------------------------------------

def test_original_option_takes_a_checkout_path() -> None:
    assert cli.parser().parse_args(["--original", "/work/original"]).original == \
        Path("/work/original")
    assert cli.parser().parse_args([]).original is None


def test_original_names_the_checkout_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "--original SOURCE" in capsys.readouterr().out


def test_a_folder_that_is_not_the_original_is_refused_before_any_docker_call(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # a docker call would raise
    (tmp_path / "Dockerfile").write_text("FROM debian:12\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["--original", str(tmp_path)])
    assert info.value.code == 2
    assert f"{tmp_path} has no Scripts/start.py: not a checkout" in capsys.readouterr().err


# -- the original's base image and how it is run ----------------------------------------------

@pytest.mark.parametrize(("dockerfile", "want"), [
    ("FROM debian:12\nRUN true\n", ("debian:12", "bookworm")),
    ("# a comment\nfrom --platform=linux/amd64 debian:trixie-slim AS base\n",
     ("debian:trixie-slim", "trixie")),
    ("FROM debian:11.9\n", ("debian:11.9", "bullseye")),
])
def test_base_image_and_its_debian_suite(dockerfile: str, want: tuple[str, str]) -> None:
    assert original.base_image(dockerfile) == want


@pytest.mark.parametrize(("dockerfile", "message"), [
    ("FROM ubuntu:24.04\n", "not Debian"),
    ("FROM debian:sid-of-nothing-known\n", "no known Debian suite"),
    ("RUN true\n", "no FROM line"),
])
def test_a_base_that_cannot_be_bootstrapped_says_why(dockerfile: str, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        original.base_image(dockerfile)


def test_the_original_runs_its_own_command_on_the_bench_port_and_display() -> None:
    argv = original.Side("original", "whaletop-original:x").run_argv(
        "n", Path("/s"), 8280)
    assert argv[:8] == ["docker", "run", "-d", "--name", "n", "--network", "host", "-v"]
    assert "/s:/opt/whaletop" in argv
    assert argv[-1] == "whaletop-original:x"  # its default command, /start.py
    for env in ("NOVNC_PORT=8280", "DISPLAY=:37", "VNC_PORT=5937"):
        assert argv[argv.index(env) - 1] == "-e"


def test_whaletop_runs_start_py_with_the_web_port() -> None:
    side = original.Side("whaletop", "whaletop:test")
    argv = side.run_argv("n", Path("/s"), 8280)
    assert argv[-3:] == ["whaletop:test", "/start.py", "--web-port=8280"]
    assert side.display == 1


def test_rfb_answers_through_a_websocket_only() -> None:
    ws = RFBServer(transport="ws")
    http = RFBServer(mode="http")
    try:
        assert original.rfb_answers(ws.port)
        assert not original.rfb_answers(http.port)
    finally:
        ws.close()
        http.close()
    with socket.create_server(("127.0.0.1", 0)) as gone:
        port = gone.getsockname()[1]  # nobody listens once closed
    assert not original.rfb_answers(port)


def test_percentiles() -> None:
    assert original.percentile([5.0], 0.95) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert original.percentile(values, 0.5) == pytest.approx(50.5)
    assert original.percentile(values, 0.95) == pytest.approx(95.05)


# -- the section, merged into results.json ------------------------------------------------------

def _section() -> dict[str, Any]:
    res = {side: original.SideResults.empty() for side in original.SIDES}
    res["original"].values["start_healthy"] += [3.5, 3.7, 3.6]
    res["whaletop"].values["start_healthy"] += [0.5, 0.4, 0.6]
    res["original"].values["image_size"].append(1832.0)
    res["whaletop"].values["image_size"].append(1295.0)
    res["original"].errors["restart"] = "the container exited (1)"
    res["whaletop"].values["restart"].append(1.2)
    res["whaletop"].note("stop", "exit 0")
    meta = {"date": "2026-11-30 03:00 UTC", "mode": "full", "runs": 3,
            "machine": {"cores": 2}, "source": {"repository": "mbainrot/whaletop",
                                                "commit": "bb744c3" + "0" * 33},
            "images": {"original": {"tag": "whaletop-original:bb744c300000"},
                       "whaletop": {"tag": "whaletop:test"}}}
    return original.section(res, meta)


def _results_doc() -> dict[str, Any]:
    return {"mode": "full", "runs": 5, "machine": {"cores": 2}, "figures": [
        {"key": "start_healthy", "label": "x", "unit": "s", "median": 0.5, "min": 0.4,
         "max": 0.6, "n": 3, "values": [0.5], "met": "yes", "original": "3.6 s",
         "note": None, "error": None},
        {"key": "daemon_rss", "label": "y", "unit": "MiB", "median": 30.0, "min": 30.0,
         "max": 30.0, "n": 1, "values": [30.0], "met": "no", "original": "25.3 MB",
         "note": None, "error": None},
        {"key": "stop", "label": "z", "unit": "s", "median": 0.6, "min": 0.6,
         "max": 0.6, "n": 1, "values": [0.6], "met": "yes", "original": "10 s, SIGKILL",
         "note": None, "error": None}]}


def test_section_has_both_sides_of_every_figure() -> None:
    sec = _section()
    assert [f["key"] for f in sec["figures"]] == [f.key for f in original.FIGURES]
    start = next(f for f in sec["figures"] if f["key"] == "start_healthy")
    assert start["original"]["median"] == 3.6
    assert start["whaletop"] | {"values": None} == {
        "median": 0.5, "min": 0.4, "max": 0.6, "n": 3, "values": None, "note": None,
        "error": None}
    restart = next(f for f in sec["figures"] if f["key"] == "restart")
    assert restart["original"]["median"] is None
    assert restart["original"]["error"] == "the container exited (1)"


def test_merge_puts_the_section_in_and_replaces_quoted_figures() -> None:
    doc = _results_doc()
    merged = original.merge(doc, _section())
    assert merged["original"] == _section()
    by_key = {f["key"]: f for f in merged["figures"]}
    assert by_key["start_healthy"]["original"].startswith("3.600 s (measured 2026-11-30")
    assert by_key["stop"]["original"] == "10 s, SIGKILL"  # no run of the original: kept
    assert by_key["daemon_rss"]["original"] == "25.3 MB"  # not measured side by side
    assert doc["figures"][0]["original"] == "3.6 s"  # the input is left alone
    # the rest of the document, and so results.md, unchanged; merging again is the same
    assert {k: v for k, v in merged.items() if k not in ("original", "figures")} == \
        {k: v for k, v in doc.items() if k != "figures"}
    assert original.merge(merged, _section()) == merged


def test_merged_results_still_render_the_same_results_md() -> None:
    doc = {**_results_doc(), "date": "d", "image": {"tag": "t", "id": "i"}, "commit": "c"}
    doc["figures"] = [f for f in doc["figures"] if f["key"] != "daemon_rss"]
    assert render.render_markdown(original.merge(doc, _section())) == \
        render.render_markdown(doc)


def test_markdown_table_has_both_columns_and_says_why_a_figure_is_missing() -> None:
    md = original.render_markdown(_section())
    lines = md.splitlines()
    assert lines[0] == original.GENERATED
    assert "`mbainrot/whaletop` at `bb744c300000`" in lines[1]
    header = lines.index("| figure | unit | original | min | max | whaletop | min | max |")
    rows = lines[header + 2:header + 2 + len(original.FIGURES)]
    assert all(r.startswith("| ") for r in rows)
    assert "| docker run → status file says HEALTHY | s | 3.600 | 3.500 | 3.700 | 0.500 | " \
           "0.400 | 0.600 |" in rows
    assert "| image size (with Chromium) | MB | 1832 | 1832 | 1832 | 1295 | 1295 | 1295 |" \
        in rows
    assert any(r.startswith("| docker restart → VNC server answers through the web port "
                            "again | s | — |  |  | 1.200 |") for r in rows)
    assert "- docker restart → VNC server answers through the web port again, original: " \
           "cannot: the container exited (1)" in lines
    assert "- docker stop of a running desktop, whaletop: exit 0" in lines


def test_write_merges_into_an_existing_results_json_or_makes_one(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps(_results_doc()))
    assert original.write(_section(), tmp_path) == ["results.json", "original.md"]
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["figures"][1] == _results_doc()["figures"][1]
    assert doc["original"]["figures"][0]["key"] == "start_connectable"
    assert (tmp_path / "original.md").read_text() == original.render_markdown(_section())
    fresh = tmp_path / "fresh"
    original.write(_section(), fresh)
    assert json.loads((fresh / "results.json").read_text()) == {"original": _section()}


def test_committed_original_md_is_rendered_from_results_json() -> None:
    doc = json.loads((BENCH / "results.json").read_text(encoding="utf-8"))
    if "original" not in doc:
        pytest.skip("no side-by-side run merged yet")
    assert original.render_markdown(doc["original"]) == \
        (BENCH / "original.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- original-table -->\n", 1)[1].split("<!-- /original-table -->")[0]
    assert block == (BENCH / "original.md").read_text(encoding="utf-8")


# -- compare.py, run in either container ------------------------------------------------------

def test_compare_stands_alone_but_for_the_vnc_client_it_is_given() -> None:
    tree = ast.parse(original.COMPARE.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported - {"vnc_sessions"} <= set(sys.stdlib_module_names)


def test_compare_argv_runs_with_vnc_sessions_registered(tmp_path: Path) -> None:
    """The bootstrap docker exec hands to python3 (here this one): compare.py's main runs,
    with vnc_sessions importable and its own main not run."""
    argv = original.compare_argv("whaletop-bench-x", "bogus")
    assert argv[:5] == ["docker", "exec", "whaletop-bench-x", "python3", "-c"]
    out = subprocess.run([sys.executable, "-c", argv[5], *argv[6:]], capture_output=True,
                         text=True, check=False, timeout=30)
    assert out.returncode == 2, out.stderr  # compare.py's usage: "bogus" is no command
    assert "python3 -c SOURCE kill" in out.stderr
    password = tmp_path / "vnc_passwd"
    password.write_text("s3cretpw\n")
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]  # nobody listens once closed
    argv = original.compare_argv("x", "keys", str(port), "1", "--password-file",
                                 str(password))
    out = subprocess.run([sys.executable, "-c", argv[5], *argv[6:]], capture_output=True,
                         text=True, check=False, timeout=30)
    assert "ConnectionRefusedError" in out.stderr  # it got past importing the client
    assert "ModuleNotFoundError" not in out.stderr


def _fake_proc(root: Path, pids: dict[int, str]) -> Path:
    for pid, name in pids.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "comm").write_text(name + "\n")
    return root


def test_kill_finds_xvnc_by_name_kills_it_and_times_the_status(tmp_path: Path) -> None:
    xvnc = subprocess.Popen(["sleep", "60"])
    proc = _fake_proc(tmp_path / "proc", {1: "python3", xvnc.pid: "Xtigervnc"})
    state = tmp_path / "state"
    state.mkdir()
    (state / "status").write_text("HEALTHY")

    def start_py() -> None:  # the original's loop: a second later, it writes the word
        xvnc.wait()
        time.sleep(0.02)
        (state / "status.new").write_text("UNHEALTHY")
        (state / "status.new").replace(state / "status")
    thread = threading.Thread(target=start_py)
    thread.start()
    try:
        res = compare.kill_and_watch(state, proc=proc)
    finally:
        xvnc.kill()
        thread.join()
    assert xvnc.returncode == -signal.SIGKILL
    assert res["xvnc_pid"] == xvnc.pid
    assert res["word"] == "UNHEALTHY"
    assert 0.02 <= res["t_left"] - res["t_kill"] < 5


def test_kill_without_an_x_server_says_so(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no Xtigervnc or Xvnc process"):
        compare.find_xvnc(_fake_proc(tmp_path, {1: "python3", 2: "Xvncfake"}))


def test_containers_that_exited_before_they_were_up_are_counted_once_per_reason(
        tmp_path: Path) -> None:
    runner = original.Compare([original.Side("original", "o"), original.Side("whaletop", "w")],
                              8391, tmp_path, 3, True, 0.0)
    res = runner.results["original"]
    res.failed_starts += ["the container exited (0): X", "the container exited (0): X",
                          "up, then 'UNHEALTHY'"]
    runner.launchers["original"].host += [{}] * 7  # containers started
    runner.start_notes()
    assert res.notes["start_connectable"] == [
        "3 of 7 containers exited before they were up (that run was tried again): "
        "the container exited (0): X; up, then 'UNHEALTHY'"]
    assert runner.results["whaletop"].notes["start_connectable"] == []
