"""Sound: the bridge's WebSocket and Opus encoder (real libopus), its place in the
programs table and the configuration, and the real nginx in front of the real bridge.

The pipeline with a real sound server (PipeWire, paplay, Chromium) is tests/e2e/
test_sound.py's: the host of the unit tests has none.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from bench import sound as bench_sound
from whaletopd import sound, websocket
from whaletopd.config import Config, parse
from whaletopd.paths import Paths
from whaletopd.programs import PROGRAMS, Launch

from .. import tools
from .helpers import wait_for

SOUND_ROWS = ("pipewire", "wireplumber", "pipewire-pulse", "sound")


# -- RFC 6455 ----------------------------------------------------------------------------

def test_accept_key_is_rfc_6455_s_example() -> None:
    assert websocket.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_handshake_answers_an_upgrade() -> None:
    answer = sound.handshake(
        b"GET /sound HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    assert answer is not None
    assert answer.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer


@pytest.mark.parametrize("request_bytes", [
    b"GET /sound HTTP/1.1\r\nHost: x\r\n\r\n",  # the page's fetch: is sound on?
    b"POST /sound HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Key: "
    b"dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    b"GET /sound HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Key: short\r\n\r\n",
])
def test_handshake_refuses_what_is_no_websocket(request_bytes: bytes) -> None:
    assert sound.handshake(request_bytes) is None


@pytest.mark.parametrize(("size", "head"), [
    (0, b"\x82\x00"), (125, b"\x82\x7d"), (126, b"\x82\x7e\x00\x7e"),
    (65535, b"\x82\x7e\xff\xff"), (65536, b"\x82\x7f" + (65536).to_bytes(8, "big")),
])
def test_frames_are_final_binary_and_unmasked(size: int, head: bytes) -> None:
    framed = sound.frame(b"x" * size)
    assert framed[:len(head)] == head
    assert len(framed) == len(head) + size


# -- Opus --------------------------------------------------------------------------------

needs_libopus = tools.LIBOPUS.needed


def _tone(hz: float, frames: int, start: int = 0) -> bytes:
    return b"".join(struct.pack("<hh", v, v) for v in (
        int(12000 * math.sin(2 * math.pi * hz * (start + i) / sound.RATE))
        for i in range(frames)))


@needs_libopus
def test_opus_packets_are_20_ms_stereo_celt_within_the_bitrate() -> None:
    encoder = sound.OpusEncoder()
    try:
        packets = [encoder.encode(_tone(440, sound.FRAME, n * sound.FRAME))
                   for n in range(50)]  # one second
    finally:
        encoder.close()
    toc = packets[-1][0]
    assert toc >> 3 == 31, "CELT fullband, 20 ms (RFC 6716 configuration 31)"
    assert toc & 0x04, "stereo"
    assert sum(len(p) for p in packets) * 8 <= 160_000, "within the issue's 160 kbit/s"


@needs_libopus
def test_opus_refuses_a_frame_of_the_wrong_size() -> None:
    encoder = sound.OpusEncoder()
    try:
        with pytest.raises(AssertionError):
            encoder.encode(b"\0" * 100)
    finally:
        encoder.close()


# -- the table and the flag ----------------------------------------------------------------

def _enabled(config: Config) -> list[str]:
    return [p.name for p in PROGRAMS if p.enabled(config)]


def test_sound_children_are_optional_and_only_without_no_sound() -> None:
    assert [n for n in _enabled(Config()) if n in SOUND_ROWS] == list(SOUND_ROWS)
    assert not [n for n in _enabled(Config(no_sound=True)) if n in SOUND_ROWS]
    rows = [p for p in PROGRAMS if p.name in SOUND_ROWS]
    assert all(p.optional and p.restart is not None and p.account == "desktop" for p in rows)
    assert not [p.name for p in PROGRAMS if p.optional and p.name not in SOUND_ROWS]


def test_sound_argv(paths: Paths) -> None:
    launch = Launch(Config(), paths)
    argv = {p.name: p.argv(launch) for p in PROGRAMS if p.name in SOUND_ROWS}
    assert argv == {
        "pipewire": ["pipewire"], "wireplumber": ["wireplumber"],
        "pipewire-pulse": ["pipewire-pulse"],
        "sound": ["python3", "-m", "whaletopd.sound", "--socket", str(paths.sound_socket)]}


@pytest.mark.parametrize(("argv", "env", "sound_on"), [
    ([], {}, True), (["--no-sound"], {}, False), ([], {"WHALETOP_NO_SOUND": "1"}, False),
    ([], {"WHALETOP_NO_SOUND": "false"}, True),
])
def test_no_sound_flag_and_variable(argv: list[str], env: dict[str, str],
                                    sound_on: bool) -> None:
    assert parse(argv, env).sound is sound_on


def test_the_bridge_imports_nothing_of_the_daemon() -> None:
    """Lean: python3 -m whaletopd.sound loads no structlog, transitions, psutil..."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys, whaletopd.sound; print(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True).stdout.split()
    assert not [m for m in out if m.split(".")[0] in {
        "structlog", "transitions", "psutil", "watchdog", "cryptography"}]
    # Its own module, and the RFC 6455 pieces it shares with the relay (stdlib only).
    assert sorted(m for m in out if m.startswith("whaletopd.")) == [
        "whaletopd.sound", "whaletopd.websocket"]


# -- the bench's view of it ------------------------------------------------------------------

def test_the_bench_counts_the_bridge_as_the_pipeline_and_not_itself(tmp_path: Path) -> None:
    """bench/sound.py's CPU snapshot (run in the container) finds the real bridge by its
    command line, and never its own process (whose source names the bridge)."""
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "PULSE_SERVER": "",
           "PYTHONPATH": str(Path(sound.__file__).parents[1])}
    bridge = subprocess.Popen(["python3", "-m", "whaletopd.sound", "--socket",
                               str(tmp_path / "sound.sock")], env=env,
                              stdout=subprocess.DEVNULL)
    try:
        wait_for((tmp_path / "sound.sock").exists, "the bridge's socket")
        out = subprocess.run([sys.executable, "-c", bench_sound.CPU_SNAPSHOT],
                             capture_output=True, text=True, check=True).stdout
        # Other containers' processes are visible from here: only ours is known.
        pipeline = [int(k.split(":")[1]) for k in json.loads(out) if k.startswith("pipeline:")]
        assert bridge.pid in pipeline
        # The snapshot's own process has ended; every process it counted still runs.
        assert all(Path(f"/proc/{pid}").exists() for pid in pipeline)
    finally:
        bridge.terminate()
        bridge.wait()
