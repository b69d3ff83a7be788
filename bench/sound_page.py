"""The sound figures, browser side: Debian's Chromium (Playwright) listening to a desktop.

Run by bench/sound.py with an interpreter that has Playwright; never downloads a browser:

    python3 sound_page.py PORT CONTAINER [--tones N] [--chromium PATH]

Opens http://127.0.0.1:PORT/vnc.html, clicks the speaker button (the user gesture), then
per tone: `docker exec` in CONTAINER prints the container's clock just before paplay
starts a 440 Hz tone (container and host share the clock), and the page notes the wall
time its analyser first sees the tone (the newest 20 ms of its time-domain data above
a threshold; no FFT smoothing).  Tones are 3.5 s apart: each one starts the capture
afresh (the bridge lingers 2 s after a sound).  Then 5 s of noise: bytes received on the
WebSocket per second.  Prints {"latency_s": [...], "kbit_s": ..., "dropped": ...}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
WAV = r'''
import math, random, struct, sys, wave
kind, seconds, path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
random.seed(1)
with wave.open(path, "wb") as w:
    w.setnchannels(2); w.setsampwidth(2); w.setframerate(48000)
    out = bytearray()
    for i in range(int(48000 * seconds)):
        if kind == "tone":
            l = r = int(12000 * math.sin(2 * math.pi * 440 * i / 48000))
        else:  # noise: what costs Opus the most bits
            l, r = random.randint(-8000, 8000), random.randint(-8000, 8000)
        out += struct.pack("<hh", l, r)
    w.writeframes(bytes(out))
'''
# Resolves with the wall time (ms) the analyser first holds sound above the threshold.
HEARD = """(threshold) => new Promise((resolve) => {
    const s = window.whaletopSound;
    const data = new Float32Array(s.analyser.fftSize);
    const newest = Math.round(s.context.sampleRate * 0.02);
    const look = () => {
        s.analyser.getFloatTimeDomainData(data);
        let peak = 0;
        for (let i = data.length - newest; i < data.length; i++) {
            peak = Math.max(peak, Math.abs(data[i]));
        }
        if (peak > threshold) resolve(performance.timeOrigin + performance.now());
        else setTimeout(look, 2);
    };
    look();
})"""


def docker_exec(container: str, *cmd: str) -> str:
    return subprocess.run(["docker", "exec", "-u", "user", container, *cmd],
                          capture_output=True, text=True, check=True, timeout=60).stdout


def play(container: str, path: str) -> float:
    """Start paplay in the container; the container's clock just before it started."""
    out = docker_exec(container, "sh", "-c",
                      "date +%s.%N; XDG_RUNTIME_DIR=/run/user/1000 exec paplay " + path)
    return float(out.split()[0])


def measure(port: int, container: str, tones: int, chromium: str,
            password: str) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright  # type: ignore[import-not-found,unused-ignore]

    docker_exec(container, "python3", "-c", WAV, "tone", "0.5", "/tmp/bench-tone.wav")
    docker_exec(container, "python3", "-c", WAV, "noise", "5", "/tmp/bench-noise.wav")
    latencies: list[float] = []
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="sound-bench-"), executable_path=chromium,
            headless=True, args=ARGS)
        try:
            page = ctx.new_page()
            # Connected with the VNC password, as a person is: without sign-in the page
            # shows it to nginx for the sound's ticket.
            page.goto(f"http://127.0.0.1:{port}/vnc.html?autoconnect=true"
                      f"&reconnect=false#password={password}")
            page.wait_for_function("() => document.documentElement.classList"
                                   ".contains('noVNC_connected')", timeout=30_000)
            page.click("#whaletop_sound", timeout=30_000)
            page.wait_for_function("() => whaletopSound.socket && "
                                   "whaletopSound.socket.readyState === 1")
            for _ in range(tones):
                time.sleep(3.5)  # the previous tone over, its capture stopped
                page.evaluate("(t) => { window.__heard = null; (" + HEARD
                              + ")(t).then((v) => { window.__heard = v; }); }", 0.05)
                t0 = play(container, "/tmp/bench-tone.wav")
                page.wait_for_function("() => window.__heard !== null", timeout=30_000)
                latencies.append(float(page.evaluate("() => window.__heard")) / 1000 - t0)
            time.sleep(3.5)
            before = page.evaluate("() => [whaletopSound.bytes, whaletopSound.dropped]")
            t_begin = time.monotonic()
            play(container, "/tmp/bench-noise.wav")  # returns when it ended
            seconds = time.monotonic() - t_begin
            after = page.evaluate("() => [whaletopSound.bytes, whaletopSound.dropped]")
        finally:
            ctx.close()
    return {"latency_s": latencies, "kbit_s": (after[0] - before[0]) * 8 / 1000 / seconds,
            "dropped": after[1], "noise_s": seconds}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("container")
    parser.add_argument("--tones", type=int, default=5)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--password-file", type=Path, required=True,
                        help="the state folder's vnc_passwd")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.port, args.container, args.tones, args.chromium,
                             args.password_file.read_text().strip())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
