"""What the runs recorded, and the results document (results.json) made from it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.browser import browser_notes
from bench.cpu import QUIET_BUSY, idle_note
from bench.figures import FIGURES, summarize, verdict
from bench.in_container.vnc_sessions import CHECK_LIMIT
from bench.timeline import Timeline


def median_timeline(timelines: Sequence[tuple[float, Timeline]]) -> tuple[int, Timeline]:
    """The run whose figure is the median (the lower one of an even count), and its index:
    a real run's timeline, not an average of several that never happened."""
    ordered = sorted(range(len(timelines)), key=lambda k: timelines[k][0])
    k = ordered[(len(ordered) - 1) // 2]
    return k, timelines[k][1]


def _summary_ms(runs: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    return {name: {k: round(v, 1) if isinstance(v, float) else v
                   for k, v in summarize(vals).items()}
            for name, vals in runs.items()}


@dataclass
class Results:
    values: dict[str, list[float]] = field(
        default_factory=lambda: {f.key: [] for f in FIGURES})
    notes: dict[str, list[str]] = field(default_factory=lambda: {f.key: [] for f in FIGURES})
    errors: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # not measurable here: why
    conditions: dict[str, bool] = field(default_factory=dict)  # the exit-code requirements
    busy_runs: dict[str, int] = field(default_factory=dict)
    timelines: list[tuple[float, Timeline]] = field(default_factory=list)  # (HEALTHY s, tl)
    tls_timelines: list[tuple[float, Timeline]] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=dict)
    phases: dict[str, list[float]] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)

    def record(self, key: str, value: float, note: str = "", busy: bool = False) -> None:
        """One run's value; `busy`: the host was not quiet when its container started."""
        self.values[key].append(value)
        if busy:
            self.busy_runs[key] = self.busy_runs.get(key, 0) + 1
        if note:
            self.notes[key].append(note)

    def require(self, key: str, ok: bool) -> None:
        """A condition every run must meet for the figure's target to be met."""
        self.conditions[key] = self.conditions.get(key, True) and ok

    def fail(self, keys: Sequence[str], error: str) -> None:
        """The figures could not be measured; a first error is kept."""
        for key in keys:
            self.errors.setdefault(key, error)

    def skip(self, keys: Sequence[str], reason: str) -> None:
        """The figures cannot be measured on this machine (no browser): not an error."""
        for key in keys:
            self.skipped.setdefault(key, reason)

    def _notes(self, key: str, home_files: int) -> list[str]:
        notes = list(dict.fromkeys(self.notes[key]))
        if key == "stop" and "stop_exit_codes" in self.detail:
            notes.append(f"exit codes {self.detail['stop_exit_codes']}")
        if key in ("page_cold", "page_warm", "page_bytes") and self.detail.get("browser"):
            note = browser_notes(self.detail["browser"]).get(key)
            if note:
                notes.append(note)
        if key == "cert_dropped" and self.detail.get("cert_sessions"):
            runs = self.detail["cert_sessions"]
            notes.append(f"dropped per run {[r['dropped'] for r in runs]}; a session is kept "
                         "when, after the rotation and HEALTHY again, it asks for a full "
                         f"screen update and gets one (within {CHECK_LIMIT:g} s)")
        if key in self.skipped:
            notes.append(f"skipped: {self.skipped[key]}")
        if key == "kill_exited" and "kill" in self.detail:
            notes.append(f"exit codes {[k['exit_code'] for k in self.detail['kill']]}; "
                         "from the in-container kill to State.FinishedAt")
        if self.busy_runs.get(key):
            notes.append(f"{self.busy_runs[key]} of {len(self.values[key])} run(s) started "
                         f"while the host was busy with other work (> {QUIET_BUSY:.0%} CPU)")
        if key == "idle_cpu" and self.detail.get("idle"):
            notes.append(idle_note(self.detail["idle"]))
        if key == "home_big" and home_files != 100_000:
            notes.append(f"{home_files} files, not 100,000")
        return notes

    def doc(self, keys: Sequence[str], home_files: int,
            host: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """The figures in `keys`, in FIGURES order, with the timelines and the detail."""
        figures = []
        for fig in FIGURES:
            if fig.key not in keys:
                continue
            vals = self.values[fig.key]
            s = summarize(vals)
            error = self.errors.get(fig.key)
            figures.append({
                "key": fig.key, "label": fig.label, "unit": fig.unit, "target": fig.target,
                "condition": fig.condition or None, "original": fig.original or None,
                **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in s.items()},
                "values": [round(v, 6) for v in vals],
                "met": verdict(fig, s["median"], self.conditions.get(fig.key, True), error,
                               self.skipped.get(fig.key)),
                "note": "; ".join(self._notes(fig.key, home_files)) or None, "error": error})
        doc: dict[str, Any] = {"figures": figures}
        if self.timelines:
            k, tl = median_timeline(self.timelines)
            doc["timeline"] = {"run": k + 1, "of": len(self.timelines), **tl.to_json()}
        if self.tls_timelines:
            k, tl = median_timeline(self.tls_timelines)
            doc["timeline_tls"] = {"run": k + 1, "of": len(self.tls_timelines), **tl.to_json()}
        doc["step_durations_ms"] = _summary_ms(self.steps)
        doc["phases_ms"] = _summary_ms(self.phases)
        doc["detail"] = self.detail
        doc["host_before_each_container"] = list(host)
        return doc
