"""The tests' tools: scripts/test installs each, and in CI a test that would skip for want of
one (or for any reason) fails instead (tests/conftest.py), seen in a pytest run of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .. import tools

ROOT = Path(__file__).resolve().parents[2]

INNER = '''
import pytest

from tests import tools

MISSING = tools.command("whaletop-no-such-tool", "whaletop-no-such-package")


@MISSING.needed
def test_marked() -> None:
    pass


def test_required() -> None:
    MISSING.require()


def test_not_root() -> None:
    pytest.skip("needs root")


@pytest.mark.xfail(reason="known", strict=True)
def test_expected_to_fail() -> None:
    raise AssertionError


def test_runs() -> None:
    pass
'''


def _installed_packages() -> set[str]:
    """Every package scripts/test's apt_install lines name (the second of each pair)."""
    text = (ROOT / "scripts" / "test").read_text()
    calls = re.findall(r"^\s*apt_install ((?:.*\\\n)*.*)$", text, re.M)
    words = [w.strip("'") for call in calls for w in call.replace("\\\n", " ").split()]
    return set(words[1::2])


@pytest.mark.parametrize("tool", tools.ALL, ids=lambda t: t.name)
def test_scripts_test_installs_each_tool_s_package(tool: tools.Tool) -> None:
    assert tool.package in _installed_packages()


def _run_inner(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-rA", "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)


def _outcomes(out: str) -> str:
    return out.strip().splitlines()[-1]


def test_outside_ci_a_missing_tool_skips_naming_its_package(tmp_path: Path) -> None:
    run = _run_inner(tmp_path, None)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"\b3 skipped\b", _outcomes(run.stdout)), run.stdout
    assert re.search(r"\b1 passed\b", _outcomes(run.stdout)), run.stdout
    assert "whaletop-no-such-tool is missing (Debian package whaletop-no-such-package, " \
        "which scripts/test installs)" in run.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_every_skip_is_a_failure_naming_why(tmp_path: Path, ci: str) -> None:
    run = _run_inner(tmp_path, ci)
    assert run.returncode == 1, run.stdout + run.stderr
    summary = _outcomes(run.stdout)
    assert "skipped" not in summary, run.stdout
    # The marker's skip happens at setup (an error there); the others in the test.
    assert re.search(r"\b2 failed\b", summary), run.stdout
    assert re.search(r"\b1 error\b", summary), run.stdout
    assert re.search(r"\b1 passed\b", summary), run.stdout
    assert re.search(r"\b1 xfailed\b", summary), run.stdout
    for name in ("test_marked", "test_required", "test_not_root"):
        assert re.search(rf"(ERROR|FAILED) .*::{name}\b", run.stdout), (name, run.stdout)
    assert run.stdout.count("skipped in CI (CI=true), where every test must run: "
                            "whaletop-no-such-tool is missing") == 2 * 2, run.stdout
    assert "skipped in CI (CI=true), where every test must run: needs root" in run.stdout


def test_ci_false_is_not_ci(tmp_path: Path) -> None:
    assert _run_inner(tmp_path, "false").returncode == 0
