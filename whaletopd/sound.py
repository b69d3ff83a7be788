"""The sound bridge: the desktop's sound, Opus-encoded, on a WebSocket for the page.

Run as `python3 -m whaletopd.sound --socket PATH`, the desktop user's child (programs.py
row "sound").  nginx proxies /sound (sign-in and Origin checked there) to PATH, a UNIX
socket; the bridge speaks the server side of RFC 6455 itself: one Opus packet (20 ms,
48 kHz stereo) per binary message, which websockify in front of a byte stream could not
promise.

It is event-driven.  `pactl subscribe` tells when streams come and go (sink-input new,
change, remove); the streams are counted (corked ones do not play).  Only while at least
one page listens AND a stream plays does `parec` capture the "whaletop" sink's monitor
and libopus (ctypes; Chromium's dependency, already in the image) encode it; otherwise
nothing is captured or encoded.  A listener that cannot keep up loses packets (its
socket's buffer is full): late sound is dropped, never queued.

Its lines on stdout are JSON objects (whaletopd keeps their fields).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from whaletopd.websocket import frame, parse_upgrade, switching, unmask

SINK = "whaletop"
RATE = 48000
CHANNELS = 2
FRAME = RATE // 50  # 20 ms
FRAME_BYTES = FRAME * CHANNELS * 2  # s16le
BITRATE = 128000
MAX_PACKET = 4000
# Capture stops this long after the last stream ended (a player between two tracks).
LINGER = 2.0
# A listener whose socket holds more than this (about half a second) is behind: packets
# for it are dropped until it drained.
MAX_BUFFERED = 8 * 1024
# Recording latency asked of the sound server (its fragment).
CAPTURE_LATENCY_MS = 10
MAX_REQUEST = 8192

# libopus's constants (opus_defines.h).
OPUS_APPLICATION_RESTRICTED_LOWDELAY = 2051
OPUS_SET_BITRATE_REQUEST = 4002
OPUS_OK = 0


def log(event: str, level: str = "info", **fields: object) -> None:
    print(json.dumps({"event": event, "level": level, **fields}), flush=True)


class OpusEncoder:
    """libopus through ctypes: 20 ms of s16le stereo in, one Opus packet out."""

    def __init__(self, bitrate: int = BITRATE, library: str | None = None) -> None:
        name = library or ctypes.util.find_library("opus") or "libopus.so.0"
        self._lib = lib = ctypes.CDLL(name)
        lib.opus_encoder_create.restype = ctypes.c_void_p
        lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int,
                                            ctypes.POINTER(ctypes.c_int)]
        lib.opus_encode.restype = ctypes.c_int32
        lib.opus_encode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                    ctypes.c_char_p, ctypes.c_int32]
        lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_encoder_ctl.restype = ctypes.c_int
        error = ctypes.c_int()
        # Restricted low delay: no speech mode, 2.5 ms less look-ahead than AUDIO.
        self._enc = lib.opus_encoder_create(RATE, CHANNELS,
                                            OPUS_APPLICATION_RESTRICTED_LOWDELAY,
                                            ctypes.byref(error))
        if error.value != OPUS_OK or not self._enc:
            raise OSError(f"opus_encoder_create failed ({error.value})")
        if lib.opus_encoder_ctl(ctypes.c_void_p(self._enc), OPUS_SET_BITRATE_REQUEST,
                                ctypes.c_int32(bitrate)) != OPUS_OK:
            raise OSError(f"libopus refused the bitrate {bitrate}")
        self._out = ctypes.create_string_buffer(MAX_PACKET)

    def encode(self, pcm: bytes) -> bytes:
        """One frame (FRAME_BYTES of s16le stereo) as one Opus packet."""
        assert len(pcm) == FRAME_BYTES
        n = self._lib.opus_encode(self._enc, pcm, FRAME, self._out, MAX_PACKET)
        if n < 0:
            raise OSError(f"opus_encode failed ({n})")
        return self._out.raw[:n]

    def close(self) -> None:
        if self._enc:
            self._lib.opus_encoder_destroy(self._enc)
            self._enc = None


# -- RFC 6455, the server's side (websocket.py) ------------------------------------------

def handshake(request: bytes) -> bytes | None:
    """The 101 answer to a WebSocket upgrade request; None when it is not one."""
    headers = parse_upgrade(request)
    return None if headers is None else switching(headers)


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """A client's frame (masked, as RFC 6455 requires): (opcode, payload)."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    if n > 4096:
        raise ValueError("a listener sends nothing that large")
    mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
    data = await reader.readexactly(n)
    return b0 & 0x0F, unmask(data, mask)


# -- the bridge --------------------------------------------------------------------------

class Bridge:
    def __init__(self, socket_path: Path, pactl: str = "pactl", parec: str = "parec") -> None:
        self.socket_path = socket_path
        self.pactl = pactl
        self.parec = parec
        self.listeners: set[asyncio.StreamWriter] = set()
        self.playing = 0  # streams that play now (not corked)
        self._capture: asyncio.Task[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._count_pending = False

    # Listeners ------------------------------------------------------------------------

    async def serve_listener(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        answer = handshake(request)
        if answer is None:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        writer.write(answer)
        self.listeners.add(writer)
        log("listener_joined", listeners=len(self.listeners))
        self.update()
        try:
            while True:
                opcode, payload = await read_frame(reader)
                if opcode == 0x8:  # close: answer it
                    writer.write(frame(payload[:2], 0x8))
                    break
                if opcode == 0x9:  # ping
                    writer.write(frame(payload, 0xA))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self.listeners.discard(writer)
            writer.close()
            log("listener_left", listeners=len(self.listeners))
            self.update()

    def send(self, packet: bytes) -> None:
        message = frame(packet)
        for writer in list(self.listeners):
            if writer.transport.get_write_buffer_size() > MAX_BUFFERED:
                continue  # behind: this packet is dropped for it
            writer.write(message)

    # Streams --------------------------------------------------------------------------

    async def watch_streams(self) -> None:
        """Follow the sound server's sink-input events; count what plays on each."""
        proc = await asyncio.create_subprocess_exec(
            self.pactl, "subscribe", stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        await self.count_streams()
        async for line in proc.stdout:
            if b"sink-input" not in line:
                continue
            if line.startswith(b"Event 'new'") and not self.playing:
                # Capture at once (a new stream plays uncorked, mostly); the count
                # that follows corrects it.  Saves a pactl round trip of latency.
                self.playing = 1
                self.update()
            self._schedule_count()
        code = await proc.wait()
        raise SystemExit(f"pactl subscribe ended ({code}): is the sound server running?")

    def _schedule_count(self) -> None:
        if not self._count_pending:  # a burst of events: one count
            self._count_pending = True
            asyncio.get_running_loop().create_task(self.count_streams())

    async def count_streams(self) -> None:
        self._count_pending = False
        proc = await asyncio.create_subprocess_exec(
            self.pactl, "--format=json", "list", "sink-inputs",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await proc.communicate()
        try:
            inputs = json.loads(out or b"[]")
        except ValueError:
            inputs = []
        playing = sum(1 for i in inputs if isinstance(i, dict) and not i.get("corked"))
        if playing != self.playing:
            self.playing = playing
            self.update()

    # Capture --------------------------------------------------------------------------

    def update(self) -> None:
        """Capture iff somebody listens and something plays (lingering a little after the
        last stream, so that a player between two tracks does not restart it)."""
        wanted = bool(self.listeners) and self.playing > 0
        running = self._capture is not None and not self._capture.done()
        if wanted:
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            if not running:
                self._capture = asyncio.get_running_loop().create_task(self.capture())
        elif running:
            if not self.listeners:
                self.stop_capture()
            elif self._linger is None:
                self._linger = asyncio.get_running_loop().call_later(LINGER, self.stop_capture)

    def stop_capture(self) -> None:
        self._linger = None
        if self._capture is not None:
            self._capture.cancel()

    async def capture(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            self.parec, f"--device={SINK}.monitor", "--format=s16le", f"--rate={RATE}",
            f"--channels={CHANNELS}", "--raw", f"--latency-msec={CAPTURE_LATENCY_MS}",
            "--client-name=whaletop-sound", stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        encoder = OpusEncoder()
        t0, frames, sent = time.monotonic(), 0, 0
        log("capture_started", listeners=len(self.listeners), playing=self.playing)
        stopped = False  # asked to stop (not parec's own end)
        try:
            while True:
                pcm = await proc.stdout.readexactly(FRAME_BYTES)
                packet = encoder.encode(pcm)
                self.send(packet)
                frames += 1
                sent += len(packet)
        except asyncio.IncompleteReadError:
            log("capture_ended", level="warning", code=await proc.wait(),
                reason="parec stopped; it starts again with the next sound")
        except asyncio.CancelledError:
            stopped = True
            raise
        finally:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
            encoder.close()
            seconds = time.monotonic() - t0
            log("capture_stopped", seconds=round(seconds, 3), frames=frames,
                kbit_s=round(sent * 8 / 1000 / seconds, 1) if seconds > 0 else 0)
            self._capture = None
            if stopped:
                self.update()  # a listener or a sound that came while it stopped

    async def run(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(self.serve_listener, path=str(self.socket_path))
        # nginx's workers (another account) connect: the folder gives it their group.
        os.chmod(self.socket_path, 0o660)
        async with server:
            await wait_for_sound_server()
            log("sound_ready", socket=str(self.socket_path))
            await self.watch_streams()


def pulse_socket() -> Path:
    """Where Pulse clients (pactl, parec, Chromium) find the sound server."""
    server = os.environ.get("PULSE_SERVER", "")
    if server.startswith("unix:"):
        return Path(server[5:])
    return Path(os.environ.get("XDG_RUNTIME_DIR", "/tmp")) / "pulse" / "native"


async def wait_for_sound_server(seconds: float = 30.0) -> None:
    """pipewire-pulse starts beside the bridge: wait for its socket a while."""
    path = pulse_socket()
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no sound server at {path} after {seconds:g} s")
        await asyncio.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m whaletopd.sound")
    parser.add_argument("--socket", required=True, type=Path,
                        help="the UNIX socket nginx proxies /sound to")
    args = parser.parse_args(argv)
    try:
        asyncio.run(Bridge(args.socket).run())
    except KeyboardInterrupt:
        return 0
    except SystemExit as exc:
        log("sound_stopped", level="error", reason=str(exc.code))
        return 1
    except OSError as exc:
        log("sound_stopped", level="error", reason=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
