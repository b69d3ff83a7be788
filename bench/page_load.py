"""noVNC's page loaded by a real browser: Debian's Chromium driven by Playwright.

Run by the runner with an interpreter that has Playwright (the host's python3 needs
none: without it the figures are skipped); never downloads a browser:

    python3 page_load.py PORT [--chromium /usr/bin/chromium] [--profile DIR]

A fresh profile opens http://127.0.0.1:PORT/ (the web root, whose small script sends
the browser on to vnc.html with its parameters) and waits for vnc.html's load event and
then for the network to be idle; a second tab of the same profile does it again (the
cache is warm: noVNC's files are revalidated, 304).  Times come from the browser's own
`performance` entries: from the web root's navigation start (its timeOrigin, kept in
sessionStorage across the redirect) to the later of vnc.html's loadEventEnd and the
last resource's responseEnd.  Prints {"cold": VISIT, "warm": VISIT} as JSON, VISIT as
summarize() makes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
KEY = "whaletop-bench"
TIMEOUT_MS = 30_000

# In every document of the tab, before its own scripts: the first one notes its
# navigation start; each one, when it is left, adds its entries (the web root's are lost
# otherwise when its script moves on to vnc.html).
INIT_SCRIPT = """(() => {
  const KEY = "__KEY__";
  const read = () => JSON.parse(sessionStorage.getItem(KEY) || "null");
  if (read() === null) {
    sessionStorage.setItem(KEY, JSON.stringify({t0: performance.timeOrigin, before: []}));
  }
  addEventListener("pagehide", () => {
    const saved = read();
    if (saved === null) return;
    saved.before.push(...window.__whaletopBenchEntries());
    sessionStorage.setItem(KEY, JSON.stringify(saved));
  });
  window.__whaletopBenchEntries = () => {
    const origin = performance.timeOrigin;
    return [...performance.getEntriesByType("navigation"),
            ...performance.getEntriesByType("resource")].map(e => ({
      name: e.name, type: e.entryType, initiator: e.initiatorType || "",
      start: origin + e.startTime, end: origin + e.responseEnd,
      load_end: e.entryType === "navigation" ? origin + e.loadEventEnd : null,
      transfer: e.transferSize || 0, encoded: e.encodedBodySize || 0,
      decoded: e.decodedBodySize || 0, status: e.responseStatus || 0}));
  };
})();""".replace("__KEY__", KEY)

COLLECT = """() => {
  const saved = JSON.parse(sessionStorage.getItem("__KEY__"));
  return {t0: saved.t0, origin: performance.timeOrigin, now: Date.now(),
          entries: [...saved.before, ...window.__whaletopBenchEntries()]};
}""".replace("__KEY__", KEY)


def summarize(collected: dict[str, Any]) -> dict[str, Any]:
    """One visit from what the page collected (t0: the web root's navigation start, ms
    since the epoch; the entries of both documents; now: when it was collected).

    total_ms: t0 to the later of vnc.html's loadEventEnd and the last responseEnd;
    load_ms: to the load event; redirect_ms: to vnc.html's navigation start; t_begin and
    t_end (seconds since the epoch): the visit, for the server's log."""
    t0 = float(collected["t0"])
    entries = collected["entries"]
    page = [e for e in entries if e["type"] == "navigation" and "vnc.html" in e["name"]]
    if not page:
        raise ValueError("vnc.html was never loaded: " + ", ".join(e["name"] for e in entries))
    load_end = float(page[-1]["load_end"] or 0.0)
    if load_end <= 0:
        raise ValueError("vnc.html's load event has not ended")
    last = max(float(e["end"]) for e in entries)
    slowest = sorted(entries, key=lambda e: float(e["end"]) - float(e["start"]))[::-1][:3]
    return {
        "total_ms": round(max(load_end, last) - t0, 1),
        "load_ms": round(load_end - t0, 1),
        "redirect_ms": round(float(collected["origin"]) - t0, 1),
        "resources": len(entries),
        "documents": sum(e["type"] == "navigation" for e in entries),
        "transferred_bytes": sum(int(e["transfer"]) for e in entries),
        "encoded_bytes": sum(int(e["encoded"]) for e in entries),
        "decoded_bytes": sum(int(e["decoded"]) for e in entries),
        "t_begin": round(t0 / 1000, 4), "t_end": round(float(collected["now"]) / 1000, 4),
        "slowest": [{"name": e["name"].split("/", 3)[-1],
                     "ms": round(float(e["end"]) - float(e["start"]), 1)} for e in slowest],
    }


def visit(context: Any, url: str) -> dict[str, Any]:
    """A new tab (its own sessionStorage, the profile's cache) opens `url`."""
    page = context.new_page()
    try:
        page.goto("about:blank")
        page.goto(url, wait_until="commit", timeout=TIMEOUT_MS)
        page.wait_for_url("**/vnc.html*", wait_until="load", timeout=TIMEOUT_MS)
        page.wait_for_load_state("networkidle", timeout=TIMEOUT_MS)
        return summarize(page.evaluate(COLLECT))
    finally:
        page.close()


def measure(port: int, chromium: str, profile: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright  # type: ignore[import-not-found,unused-ignore]

    url = f"http://127.0.0.1:{port}/"
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=chromium, headless=True, args=ARGS)
        try:
            context.add_init_script(INIT_SCRIPT)
            context.pages[0].goto("about:blank")  # the browser is up, as a user's is
            time.sleep(1.0)
            cold = visit(context, url)
            warm = visit(context, url)
            return {"cold": cold, "warm": warm}
        finally:
            context.close()


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="page_load.py")
    p.add_argument("port", type=int)
    p.add_argument("--chromium", default=CHROMIUM)
    p.add_argument("--profile", type=Path, help="a fresh folder (default: a temporary one)")
    args = p.parse_args(argv)
    if args.profile is not None:
        result = measure(args.port, args.chromium, args.profile)
    else:
        with tempfile.TemporaryDirectory(prefix="whaletop-bench-chromium-") as tmp:
            result = measure(args.port, args.chromium, Path(tmp))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
