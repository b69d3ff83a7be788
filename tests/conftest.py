"""In CI (CI=true) no test may skip: a skip there is reported as a failure.

A developer's machine may lack a tool (tests/tools.py names each with its Debian package) and
the tests that need it skip, saying which package to install.  CI runs scripts/test, which
installs every one of them, as root, on an engine it started: there a skip can only mean that
an install step is missing or the machine is not what the tests were written for, and a green
run would hide it.  So every skip turns into a failure that quotes the skip's reason: a
marker's skip is reported as an error at setup, a `pytest.skip()` in a test as its failure.
Expected failures (xfail, strict in pyproject.toml) are left alone.

Each kind of skip the tests have, and why CI fails it rather than allowing it:
- a missing tool (nginx, vncpasswd, promtool, node, kubectl, useradd, xkb-data, libopus,
  libnss-wrapper, libcrypto's DES, chromium, Docker Compose): scripts/test installs each;
- not root (provisioning, rootless mode, file owners): CI runs as root;
- no accounts sandbox: root on CI's machine can make a private mount namespace, and in
  CI's own throwaway container (no CAP_SYS_ADMIN) that container stands in for one;
- the engine's swarm is a worker's, in an odd state, or cannot be initialised: CI's engine
  is the one scripts/test started, with no swarm of anyone else's;
- bench/results.json without the side-by-side section, or Pillow missing: both are the
  project's own (the committed results, tox's deps), so their absence is a defect.
A test that could legitimately skip in CI must be made to run there, or not be written.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _failed(report: pytest.TestReport | pytest.CollectReport) -> None:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = f"skipped in CI (CI=true), where every test must run: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
        item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and in_ci():
        _failed(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
        collector: pytest.Collector) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """A whole module skipped at import (pytest.skip(allow_module_level=True))."""
    report = yield
    if report.skipped and in_ci():
        _failed(report)
    return report
