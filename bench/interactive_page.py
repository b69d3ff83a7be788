"""Interactivity where a person sits: the real noVNC page (through nginx) in Debian's
headless Chromium, driven by Playwright, on a desktop with a terminal in it.

Run by the runner (bench/interactive.py) with an interpreter that has Playwright, on
the host (it uses the Docker CLI to start the terminal and to set Xvnc's parameters):

    python3 interactive_page.py PORT CONTAINER PASSWORD_FILE --plan PLAN.json

The page opens vnc.html with the password, resize=remote and a 1280x800 viewport (so
the desktop is 1280x800).  Once noVNC is connected, a script in the page wraps noVNC's
Display.flip (the moment a FramebufferUpdate's rectangles are drawn on the visible
canvas) and counts the bytes of every WebSocket message; a capturing keydown listener
notes each key event's timeStamp.  The same clock (performance.now) times both.

For each setting of the plan (noVNC's quality and compression levels, set on the live
connection as noVNC's settings panel does; Xvnc's parameters set with `vncconfig -set`):
  - keys: Playwright types `x` and BackSpace in turns into a maximized lxterminal; each
    key's latency is from its keydown to the first flip with a non-empty damage after
    it (the echoed glyph, or its erasure), and, to tell the server's share from the
    page's, to the first WebSocket message that arrived after it (noted in front of noVNC's
    own message handler);
  - scroll: `seq` prints numbered lines as fast as it can for a few seconds: flips per
    second and WebSocket bytes per second seen by the page, and the CPU of Xvnc,
    websockify and nginx over the window (host /proc, pids from `docker top`).
Then, the terminal closed and the first setting back, the connected-but-still window:
the CPU of the same processes while nothing moves, and the flips seen.

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 800}
TIMEOUT_MS = 30_000
DESKTOP_UID = "1000"
# The relay (vncrelay) in websockify's place is counted under websockify's name, the
# row it took, so figures before and after it compare.
SERVER_PROCESSES = ("Xvnc", "websockify", "vncrelay", "nginx")
# Printed as fast as the terminal takes it: every line differs (identical lines would
# leave the screen unchanged while scrolling).
SCROLL_COMMAND = "seq -f '%09.0f the quick brown fox jumps over the lazy dog' 1 999999999"
# Typed into the terminal as the name of a script holding that command: the keys go as
# physical key codes (Xvnc's -RawKeyboard), and Playwright's type() presses no Shift for
# '%', so only unshifted characters are typed.
SCROLL_SCRIPT = "/tmp/whaletop-scroll"

INSTRUMENT = """async () => {
  const UI = (await import("./app/ui.js")).default;
  const rfb = UI.rfb;
  const display = rfb._display;
  const W = window.__wt = {flips: [], keys: [], arrivals: [], bytes: 0, messages: 0};
  const flip = display.flip.bind(display);
  display.flip = function (fromQueue) {
    if (this._renderQ.length !== 0 && !fromQueue) return flip(fromQueue);
    const b = this._damageBounds;
    const area = Math.max(0, b.right - b.left) * Math.max(0, b.bottom - b.top);
    const result = flip(fromQueue);
    if (area > 0) W.flips.push([performance.now(), area]);
    return result;
  };
  // In front of noVNC's own handler (websock.js sets onmessage): the arrival time is
  // taken before noVNC decodes and draws.
  const ws = rfb._sock._websocket;
  const received = ws.onmessage;
  ws.onmessage = function (e) {
    if (W.arrivals.length < 100000) W.arrivals.push(performance.now());
    W.bytes += e.data.byteLength || e.data.length || 0;
    W.messages += 1;
    return received.call(this, e);
  };
  document.addEventListener("keydown", (e) => W.keys.push(e.timeStamp), true);
  return {width: rfb._fbWidth, height: rfb._fbHeight};
}"""

CONNECTED = """async () => {
  const UI = (await import("./app/ui.js")).default;
  return Boolean(UI.rfb && UI.connected && UI.rfb._fbWidth > 0);
}"""

SET_LEVELS = """async ([quality, compression]) => {
  const UI = (await import("./app/ui.js")).default;
  UI.rfb.qualityLevel = quality;
  UI.rfb.compressionLevel = compression;
}"""

COUNTERS = "() => ({now: performance.now(), flips: __wt.flips.length, bytes: __wt.bytes, " \
           "messages: __wt.messages, keys: __wt.keys.length})"

# The first flip after the last key, once there is one (null until then).
GLYPH = """(n) => {
  const key = __wt.keys[n - 1];
  if (key === undefined) return null;
  const f = __wt.flips.find(([t]) => t >= key);
  if (f === undefined) return null;
  const m = __wt.arrivals.find((t) => t >= key);
  return {key: key, flip: f[0], area: f[1], message: m === undefined ? null : m};
}"""

FLIPS_SINCE = "(t0) => __wt.flips.filter(([t]) => t >= t0).map(([t, a]) => [t - t0, a])"


def docker_exec(container: str, *argv: str, timeout: float = 30) -> str:
    result = subprocess.run(["docker", "exec", "-u", DESKTOP_UID, "-e", "DISPLAY=:1",
                             container, *argv], capture_output=True, text=True,
                            timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} in the container failed ({result.returncode}): "
                           f"{result.stderr.strip()[-400:]}")
    return result.stdout


def server_pids(container: str) -> dict[int, str]:
    """Host pids of Xvnc, websockify and nginx (master and worker) in the container."""
    out = subprocess.run(["docker", "top", container, "-eo", "pid,comm"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    pids = {}
    for line in out.splitlines()[1:]:
        pid, _, comm = line.strip().partition(" ")
        comm = comm.strip()
        if comm in SERVER_PROCESSES or comm.startswith("websockify"):
            pids[int(pid)] = comm
    return pids


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time of the processes, all their threads, from schedstat (nanoseconds; the
    10 ms clock ticks of /proc/PID/stat are too coarse for a still desktop)."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def by_name(pids: dict[int, str], t0: dict[int, float], t1: dict[int, float],
            seconds: float) -> dict[str, float]:
    """Percent of one core per process name over the window."""
    share: dict[str, float] = {}
    for pid, name in pids.items():
        name = "websockify" if name.startswith("websockify") or name == "vncrelay" else name
        share[name] = share.get(name, 0.0) + (t1[pid] - t0[pid]) / seconds * 100
    return {k: round(v, 3) for k, v in share.items()}


def per_pid(pids: dict[int, str]) -> dict[int, float]:
    return {pid: cpu_seconds([pid]) for pid in pids}


def start_terminal(container: str) -> str:
    """A maximized lxterminal of its own (no other instance), focused; its pid."""
    docker_exec(container, "sh", "-c", 'printf "#!/bin/sh\\nexec %s\\n" "$1" > "$2" && '
                'chmod 755 "$2"', "sh", SCROLL_COMMAND, SCROLL_SCRIPT)
    pid = docker_exec(container, "sh", "-c",
                      "lxterminal --no-remote >/dev/null 2>&1 & echo $!").strip()
    window = docker_exec(container, "xdotool", "search", "--sync", "--onlyvisible",
                         "--class", "lxterminal").split()[0]
    docker_exec(container, "xdotool", "windowactivate", "--sync", window)
    docker_exec(container, "xdotool", "windowmove", "--sync", window, "0", "0")
    docker_exec(container, "xdotool", "windowsize", "--sync", window, "100%", "100%")
    return pid


def set_xvnc(container: str, params: dict[str, Any]) -> None:
    for name, value in params.items():
        docker_exec(container, "vncconfig", "-display", ":1", "-set", f"{name}={value}")


def type_keys(page: Any, count: int) -> list[dict[str, float]]:
    """`count` keys, `x` and BackSpace in turns: each key's keydown → first flip after it."""
    out = []
    for i in range(count):
        page.keyboard.press("x" if i % 2 == 0 else "Backspace")
        n = page.evaluate("() => __wt.keys.length")
        handle = page.wait_for_function(GLYPH, arg=n, timeout=5000, polling=5)
        res = handle.json_value()
        arrived = res.get("message") or res["flip"]
        out.append({"ms": round(res["flip"] - res["key"], 2), "area": res["area"],
                    "to_message_ms": round(min(arrived, res["flip"]) - res["key"], 2)})
        time.sleep(random.uniform(0.03, 0.07))  # a typist's pace; the screen is still
    return out


def scroll(page: Any, pids: dict[int, str], seconds: float, shot: str = "") -> dict[str, Any]:
    page.keyboard.type(SCROLL_SCRIPT)
    page.keyboard.press("Enter")
    time.sleep(1.0)  # printing has started, the pipeline is full
    c0 = page.evaluate(COUNTERS)
    cpu0 = per_pid(pids)
    time.sleep(seconds)
    c1 = page.evaluate(COUNTERS)
    cpu1 = per_pid(pids)
    if shot:
        page.screenshot(path=shot)
    page.keyboard.press("Control+c")
    time.sleep(0.5)
    page.keyboard.type("clear")
    page.keyboard.press("Enter")
    time.sleep(1.0)
    window = (c1["now"] - c0["now"]) / 1000
    return {"seconds": round(window, 3),
            "fps": round((c1["flips"] - c0["flips"]) / window, 2),
            "bytes_per_s": round((c1["bytes"] - c0["bytes"]) / window),
            "messages_per_s": round((c1["messages"] - c0["messages"]) / window, 1),
            "cpu_percent": by_name(pids, cpu0, cpu1, window)}


def measure(port: int, container: str, password: str, plan: dict[str, Any],
            chromium: str, profile: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright  # type: ignore[import-not-found,unused-ignore]

    url = (f"http://127.0.0.1:{port}/vnc.html?autoconnect=true&resize=remote"
           f"&reconnect=false#password={password}")
    result: dict[str, Any] = {"settings": []}
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=chromium, headless=True, args=ARGS,
            viewport=VIEWPORT)
        try:
            page = context.pages[0]
            page.goto(url, wait_until="load", timeout=TIMEOUT_MS)
            page.wait_for_function(CONNECTED, timeout=TIMEOUT_MS, polling=50)
            time.sleep(1.0)  # resize=remote: the desktop takes the page's size
            result["framebuffer"] = page.evaluate(INSTRUMENT)
            terminal = start_terminal(container)
            page.mouse.click(VIEWPORT["width"] // 2, VIEWPORT["height"] // 2)  # focus
            time.sleep(1.5)
            pids = server_pids(container)
            for setting in plan["settings"]:
                page.evaluate(SET_LEVELS, [setting["quality"], setting["compression"]])
                set_xvnc(container, setting.get("xvnc", {}))
                time.sleep(0.5)
                keys = type_keys(page, int(setting.get("keys", plan["keys"])))
                scrolled = scroll(page, pids, float(plan["scroll_seconds"]),
                                  plan.get("scroll_screenshot", ""))
                result["settings"].append({**setting, "keys_ms": [k["ms"] for k in keys],
                                           "key_areas": [k["area"] for k in keys],
                                           "keys_to_message_ms": [k["to_message_ms"]
                                                                  for k in keys],
                                           "scroll": scrolled})
                print(json.dumps({"progress": setting.get("name", "")}), file=sys.stderr,
                      flush=True)
            first = plan["settings"][0]
            page.evaluate(SET_LEVELS, [first["quality"], first["compression"]])
            set_xvnc(container, first.get("xvnc", {}))
            docker_exec(container, "kill", terminal)
            time.sleep(float(plan.get("still_settle", 3.0)))
            c0 = page.evaluate(COUNTERS)
            cpu0 = per_pid(pids)
            t0 = time.monotonic()
            time.sleep(float(plan["still_seconds"]))
            cpu1 = per_pid(pids)
            c1 = page.evaluate(COUNTERS)
            window = time.monotonic() - t0
            result["still"] = {
                "seconds": round(window, 3),
                "cpu_percent": by_name(pids, cpu0, cpu1, window),
                "flips": c1["flips"] - c0["flips"],
                "bytes": c1["bytes"] - c0["bytes"],
                "flip_times_s": [[round(t / 1000, 3), a] for t, a in
                                 page.evaluate(FLIPS_SINCE, c0["now"])][:50]}
            result["processes"] = sorted(set(pids.values()))
            if plan.get("screenshot"):
                page.screenshot(path=plan["screenshot"])
        finally:
            context.close()
    return result


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="interactive_page.py")
    p.add_argument("port", type=int)
    p.add_argument("container")
    p.add_argument("password_file", type=Path, help="the state folder's vnc_passwd")
    p.add_argument("--plan", type=Path, required=True)
    p.add_argument("--chromium", default=CHROMIUM)
    args = p.parse_args(argv)
    plan = json.loads(args.plan.read_text())
    with tempfile.TemporaryDirectory(prefix="whaletop-bench-chromium-") as tmp:
        result = measure(args.port, args.container, args.password_file.read_text().strip(),
                         plan, args.chromium, Path(tmp))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
