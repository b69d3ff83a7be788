"""Issue 15 as a user meets it: the desktop's sound plays in the browser tab.

A tone played with paplay in the container (the desktop user's, as any program in the
session) is heard by headless Chromium after one click on the speaker button: the
page's WebAudio analyser (window.whaletopSound.analyser) finds its peak.  Killing the
sound bridge leaves the desktop HEALTHY and the sound comes back; with --no-sound none
of it runs.  Autoplay: the Playwright click is the user gesture; no
--autoplay-policy flag is needed.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests import tools
from tests.e2e import browser
from tests.e2e.conftest import Container, wait_until

pytestmark = [pytest.mark.e2e,
              tools.CHROMIUM.needed]

URL = "http://127.0.0.1:8080/vnc.html"
SOUND_PROGRAMS = ("pipewire", "wireplumber", "pipewire-pulse", "whaletopd.sound", "parec")
# A stereo 48 kHz WAV of a sine, made in the container with Python's wave module.
TONE = r'''
import math, struct, sys, wave
hz, seconds, path = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
with wave.open(path, "wb") as w:
    w.setnchannels(2); w.setsampwidth(2); w.setframerate(48000)
    frames = bytearray()
    for i in range(int(48000 * seconds)):
        v = int(12000 * math.sin(2 * math.pi * hz * i / 48000))
        frames += struct.pack("<hh", v, v)
    w.writeframes(bytes(frames))
'''
# The analyser's loudest bin (Hz) and its level (dB); None before the button was clicked.
PEAK = """() => {
    const s = window.whaletopSound;
    if (!s || !s.analyser) return null;
    const bins = new Float32Array(s.analyser.frequencyBinCount);
    s.analyser.getFloatFrequencyData(bins);
    let best = 0;
    for (let i = 1; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
    return [best * s.context.sampleRate / s.analyser.fftSize, bins[best]];
}"""
LOUD_DB = -60.0


def _commands(c: Container) -> list[str]:
    """Every process's command line in the container."""
    out = c.exec("python3", "-c", "import os\nfor p in os.listdir('/proc'):\n"
                 " if p.isdigit():\n  try: print(open(f'/proc/{p}/cmdline','rb').read()"
                 ".replace(b'\\0', b' ').decode())\n  except OSError: pass").stdout
    return out.splitlines()


# How the container runs: (docker run options, the desktop user for docker exec, its
# XDG_RUNTIME_DIR, where the Pulse socket is).
AS_ROOT = ((), "user", "/run/user/1000")
# Any uid, read-only root (README: Security): the runtime folder is whaletopd's own.
ROOTLESS = (("--read-only", "--tmpfs", "/tmp", "--tmpfs", "/run/whaletop",
             "--tmpfs", "/home/user:uid=123456,gid=0,mode=0700",
             "--user", "123456:0"), "123456:0", "/run/whaletop/xdg")
Mode = tuple[tuple[str, ...], str, str]


def _play(c: Container, hz: float, seconds: float = 30.0, mode: Mode = AS_ROOT) -> None:
    _, user, runtime = mode
    path = f"/tmp/tone-{int(hz)}.wav"
    c.exec("python3", "-c", TONE, str(hz), str(seconds), path, user=user)
    # In the background, as a program of the session would.
    c.exec("bash", "-c", f"HOME=/tmp XDG_RUNTIME_DIR={runtime} paplay {path} "
           ">/dev/null 2>&1 &", user=user)


def _stop_playing(c: Container, mode: Mode = AS_ROOT) -> None:
    c.exec("pkill", "-x", "paplay", user=mode[1], check=False)


def _hears(page, hz: float) -> bool:
    peak = page.evaluate(PEAK)
    return peak is not None and abs(peak[0] - hz) <= 10 and peak[1] > LOUD_DB


def _status_code(path: str) -> int:
    try:
        with urllib.request.urlopen("http://127.0.0.1:8080" + path, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize("mode", [AS_ROOT, ROOTLESS], ids=["root", "rootless-read-only"])
def test_a_tone_in_the_desktop_is_heard_in_the_tab_and_survives_the_bridge(desktop, tmp_path,
                                                                          mode: Mode):
    c = desktop(extra=mode[0])
    c.wait_status("HEALTHY")
    sound = c.status_json()["children"]["sound"]
    assert sound["running"]
    # Whoever reaches the port cannot listen: /sound needs the VNC password's ticket.
    assert _status_code("/sound") == 401
    assert _status_code("/sound/ticket") == 401
    with browser.browser(tmp_path) as page:
        # The page connected with the VNC password, which it shows for the ticket.
        browser.log_in(page, "http://127.0.0.1:8080/", c.password())
        wait_until(lambda: page.evaluate(
            "() => document.documentElement.classList.contains('noVNC_connected')"),
            "noVNC connected")
        page.wait_for_selector("#whaletop_sound")
        assert page.evaluate(PEAK) is None, "nothing plays before the click"
        page.click("#whaletop_sound")
        assert page.get_attribute("#whaletop_sound", "aria-pressed") == "true"

        _play(c, 440, mode=mode)
        wait_until(lambda: _hears(page, 440), "the page hears 440 Hz", timeout=30)
        # Nothing queued up: the page drops what comes late rather than lagging.
        state = page.evaluate("() => ({p: whaletopSound.packets, d: whaletopSound.dropped})")
        assert state["p"] > 0
        _stop_playing(c, mode)

        # The bridge dies: logged and restarted, the desktop HEALTHY throughout.
        before = c.transitions()
        c.exec("kill", "-9", str(sound["pid"]))
        wait_until(lambda: c.status_json()["children"]["sound"]["pid"] != sound["pid"]
                   and c.status_json()["children"]["sound"]["running"],
                   "a new sound bridge", timeout=30)
        assert c.status() == "HEALTHY\n"
        assert c.transitions() == before, "the desktop's state never changed"
        restarts = [e for e in c.log_lines() if e.get("event") == "restart_scheduled"]
        assert [e["child"] for e in restarts] == ["sound"], [
            e for e in c.log_lines() if "wireplumber" in json.dumps(e)]

        # The page opens the WebSocket again by itself; another tone is heard.
        _play(c, 660, mode=mode)
        wait_until(lambda: _hears(page, 660), "the page hears 660 Hz after the restart",
                   timeout=30)
        _stop_playing(c, mode)
    assert c.status() == "HEALTHY\n"
    # Sound's children said nothing a person would have to act on.
    noisy = [e for e in c.log_lines()
             if e.get("source") in ("pipewire", "wireplumber", "pipewire-pulse")]
    assert noisy == []


def test_nothing_is_captured_while_nobody_listens(desktop):
    c = desktop()
    c.wait_status("HEALTHY")
    _play(c, 440, seconds=5)
    wait_until(lambda: any("paplay" in cmd for cmd in _commands(c)), "paplay plays")
    assert not [cmd for cmd in _commands(c) if cmd.startswith("parec")], \
        "no capture without a listener"
    _stop_playing(c)


def test_no_sound_leaves_it_all_out(desktop, tmp_path):
    c = desktop("--no-sound")
    c.wait_status("HEALTHY")
    commands = _commands(c)
    assert not [cmd for cmd in commands if any(p in cmd for p in SOUND_PROGRAMS)]
    assert "sound" not in c.status_json()["children"]
    assert _status_code("/sound") == 404
    with browser.browser(tmp_path) as page:
        page.goto(URL)
        page.wait_for_function("() => document.readyState === 'complete'")
        page.wait_for_selector("#noVNC_control_bar", state="attached")
        # The page asked /sound and got 404: no speaker button.
        wait_until(lambda: page.evaluate(
            "() => performance.getEntriesByType('resource')"
            ".some(e => e.name.endsWith('/sound'))"), "the page asked /sound")
        assert page.query_selector("#whaletop_sound") is None
    assert json.dumps(c.status_json()).count("pipewire") == 0
