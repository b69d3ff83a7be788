"""/metrics of a live desktop, scraped as Prometheus does, and judged by Prometheus' own
checker (promtool); scraped on and on while a child is killed and repaired."""

from __future__ import annotations

import http.client
import threading
import time

import pytest

from tests.e2e.conftest import Container, wait_until
from tests.unit.test_metrics import promtool_check, samples

pytestmark = pytest.mark.e2e
FAST = ("--probe-interval=0.5", "--probe-timeout=1")
TOKEN = "e2e-scrape-token.0123456789"


def scrape(headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(status, content type, body) of GET /metrics on the web port."""
    conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=10)
    try:
        conn.request("GET", "/metrics", headers=headers or {})
        answer = conn.getresponse()
        return answer.status, answer.getheader("Content-Type", ""), answer.read().decode()
    finally:
        conn.close()


def states(text: str) -> list[str]:
    """The states whose gauge is 1."""
    return [key.split('"')[1] for key, value in samples(text).items()
            if key.startswith("whaletop_state{") and value == 1]


def test_a_live_desktop_s_metrics_pass_promtool(desktop):
    c: Container = desktop(*FAST)
    c.wait_status("HEALTHY")
    wait_until(lambda: 'probe="web_login"' in scrape()[2], "a round of checks in /metrics")
    status, content_type, text = scrape()
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    promtool_check(text)
    assert states(text) == ["HEALTHY"]
    got = samples(text)
    assert got['whaletop_transitions_total{trigger="probe_passed"}'] >= 1
    assert got['whaletop_child_restarts_total{child="websockify"}'] == 0
    assert got['whaletop_probe_duration_seconds_count{probe="x_display"}'] >= 1
    assert abs(got["whaletop_start_time_seconds"] - time.time()) < 3600
    # Scrapes are requests like any other in nginx's log: the path, nothing more.
    assert any(e.get("event") == "request" and e.get("path") == "/metrics"
               for e in c.log_lines())


def test_scrapes_never_fail_while_websockify_is_killed_and_repaired(desktop):
    c: Container = desktop(*FAST)
    c.wait_status("HEALTHY")
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def scraper() -> None:
        while not stop.is_set():
            status, _, text = scrape()
            seen.append((status, text))
            time.sleep(0.02)

    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(seen) >= 3, "scrapes before the kill")
        old = c.status_json()["children"]["websockify"]["pid"]
        c.exec("kill", "-KILL", str(old))
        wait_until(lambda: c.status_json()["children"]["websockify"]["pid"] != old
                   and c.status() == "HEALTHY\n", "websockify replaced, HEALTHY again", 30)
        wait_until(lambda: seen and states(seen[-1][1]) == ["HEALTHY"] and samples(
            seen[-1][1])['whaletop_child_restarts_total{child="websockify"}'] == 1,
            "a scrape saying HEALTHY after one websockify restart", 30)
    finally:
        stop.set()
        thread.join(20)
    assert [status for status, _ in seen] == [200] * len(seen), "a scrape failed"
    restarts, exits = [], []
    for _, text in seen:
        assert len(states(text)) == 1, text
        assert states(text)[0] in ("HEALTHY", "RECOVERING"), text
        got = samples(text)
        restarts.append(got['whaletop_child_restarts_total{child="websockify"}'])
        exits.append(got['whaletop_transitions_total{trigger="child_exited"}'])
    # Counters only go up; the restart is there, and the other children's are not.
    assert restarts == sorted(restarts)
    assert (restarts[0], restarts[-1]) == (0, 1)
    assert exits == sorted(exits)
    assert (exits[0], exits[-1]) == (0, 1)
    assert samples(seen[-1][1])['whaletop_child_restarts_total{child="nginx"}'] == 0
    assert "RECOVERING" in c.transitions()


def test_with_a_token_only_its_bearer_scrapes(desktop):
    c: Container = desktop(*FAST, env={"METRICS_TOKEN": TOKEN})
    c.wait_status("HEALTHY")
    assert scrape()[0] == 401
    assert scrape({"Authorization": "Bearer not-the-token-0123456789"})[0] == 401
    status, _, text = scrape({"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    assert states(text) == ["HEALTHY"]
    assert TOKEN not in c.logs()
    assert TOKEN not in c.exec("cat", "/run/whaletop/metrics/metrics.prom").stdout
    # No command line in the container holds it (every uid reads them all).
    cmdlines = c.exec("sh", "-c", "cat /proc/[0-9]*/cmdline", user="nobody", check=False)
    assert "nginx" in cmdlines.stdout
    assert TOKEN not in cmdlines.stdout


def test_a_token_on_the_command_line_is_refused(desktop):
    """`/start.py --metrics-token TOKEN` would put the token in /proc/1/cmdline, where
    every uid of the container reads it: FAILED, exit 2, saying what to use instead."""
    c: Container = desktop("--metrics-token", TOKEN)
    assert c.wait_exit() == 2
    assert c.status() == "FAILED\n"
    reason = c.status_json()["reason"]
    assert reason.startswith("--metrics-token: a token on the command line")
    assert "METRICS_TOKEN_FILE" in reason
    assert TOKEN not in c.logs()


def test_with_sign_in_and_no_token_metrics_are_off(desktop):
    c: Container = desktop(*FAST, "--web-password-from-env",
                           env={"WEB_PASSWORD": "correct horse battery"})
    c.wait_status("HEALTHY")
    assert scrape()[0] == 404
