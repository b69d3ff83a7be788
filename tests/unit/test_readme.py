"""The README is a promise: its flags table lists exactly what the daemon accepts."""

from __future__ import annotations

import re
from pathlib import Path

from whaletopd import config

README = Path(__file__).resolve().parents[2] / "README.md"


def _table_rows() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    table = text.split("<!-- flags-table")[1].split("<!-- /flags-table -->")[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_every_option_is_documented_with_its_env_twin_and_default() -> None:
    documented = {}
    for flag_cell, env_cell, default_cell, _meaning in _table_rows():
        flag = re.match(r"`(--[a-z-]+)", flag_cell)
        assert flag, flag_cell
        documented[flag.group(1)] = (env_cell.strip("`"), default_cell.strip("`"))
    expected = {
        opt.flag: (opt.env, "off" if opt.kind is bool
                   else "auto" if opt.default is None else str(opt.default) or "none")
        for opt in config.OPTIONS
    }
    assert documented == expected


def test_readme_gives_the_run_and_test_commands_ci_uses() -> None:
    text = README.read_text(encoding="utf-8")
    assert "```sh\nscripts/run\n```" in text
    assert "```sh\nscripts/test\n```" in text
    assert "```sh\nscripts/fresh-test\n```" in text
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    commands = [line for line in ci.splitlines() if line and not line.startswith("#")]
    assert "scripts/test" in commands
    assert "scripts/fresh-test" in commands


def test_every_status_word_is_explained() -> None:
    from whaletopd import machine

    text = README.read_text(encoding="utf-8")
    for state in machine.STATES:
        if state != machine.INIT:
            assert f"| `{state}` |" in text, state
