"""Render state_diagrams/ from machine.TRANSITIONS (never used by the running daemon).

`python -m whaletopd diagram` rewrites the files; `--check` exits 1 when they drifted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transitions.extensions import GraphMachine

from whaletopd import machine

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "state_diagrams"


class _Model:
    exit_on_failure = True


def mermaid() -> str:
    graph = GraphMachine(model=_Model(), graph_engine="mermaid", title="whaletopd",
                         show_conditions=True, **machine.machine_kwargs())
    source = graph.get_graph().draw(None)
    return str(source).rstrip() + "\n"


def render() -> dict[str, str]:
    source = mermaid()
    markdown = (
        "# whaletopd state machine\n\n"
        "Generated from `whaletopd/machine.py` by `python -m whaletopd diagram`; "
        "`tests/unit/test_diagram.py` fails when this file and the code disagree.\n\n"
        f"```mermaid\n{source}```\n"
    )
    return {"whaletopd.mmd": source, "README.md": markdown}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="whaletopd diagram")
    parser.add_argument("--output", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the files differ from the machine")
    opts = parser.parse_args(argv)
    drifted = []
    for name, text in render().items():
        path = opts.output / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            drifted.append(str(path))
            if not opts.check:
                opts.output.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    if opts.check and drifted:
        print("state diagram out of date: " + ", ".join(drifted)
              + " (run: python -m whaletopd diagram)")
        return 1
    return 0
