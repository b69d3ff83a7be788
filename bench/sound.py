"""The sound group (issue 15): latency, bitrate, the pipeline's CPU, image growth.

- Latency: from the container's clock just before paplay starts a tone to the page's
  analyser first seeing it (sound_page.py, Debian's Chromium), each tone starting the
  capture afresh; median, min and max of all tones of all runs.
- Bitrate: bytes on the WebSocket per second while 5 s of noise play (the worst case
  for Opus; a pure tone takes a fifth of it).
- CPU: the pipeline (the bridge, python3 -m whaletopd.sound, and its parec) and the
  sound server (pipewire, wireplumber, pipewire-pulse), from /proc/PID/stat in the
  container, over 6 s of noise playing: with one listener (a WebSocket client of the
  runner's, reading /sound like a page) and with none.  In % of one core.
- Image growth: what would go with the sound packages (`apt-get -s remove
  --auto-remove` of SOUND_PACKAGES in the image: the packages and the dependencies
  nothing else needs), their dpkg Installed-Size summed; computed from the package list,
  not from another image's tag.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.containers import BenchError, Running, docker
from bench.log import log

if TYPE_CHECKING:
    from bench.measure import Bench

HERE = Path(__file__).resolve().parent
SOUND_PAGE = HERE / "sound_page.py"
SOUND_PACKAGES = ("pipewire", "pipewire-pulse", "wireplumber", "pulseaudio-utils")
WINDOW = 6.0  # seconds of CPU accounting while noise plays
# In the container: CPU seconds so far of each sound process, by role.
CPU_SNAPSHOT = r'''
import json, os
hz = os.sysconf("SC_CLK_TCK")
roles = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == os.getpid():
        continue
    try:
        stat = open(f"/proc/{pid}/stat").read()
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        continue
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / hz
    if argv[1:3] == [b"-m", b"whaletopd.sound"] or comm == "parec":
        role = "pipeline"
    elif comm in ("pipewire", "wireplumber", "pipewire-pulse"):
        role = "server"
    else:
        continue
    roles[f"{role}:{pid}"] = cpu
print(json.dumps(roles))
'''
NOISE = r'''
import random, struct, sys, wave
random.seed(2)
with wave.open(sys.argv[1], "wb") as w:
    w.setnchannels(2); w.setsampwidth(2); w.setframerate(48000)
    w.writeframes(b"".join(struct.pack("<hh", random.randint(-8000, 8000),
                                       random.randint(-8000, 8000))
                           for _ in range(48000 * 10)))
'''


def image_growth(image: str) -> dict[str, Any]:
    """The packages that came with sound (and nothing else needs), and their size."""
    out = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                 "apt-get -s -o Debug::NoLocking=1 remove --auto-remove "
                 + " ".join(SOUND_PACKAGES) + " 2>/dev/null | sed -n 's/^Remv \\([^ ]*\\).*/\\1/p'"
                 " | xargs dpkg-query -W -f='${Package} ${Installed-Size}\\n'").stdout
    sizes = {name: int(kib) for name, kib in (line.split() for line in out.splitlines())}
    if not set(SOUND_PACKAGES) <= set(sizes):
        raise BenchError(f"sound packages missing from the image: {out!r}")
    return {"packages": sizes, "mb": sum(sizes.values()) * 1024 / 1e6}


def _ticket(port: int, password: str) -> str:
    """The cookie /sound asks for without sign-in: /sound/ticket, with the VNC password
    (HTTP Basic, the desktop's default user name), as the page gets it."""
    auth = base64.b64encode(f"user:{password}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/sound/ticket", headers={"Authorization": f"Basic {auth}"})
        answer = conn.getresponse()
        answer.read()
        cookie = answer.getheader("Set-Cookie") or ""
    finally:
        conn.close()
    if answer.status != 200 or not cookie:
        raise BenchError(f"/sound/ticket answered {answer.status}")
    return cookie.split(";", 1)[0]


def _listen(port: int, cookie: str, stop: threading.Event, received: list[int]) -> None:
    """A listener as a page is one: a WebSocket on /sound, read until told to stop."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /sound HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Cookie: {cookie}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    sock.settimeout(0.2)
    try:
        while not stop.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            received[0] += len(data)
    finally:
        sock.close()


def _cpu(c: Running) -> dict[str, float]:
    snapshot: dict[str, float] = json.loads(
        docker("exec", c.name, "python3", "-c", CPU_SNAPSHOT).stdout)
    return snapshot


def cpu_while_playing(c: Running, port: int, listening: bool) -> dict[str, float]:
    """% of one core of the pipeline and the server over WINDOW s of noise."""
    stop, received = threading.Event(), [0]
    cookie = _ticket(port, (c.state / "vnc_passwd").read_text().strip())
    listener = threading.Thread(target=_listen, args=(port, cookie, stop, received),
                                daemon=True)
    if listening:
        listener.start()
        time.sleep(1.0)
    player = subprocess.Popen(["docker", "exec", "-u", "user", c.name, "sh", "-c",
                               "XDG_RUNTIME_DIR=/run/user/1000 exec paplay /tmp/bench-noise.wav"])
    try:
        time.sleep(1.5)  # playing, and (with a listener) captured
        before, t0 = _cpu(c), time.monotonic()
        time.sleep(WINDOW)
        after, t1 = _cpu(c), time.monotonic()
    finally:
        player.wait(timeout=30)
        stop.set()
        if listening:
            listener.join(timeout=5)
    spent: dict[str, float] = {"pipeline": 0.0, "server": 0.0}
    for key, cpu in after.items():
        spent[key.split(":")[0]] += cpu - before.get(key, 0.0)
    seconds = t1 - t0
    return {role: 100 * cpu / seconds for role, cpu in spent.items()}


def fig_sound(bench: Bench, i: int) -> None:
    if bench.browser.missing or bench.browser.python is None:
        raise BenchError(f"no browser: {bench.browser.missing}")
    if i == 0:
        growth = image_growth(bench.image)
        bench.record("sound_image", growth["mb"])
        bench.results.detail["sound_packages_kib"] = growth["packages"]
    with bench.container(f"sound{i}") as c:
        c.wait_healthy()
        bench.settle(3)
        docker("exec", "-u", "user", c.name, "python3", "-c", NOISE, "/tmp/bench-noise.wav")
        idle = cpu_while_playing(c, bench.web_port, listening=False)
        heard = cpu_while_playing(c, bench.web_port, listening=True)
        result = subprocess.run(
            [bench.browser.python, str(SOUND_PAGE), str(bench.web_port), c.name,
             "--tones", "3" if bench.quick else "5", "--chromium", bench.browser.chromium,
             "--password-file", str(c.state / "vnc_passwd")],
            capture_output=True, text=True, timeout=300, check=False)
        lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
        if result.returncode != 0 or not lines:
            raise BenchError(f"sound_page.py failed ({result.returncode}): "
                             f"{result.stderr.strip()[-800:]}")
        page = json.loads(lines[-1])
        if c.word() != "HEALTHY":
            raise BenchError(f"the desktop left HEALTHY while sound played: {c.word()}")
        for latency in page["latency_s"]:
            bench.record("sound_latency", latency)
        bench.record("sound_bitrate", page["kbit_s"])
        bench.record("sound_cpu", heard["pipeline"])
        bench.record("sound_cpu_unheard", idle["pipeline"])
        bench.results.detail.setdefault("sound", []).append({
            "latency_s": [round(x, 4) for x in page["latency_s"]],
            "kbit_s": round(page["kbit_s"], 1), "dropped_packets": page["dropped"],
            "cpu_pct_listening": {k: round(v, 2) for k, v in heard.items()},
            "cpu_pct_nobody_listening": {k: round(v, 2) for k, v in idle.items()}})
        log(f"sound {i + 1}/{bench.runs}: latency {[round(x, 3) for x in page['latency_s']]} s, "
            f"{page['kbit_s']:.0f} kbit/s, pipeline {heard['pipeline']:.1f} % of a core "
            f"listening ({idle['pipeline']:.2f} % unheard), server {heard['server']:.1f} %")
