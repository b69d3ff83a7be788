"""state_diagrams/ must describe the machine that runs, not an older one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from whaletopd import cli, diagram, machine

COMMITTED = Path(__file__).resolve().parents[2] / "state_diagrams"


@pytest.mark.parametrize("name", ["whaletopd.mmd", "README.md"])
def test_committed_diagram_matches_the_machine(name: str) -> None:
    assert (COMMITTED / name).read_text(encoding="utf-8") == diagram.render()[name], (
        "state_diagrams/ is out of date: run python -m whaletopd diagram")


def test_every_state_is_drawn() -> None:
    text = diagram.mermaid()
    for state in machine.STATES:
        assert f'state "{state}" as {state}' in text, state


def test_every_transition_is_drawn() -> None:
    text = diagram.mermaid()
    edges = re.findall(r"^\s*(\w+) --> (\w+): (.*)$", text, flags=re.MULTILINE)
    drawn = {(src, dst, trigger.split(" [")[0].strip()) for src, dst, label in edges
             for trigger in label.split("|")}
    for t in machine.TRANSITIONS:
        sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
        for source in sources:
            dest = t["dest"] or source
            assert (source, dest, t["trigger"]) in drawn, (t["trigger"], source, dest)


def test_readme_embeds_the_mermaid_source() -> None:
    files = diagram.render()
    assert f"```mermaid\n{files['whaletopd.mmd']}```" in files["README.md"]


def test_readme_names_a_test_that_exists() -> None:
    """The generated README tells a reader which test guards it: that file must exist."""
    named = re.findall(r"`(tests/[\w/]+\.py)`", diagram.render()["README.md"])
    assert named
    root = COMMITTED.parent
    assert [p for p in named if not (root / p).is_file()] == []


def test_check_on_an_empty_dir_fails_and_writes_nothing(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    assert diagram.main(["--check", "--output", str(tmp_path)]) == 1
    assert list(tmp_path.iterdir()) == []
    assert "out of date" in capsys.readouterr().out


def test_write_then_check_passes(tmp_path: Path) -> None:
    out = tmp_path / "diagrams"
    assert diagram.main(["--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "whaletopd.mmd"]
    assert diagram.main(["--check", "--output", str(out)]) == 0


def test_check_notices_a_hand_edit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    diagram.main(["--output", str(tmp_path)])
    mmd = tmp_path / "whaletopd.mmd"
    mmd.write_text(mmd.read_text().replace("HEALTHY", "FINE"))
    assert diagram.main(["--check", "--output", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "whaletopd.mmd" in out
    assert "README.md" not in out


def test_rewrite_repairs_a_drifted_file(tmp_path: Path) -> None:
    (tmp_path / "whaletopd.mmd").write_text("stale\n")
    assert diagram.main(["--output", str(tmp_path)]) == 0
    assert (tmp_path / "whaletopd.mmd").read_text() == diagram.render()["whaletopd.mmd"]


def test_cli_diagram_check(tmp_path: Path) -> None:
    assert cli.main(["diagram", "--check", "--output", str(tmp_path)]) == 1
    assert cli.main(["diagram", "--output", str(tmp_path)]) == 0
    assert cli.main(["diagram", "--check", "--output", str(tmp_path)]) == 0
