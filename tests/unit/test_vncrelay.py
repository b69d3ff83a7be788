"""The relay's reading of what clients say (vncrelay.ClientMessages), its WebSocket
framing and the grants it goes by.  The relay against the real Xvnc, nginx and sign-in
service: tests/e2e/test_relay.py and test_front_door.py."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from whaletopd.vncrelay import (
    EXTENDED_DESKTOP_SIZE,
    ClientMessages,
    Connection,
    Grants,
    Refused,
    Relay,
    Settings,
)
from whaletopd.websocket import frame, parse_upgrade, unmask

PIXEL_FORMAT = bytes([0, 0, 0, 0, 32, 24, 0, 1]) + struct.pack("!HHH", 255, 255, 255) + bytes(
    [16, 8, 0, 0, 0, 0])


def encodings(*codes: int) -> bytes:
    return struct.pack("!BBH", 2, 0, len(codes)) + struct.pack(f"!{len(codes)}i", *codes)


def desktop_size(w: int = 800, h: int = 600) -> bytes:
    return struct.pack("!BBHHBB", 251, 0, w, h, 1, 0) + struct.pack("!IHHHHI", 0, 0, 0, w, h, 0)


POINTER = struct.pack("!BBHH", 5, 0, 10, 10)
KEY = struct.pack("!BBHI", 4, 1, 0, 0x61)
UPDATE = struct.pack("!BBHHHH", 3, 0, 0, 0, 1, 1)
CUT = struct.pack("!BBBBi", 6, 0, 0, 0, 2) + b"hi"


def test_whole_messages_pass_whatever_the_frames_cut() -> None:
    stream = PIXEL_FORMAT + encodings(0, 7) + UPDATE + POINTER + KEY + CUT
    m = ClientMessages(viewer=False)
    out = b"".join(m.feed(stream[i:i + 3]) for i in range(0, len(stream), 3))
    assert out == stream
    assert not m.buffer


def test_a_desktop_size_before_the_client_asked_for_it_is_dropped() -> None:
    """TigerVNC 1.15 crashes on SetDesktopSize from a client that never sent the
    ExtendedDesktopSize pseudo-encoding (rfb::SMsgWriter::writeDesktopSize)."""
    m = ClientMessages(viewer=False)
    assert m.feed(desktop_size()) == b""
    assert m.feed(encodings(0)) == encodings(0)
    assert m.feed(desktop_size()) == b"", "still not asked for"
    assert m.feed(encodings(0, EXTENDED_DESKTOP_SIZE)) == encodings(0, EXTENDED_DESKTOP_SIZE)
    assert m.feed(desktop_size()) == desktop_size()
    assert m.feed(desktop_size(0, 600)) == b"", "no empty screen"
    assert m.dropped == 3


def test_a_viewer_s_input_never_passes() -> None:
    m = ClientMessages(viewer=True)
    m.feed(encodings(0, EXTENDED_DESKTOP_SIZE, -258))
    qemu_key = struct.pack("!BBHII", 255, 0, 1, 0x61, 30)
    for message in (POINTER, KEY, CUT, desktop_size(), qemu_key):
        assert m.feed(message) == b"", message
    assert m.feed(UPDATE) == UPDATE, "watching is asking for updates"


@pytest.mark.parametrize(("data", "why"), [
    (b"\x07", "unknown message type 7"),
    (b"\xfa\x00\x01\x02", "unknown message type 250"),
    (bytes([0, 0, 0, 0, 33, 24, 0, 1]) + bytes(12), "pixel format"),
    (bytes([0, 0, 0, 0, 32, 24, 0, 1]) + struct.pack("!HHH", 254, 255, 255) + bytes(6),
     "pixel format"),
    (struct.pack("!BBH", 2, 0, 5000), "5000 encodings"),
    (struct.pack("!BBBBi", 6, 0, 0, 0, -(64 * 1024 * 1024)), "clipboard"),
    (struct.pack("!BBBBIB", 248, 0, 0, 0, 0, 65), "fence"),
    (struct.pack("!BBHHBB", 251, 0, 800, 600, 0, 0), "no screen"),
    (struct.pack("!BB", 255, 1), "QEMU message 1"),
])
def test_what_no_server_should_read_ends_the_connection(data: bytes, why: str) -> None:
    with pytest.raises(Refused, match=why):
        ClientMessages(viewer=False).feed(data)


def test_a_client_frame_is_unmasked() -> None:
    mask = os.urandom(4)
    payload = os.urandom(1000)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert unmask(masked, mask) == payload
    assert frame(b"x" * 70000)[:2] == b"\x82\x7f"
    assert frame(b"x" * 200)[:4] == b"\x82\x7e\x00\xc8"


def test_only_websocket_upgrades_are_taken() -> None:
    good = (b"GET /websockify HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Whaletop-Role: full\r\n\r\n")
    headers = parse_upgrade(good)
    assert headers is not None
    assert headers["x-whaletop-role"] == "full"
    assert parse_upgrade(good.replace(b"websocket", b"h2c")) is None
    assert parse_upgrade(b"POST / HTTP/1.1\r\n\r\n") is None


def test_grants_are_re_read_when_they_change_and_missing_means_none(tmp_path: Path) -> None:
    path = tmp_path / "grants.json"
    grants = Grants(path)
    assert grants.refresh()
    assert grants.role("s1") is None
    assert grants.role("probe") == "full"
    path.write_text(json.dumps({"grants": {"s1": "viewer", "s2": "admin"}}))
    assert grants.refresh()
    assert grants.role("s1") == "viewer"
    assert grants.role("s2") is None, "no role the relay does not know"
    assert not grants.refresh(), "unchanged"
    path.write_text("{not json")
    assert grants.refresh()
    assert grants.role("s1") is None, "unreadable: nothing is granted"


class _Client:
    """What the relay writes to a client's connection, and whether it closed it."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


def _relay(tmp_path: Path, grants: dict[str, str]) -> Relay:
    path = tmp_path / "grants.json"
    path.write_text(json.dumps({"grants": grants}))
    return Relay(Settings(tmp_path / "vnc.sock", True, "full-pw1", "view-pw1", path))


def _connect(relay: Relay, grant: str, role: str) -> tuple[Connection, _Client]:
    client = _Client()
    conn = Connection("alice", role, grant, client)  # type: ignore[arg-type]
    relay.connections.add(conn)
    return conn, client


def test_a_grant_gone_or_a_role_changed_closes_its_connections_only(tmp_path: Path) -> None:
    relay = _relay(tmp_path, {"s1": "full", "s2": "full", "s3": "viewer"})
    gone, gone_client = _connect(relay, "s1", "full")
    demoted, _ = _connect(relay, "s2", "full")
    kept, kept_client = _connect(relay, "s3", "viewer")
    probe, _ = _connect(relay, "probe", "full")
    relay.enforce()
    assert not any(c.ended for c in (gone, demoted, kept, probe))
    (tmp_path / "grants.json").write_text(json.dumps({"grants": {"s2": "viewer",
                                                                 "s3": "viewer"}}))
    # A new request reads the change first: the open connections are still judged.
    assert relay.who({"x-whaletop-grant": "s3", "x-whaletop-role": "viewer"}) == (
        "", "viewer", "s3")
    relay.enforce()
    assert (gone.ended, demoted.ended, kept.ended, probe.ended) == (
        "access taken back", "role changed", "", "")
    assert gone_client.closed
    assert gone_client.written.startswith(b"\x88"), "a close frame, with its reason"
    assert b"access taken back" in gone_client.written
    assert not kept_client.closed


def test_who_believes_only_a_grant_the_sign_in_service_published(tmp_path: Path) -> None:
    relay = _relay(tmp_path, {"s1": "viewer"})
    assert relay.who({}) == "not signed in"
    assert relay.who({"x-whaletop-grant": "s9", "x-whaletop-role": "full"}) == (
        "access was taken back")
    assert relay.who({"x-whaletop-grant": "s1", "x-whaletop-role": "full"}) == (
        "the role changed"), "a viewer's grant never passes as full"
    assert relay.who({"x-whaletop-grant": "s1", "x-whaletop-role": "admin"}) == (
        "not signed in")
