"""/metrics' numbers: the part on its own (its text as Prometheus' own checker judges it,
its counters from many threads, its file replaced whole), then fed by the real parts
that tell it things: the prober's thread, a child's output pump, and the Desktop run
through the machine (test_machine.py's lifecycle seams: real supervisor, prober,
deadlines, front door files)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from whaletopd import children, machine
from whaletopd.children import RunAs
from whaletopd.config import Config
from whaletopd.events import EventQueue, ProbePassed, Start
from whaletopd.machine import HEALTHY, RECOVERING, STOPPED
from whaletopd.metrics import PROBE_BUCKETS, Metrics
from whaletopd.paths import Paths
from whaletopd.probes import Probe, ProbeError, Prober, run_all
from whaletopd.programs import Launch, Program

from .. import tools
from .helpers import WAIT, wait_for
from .test_machine import Run, _desktop, programs


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value of every sample line."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def promtool_check(text: str) -> None:
    """Prometheus' own judgement of the text (format, names, HELP and TYPE lines)."""
    result = subprocess.run([tools.PROMTOOL.require(), "check", "metrics"], input=text, text=True,
                            capture_output=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == "", "promtool has remarks"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "metrics" / "metrics.prom"


# -- the text ----------------------------------------------------------------------------

def test_every_family_passes_promtool(path: Path) -> None:
    m = Metrics(path, ["websockify", "nginx"], tls=True, sign_in=True, start_time=1.5e9)
    m.transition("start")
    m.restarted("nginx")
    m.observe_probes({"x_display": 0.0004, "web_login": 0.03})
    m.child_event("webauth", "sign_in_failed")
    m.publish(HEALTHY, clients=2, not_after=1.9e9)
    text = path.read_text()
    promtool_check(text)
    for family in ("whaletop_state", "whaletop_transitions_total",
                   "whaletop_child_restarts_total", "whaletop_probe_duration_seconds",
                   "whaletop_certificate_not_after_seconds", "whaletop_connected_clients",
                   "whaletop_sign_in_failures_total", "whaletop_start_time_seconds"):
        assert f"# HELP {family} " in text
        assert f"# TYPE {family} " in text
    got = samples(text)
    assert got["whaletop_certificate_not_after_seconds"] == 1.9e9
    assert got["whaletop_connected_clients"] == 2
    assert got["whaletop_sign_in_failures_total"] == 1
    assert got["whaletop_start_time_seconds"] == 1.5e9
    assert got['whaletop_child_restarts_total{child="nginx"}'] == 1
    assert got['whaletop_child_restarts_total{child="websockify"}'] == 0


def test_the_state_gauge_names_every_state_of_the_machine(path: Path) -> None:
    m = Metrics(path, [])
    assert {k: v for k, v in samples(m.render()).items() if k.startswith("whaletop_state{")
            } == {f'whaletop_state{{state="{s}"}}': float(s == machine.INIT)
                  for s in machine.STATES}
    for state in machine.STATES:
        m.publish(state)
        states = {k: v for k, v in samples(path.read_text()).items()
                  if k.startswith("whaletop_state{")}
        assert states == {f'whaletop_state{{state="{s}"}}': float(s == state)
                          for s in machine.STATES}


def test_transitions_start_at_zero_for_every_trigger_and_count(path: Path) -> None:
    m = Metrics(path, [])
    triggers = {t["trigger"] for t in machine.TRANSITIONS}
    counts = {k: v for k, v in samples(m.render()).items()
              if k.startswith("whaletop_transitions_total")}
    assert counts == {f'whaletop_transitions_total{{trigger="{t}"}}': 0 for t in triggers}
    for trigger in ("start", "probe_passed", "probe_passed"):
        m.transition(trigger)
    got = samples(m.render())
    assert got['whaletop_transitions_total{trigger="probe_passed"}'] == 2
    assert got['whaletop_transitions_total{trigger="start"}'] == 1
    assert got['whaletop_transitions_total{trigger="stop"}'] == 0


def test_probe_durations_are_a_cumulative_histogram_per_probe(path: Path) -> None:
    m = Metrics(path, [])
    assert "whaletop_probe_duration_seconds_count" not in m.render()
    for value in (0.0005, 0.003, 0.003, 0.7, 60.0):
        m.observe_probes({"web_login": value})
    m.observe_probes({"x_display": 0.001})  # on a bound: counted in it (le is <=)
    got = samples(path.read_text())

    def bucket(probe: str, le: str) -> float:
        return got[f'whaletop_probe_duration_seconds_bucket{{probe="{probe}",le="{le}"}}']

    assert [bucket("web_login", repr(b)) for b in PROBE_BUCKETS] == [
        1, 1, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4]
    assert bucket("web_login", "+Inf") == 5
    assert got['whaletop_probe_duration_seconds_count{probe="web_login"}'] == 5
    assert got['whaletop_probe_duration_seconds_sum{probe="web_login"}'] == pytest.approx(
        60.7065)
    assert bucket("x_display", "0.001") == 1
    promtool_check(path.read_text())


def test_what_is_not_known_or_not_configured_is_left_out(path: Path) -> None:
    text = Metrics(path, ["websockify"]).render()
    assert "whaletop_certificate_not_after_seconds" not in text  # no TLS
    assert "whaletop_connected_clients" not in text  # not known
    assert "whaletop_sign_in_failures_total" not in text  # no sign-in
    m = Metrics(path, [], tls=True)
    m.publish(HEALTHY, clients=None, not_after=None)  # TLS, before the certificate
    assert "whaletop_certificate_not_after_seconds" not in path.read_text()
    m.publish(HEALTHY, clients=0)
    assert samples(path.read_text())["whaletop_connected_clients"] == 0


def test_the_start_time_is_the_wall_clock_at_start(path: Path) -> None:
    before = time.time()
    start = samples(Metrics(path, []).render())["whaletop_start_time_seconds"]
    assert before - 0.001 <= start <= time.time() + 0.001


# -- threads -------------------------------------------------------------------------------

def test_sign_in_failures_from_many_threads_are_all_counted(path: Path) -> None:
    """Only the sign-in service's `sign_in_failed`: nginx's requests and the other
    events of the sign-in service are not failures."""
    m = Metrics(path, [], sign_in=True)

    def pump() -> None:
        for _ in range(200):
            m.child_event("webauth", "sign_in_failed")
            m.child_event("webauth", "sign_in_locked")
            m.child_event("nginx", "request")
            m.child_event("nginx", "sign_in_failed")  # a forged path cannot count

    threads = [threading.Thread(target=pump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert samples(path.read_text())["whaletop_sign_in_failures_total"] == 800


def test_the_file_is_replaced_whole_never_half_written(path: Path) -> None:
    """Readers (nginx) see the old text or the new one, whatever the writers do."""
    m = Metrics(path, ["websockify"], sign_in=True)
    m.publish(HEALTHY)
    seen: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(path.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=lambda: [m.observe_probes({f"p{i}": 0.01})
                                                for i in range(50)]),
               threading.Thread(target=lambda: [m.child_event("webauth", "sign_in_failed")
                                                for _ in range(100)])]
    for t in writers:
        t.start()
    for t in writers:
        t.join(WAIT)
    stop.set()
    reader.join(WAIT)
    assert seen
    for text in seen:
        assert text.startswith("# HELP whaletop_state ")
        assert text.endswith("\n")
        assert "whaletop_start_time_seconds " in text.splitlines()[-1]
    # The last write is the newest snapshot: nothing older landed after it.
    assert samples(path.read_text())["whaletop_sign_in_failures_total"] == 100
    assert path.stat().st_mode & 0o777 == 0o644, "nginx's worker (another account) reads it"
    assert path.parent.stat().st_mode & 0o777 == 0o755
    assert [p.name for p in path.parent.iterdir()] == [path.name], "temporary files left"


def test_a_write_that_fails_is_one_warning_and_recovery_one_line(path: Path) -> None:
    path.parent.parent.mkdir(parents=True)
    path.parent.write_text("not a folder")
    m = Metrics(path, [])
    with capture_logs() as logs:
        m.publish(HEALTHY)
        m.observe_probes({"x_display": 0.001})
        path.parent.unlink()
        m.publish(HEALTHY)
        m.publish(HEALTHY)
    assert [e["event"] for e in logs] == ["metrics_write_failed", "metrics_write_recovered"]
    assert logs[0]["log_level"] == "warning"
    assert logs[0]["path"] == str(path)
    assert samples(path.read_text())[
        'whaletop_probe_duration_seconds_count{probe="x_display"}'] == 1


# -- the parts that feed it ----------------------------------------------------------------

def test_run_all_times_each_check_that_ran_passed_or_failed() -> None:
    def slow_pass() -> None:
        time.sleep(0.02)

    def slow_fail() -> None:
        time.sleep(0.03)
        raise ProbeError("down")

    seconds: dict[str, float] = {}
    checks = [Probe("a", "xvnc", slow_pass), Probe("b", "websockify", slow_fail),
              Probe("c", "nginx", lambda: None)]
    assert run_all(checks, seconds) == ("down", "websockify")
    assert set(seconds) == {"a", "b"}, "c never ran"
    assert seconds["a"] >= 0.02
    assert seconds["b"] >= 0.03


def test_the_prober_hands_each_round_s_durations_to_the_metrics(path: Path) -> None:
    m = Metrics(path, [])
    q = EventQueue()
    prober = Prober([Probe("x_display", "xvnc", lambda: None),
                     Probe("web_login", "nginx", lambda: None)], q, interval=0.001,
                    observe=m.observe_probes)
    prober.start()
    try:
        assert isinstance(q.get(timeout=WAIT), ProbePassed)

        def rounds(probe: str) -> float:
            key = f'whaletop_probe_duration_seconds_count{{probe="{probe}"}}'
            return samples(path.read_text()).get(key, 0) if path.exists() else 0

        wait_for(lambda: rounds("web_login") >= 3, "three rounds in the file")
    finally:
        prober.stop()
    got = samples(path.read_text())
    assert got['whaletop_probe_duration_seconds_count{probe="x_display"}'] >= 3


def test_the_sign_in_service_s_failures_reach_the_metrics_through_its_pump(
        path: Path, run_as: RunAs, tmp_path: Path) -> None:
    """The real output pump of a JSON-lines child; its lines are still logged."""
    m = Metrics(path, [], sign_in=True)
    q = EventQueue()
    script = tmp_path / "lines"
    script.write_text('{"event":"sign_in_failed","level":"warning","client":"192.0.2.1"}\n'
                      '{"event":"signed_in","level":"info","user":"alice"}\n'
                      '{"event":"sign_in_failed","level":"warning","client":"192.0.2.1"}\n'
                      "done\n")
    with capture_logs() as logs:
        children.spawn("webauth", ["cat", str(script)], run_as,
                       {"PATH": os.environ["PATH"]}, q, json_lines=True,
                       on_event=m.child_event)
        wait_for(lambda: any(e["event"] == "done" for e in logs), "the last line")
    assert [e["event"] for e in logs if e.get("source") == "webauth"] == [
        "sign_in_failed", "signed_in", "sign_in_failed", "done"]
    assert samples(path.read_text())["whaletop_sign_in_failures_total"] == 2


def test_a_hook_that_raises_does_not_stop_the_pump(run_as: RunAs, tmp_path: Path) -> None:
    def broken(child: str, event: str) -> None:
        raise RuntimeError("a bug")

    script = tmp_path / "lines"
    script.write_text('{"event":"a"}\n{"event":"b"}\ndone\n')
    with capture_logs() as logs:
        children.spawn("webauth", ["cat", str(script)], run_as,
                       {"PATH": os.environ["PATH"]}, EventQueue(), json_lines=True,
                       on_event=broken)
        wait_for(lambda: any(e["event"] == "done" for e in logs), "the last line")
    assert [e["event"] for e in logs if e.get("source") == "webauth"] == ["a", "b", "done"]
    assert [e["event_name"] for e in logs if e["event"] == "event_hook_failed"] == ["a", "b"]


# -- the desktop ---------------------------------------------------------------------------

@pytest.fixture
def runs() -> Iterator[list[Run]]:
    made: list[Run] = []
    yield made
    for run in made:
        if run.desktop.prober is not None:
            run.desktop.prober.stop()
        run.desktop.web.stop()
        run.desktop.menu.stop()
        run.desktop.children.stop_all()


@pytest.fixture
def start(paths: Paths, run_as: RunAs, runs: list[Run]) -> Callable[..., Run]:
    def start(config: Config | None = None,
              table: tuple[Program, ...] | None = None) -> Run:
        cfg = config or Config(startup_timeout=WAIT, probe_interval=0.005)
        desktop, checks = _desktop(paths, run_as, cfg, table)
        machine.build(desktop)
        desktop.events.post(Start())
        run = Run(desktop, paths, checks)
        runs.append(run)
        return run
    return start


def test_the_desktop_s_metrics_follow_its_life(start: Callable[..., Run], paths: Paths) -> None:
    run = start()
    run.until_state(HEALTHY)
    got = samples(paths.metrics_file.read_text())
    assert got['whaletop_state{state="HEALTHY"}'] == 1
    assert got['whaletop_transitions_total{trigger="start"}'] == 1
    assert got['whaletop_transitions_total{trigger="launched"}'] == 1
    assert got['whaletop_transitions_total{trigger="probe_passed"}'] == 1
    assert got['whaletop_child_restarts_total{child="websockify"}'] == 0
    assert "xvnc" not in paths.metrics_file.read_text(), "xvnc is never restarted"
    assert "whaletop_connected_clients" not in paths.metrics_file.read_text()
    wait_for(lambda: 'probe="web_login"' in paths.metrics_file.read_text(),
             "a round of checks in the file")

    old = run.child("websockify")
    os.kill(old.pid, signal.SIGKILL)
    run.until_state(RECOVERING)
    assert samples(paths.metrics_file.read_text())['whaletop_state{state="RECOVERING"}'] == 1
    run.until_state(HEALTHY)
    got = samples(paths.metrics_file.read_text())
    assert got['whaletop_child_restarts_total{child="websockify"}'] == 1
    assert got['whaletop_child_restarts_total{child="nginx"}'] == 0
    assert got['whaletop_transitions_total{trigger="child_exited"}'] == 1
    assert got['whaletop_transitions_total{trigger="restart_due"}'] == 1
    assert got['whaletop_transitions_total{trigger="probe_passed"}'] == 2

    run.desktop.clients = 3  # what the idle watch sets; written at the next transition
    assert run.stop() == 0
    text = paths.metrics_file.read_text()
    got = samples(text)
    assert got['whaletop_state{state="STOPPED"}'] == 1
    assert sum(v for k, v in got.items() if k.startswith("whaletop_state{")) == 1
    assert got["whaletop_connected_clients"] == 3
    assert run.desktop.state == STOPPED
    promtool_check(text)


def _sign_in_failures(launch: Launch) -> list[str]:
    """The sign-in service's stand-in: two failed sign-ins, then it waits."""
    line = '{"event":"sign_in_failed","level":"warning","client":"192.0.2.1"}'
    return ["sh", "-c", f"echo '{line}'; echo '{line}'; exec sleep 60"]


def test_with_sign_in_and_tls_failures_and_the_certificate_are_there(
        start: Callable[..., Run], paths: Paths) -> None:
    table = tuple(Program(p.name, _sign_in_failures, restart=p.restart,
                          stop_order=p.stop_order, account=p.account, probes=p.probes,
                          wanted=p.wanted, json_lines=True) if p.name == "webauth" else p
                  for p in programs())
    run = start(Config(web_password_from_env=True, web_password="correct horse",
                       enable_tls=True, startup_timeout=WAIT, probe_interval=0.005),
                table)
    run.until_state(HEALTHY)
    wait_for(lambda: "whaletop_sign_in_failures_total 2" in paths.metrics_file.read_text(),
             "two sign-in failures counted")
    got = samples(paths.metrics_file.read_text())
    tls = json.loads(paths.status_json.read_text())["tls"]
    not_after = datetime.fromisoformat(tls["not_after"]).timestamp()
    assert got["whaletop_certificate_not_after_seconds"] == not_after
    assert got['whaletop_child_restarts_total{child="webauth"}'] == 0
    assert run.stop() == 0


def test_a_round_observed_without_writing_is_in_the_next_write(tmp_path: Path) -> None:
    """The cheap health rounds are counted at once and written with the next write."""
    m = Metrics(tmp_path / "metrics", ["websockify"], tls=False, sign_in=False)
    m.observe_probes({"web_login": 0.01})
    m.observe_probes({"x_answers": 0.0003}, write=False)
    assert 'probe="x_answers"' not in (tmp_path / "metrics").read_text()
    m.observe_probes({"x_answers": 0.0004})
    assert 'whaletop_probe_duration_seconds_count{probe="x_answers"} 2' in (
        tmp_path / "metrics").read_text()
