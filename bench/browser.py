"""The browser figures, host side: an interpreter with Playwright (the runner's own python3
needs none), page_load.py run with it, and what nginx answered during each visit (its
access log, re-emitted by whaletopd with `source: nginx`)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.figures import summarize
from bench.timeline import event_time

HERE = Path(__file__).resolve().parent
PAGE_LOAD = HERE / "page_load.py"
E2E_PYTHON = HERE.parent / ".tox" / "e2e" / "bin" / "python"  # tox's e2e env has Playwright


@dataclass(frozen=True)
class Browser:
    python: str | None  # an interpreter that imports Playwright
    chromium: str
    missing: str = ""  # why the browser figures cannot be measured; "" when they can
    version: str = ""


def has_playwright(python: str) -> bool:
    if not Path(python).exists():
        return False
    try:
        return subprocess.run([python, "-c", "import playwright.sync_api"],
                              capture_output=True, timeout=60, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def chromium_version(chromium: str) -> str:
    try:
        out = subprocess.run([chromium, "--version"], capture_output=True, text=True,
                             timeout=60, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.strip().splitlines()[0] if out.strip() else ""


def find_browser(python: str | None, chromium: str) -> Browser:
    """Debian's Chromium and an interpreter with Playwright: `python` when given, else
    this one, else tox's e2e environment.  Never downloads a browser."""
    if not Path(chromium).exists():
        return Browser(None, chromium, f"no browser at {chromium} (Debian's chromium "
                                       "package; the bench never downloads one)")
    candidates = [python] if python else [sys.executable, str(E2E_PYTHON)]
    found = next((c for c in candidates if has_playwright(c)), None)
    if found is None:
        return Browser(None, chromium, "Playwright is not installed for "
                       + " or ".join(candidates)
                       + " (pip install playwright, or --playwright-python PYTHON)")
    return Browser(found, chromium, version=chromium_version(chromium))


def load_page(browser: Browser, port: int, profile: Path,
              timeout: float = 180) -> dict[str, Any]:
    """page_load.py's {"cold": VISIT, "warm": VISIT} for http://127.0.0.1:PORT/."""
    assert browser.python is not None, browser.missing
    result = subprocess.run([browser.python, str(PAGE_LOAD), str(port), "--chromium",
                             browser.chromium, "--profile", str(profile)],
                            capture_output=True, text=True, timeout=timeout, check=False)
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"page_load.py failed ({result.returncode}): "
                           f"{result.stderr.strip()[-800:]}")
    doc: dict[str, Any] = json.loads(lines[-1])
    return doc


def nginx_answers(events: Sequence[dict[str, Any]], begin: float,
                  end: float) -> dict[str, Any]:
    """nginx's answers to the page's requests between `begin` and `end` (wall seconds):
    count by status and the body bytes it sent.  The WebSocket is not a page request."""
    statuses: Counter[int] = Counter()
    sent = 0
    for ev in events:
        if ev.get("source") != "nginx" or ev.get("event") != "request":
            continue
        if ev.get("path") == "/websockify":
            continue
        ts = event_time(ev)
        if ts is None or not begin <= ts <= end:
            continue
        statuses[int(ev.get("status", 0))] += 1
        sent += int(ev.get("bytes", 0))
    return {"statuses": {str(k): v for k, v in sorted(statuses.items())}, "bytes": sent}


def _answers(runs: Sequence[dict[str, Any]], visit: str) -> str:
    """'304 to 86, 404 to 2': the median of each status's count over the runs."""
    codes = sorted({code for run in runs for code in run[visit]["nginx"]["statuses"]})
    parts = []
    for code in codes:
        median = summarize([run[visit]["nginx"]["statuses"].get(code, 0) for run in runs])
        parts.append(f"{code} to {median['median']:g}")
    return ", ".join(parts) or "nothing logged"


def browser_notes(runs: Sequence[dict[str, Any]]) -> dict[str, str]:
    """The notes of the page figures, from each run's page_load.py result (with the
    nginx answers added): medians over the runs."""
    if not runs:
        return {}

    def med(visit: str, field: str) -> float:
        return float(summarize([float(run[visit][field]) for run in runs])["median"])

    return {
        "page_cold": (f"{med('cold', 'resources'):g} resources (2 documents, the web root "
                      f"and vnc.html), load event at {med('cold', 'load_ms'):.0f} ms, "
                      f"vnc.html started at {med('cold', 'redirect_ms'):.0f} ms; nginx "
                      f"answered {_answers(runs, 'cold')}"),
        "page_warm": (f"the same profile, a new tab: nginx answered {_answers(runs, 'warm')}; "
                      f"{med('warm', 'transferred_bytes') / 1000:.1f} kB transferred "
                      "(headers and the 404s)"),
        "page_bytes": (f"transferSize of every performance entry; the files are "
                       f"{med('cold', 'decoded_bytes') / 1000:.0f} kB uncompressed, nginx "
                       "gzips scripts, styles and SVG"),
    }
