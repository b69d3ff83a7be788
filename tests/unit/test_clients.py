"""Counting VNC clients: real UNIX and TCP sockets, a listener in its own process (as
Xvnc is), the kernel's own accounts of them (sock_diag, /proc/net/tcp)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from whaletopd import clients
from whaletopd.clients import MIN_AGE, ClientCounter

from .helpers import FakeClock, wait_for

# Accepts every connection and keeps it until the client closes it, as Xvnc does;
# prints "ready" once it listens.
LISTENER = r"""
import socket, sys, threading
family, address = sys.argv[1], sys.argv[2]
if family == "unix":
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(address)
else:
    server = socket.create_server(("127.0.0.1", 0))
server.listen(16)
print(server.getsockname()[1] if family == "tcp" else "ready", flush=True)

def serve(conn):
    while conn.recv(4096):
        pass
    conn.close()

while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


class Listener:
    def __init__(self, family: str, address: str = "") -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", LISTENER, family, address],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.line = self.proc.stdout.readline().strip()
        self.clients: list[socket.socket] = []

    def stop(self) -> None:
        for sock in self.clients:
            sock.close()
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    made: list[Listener] = []
    yield made
    for listener in made:
        listener.stop()


@pytest.fixture
def vnc(tmp_path: Path, listeners: list[Listener]) -> tuple[Path, Listener]:
    path = tmp_path / "vnc.sock"
    listener = Listener("unix", str(path))
    listeners.append(listener)
    assert listener.line == "ready"
    return path, listener


def _connect_unix(path: Path, listener: Listener) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    listener.clients.append(sock)
    return sock


def test_accepted_unix_connections_are_counted_until_they_close(
        vnc: tuple[Path, Listener]) -> None:
    path, listener = vnc
    assert clients.connected_unix(path) == set()
    first = _connect_unix(path, listener)
    _connect_unix(path, listener)
    wait_for(lambda: len(clients.connected_unix(path)) == 2, "two accepted connections")
    first.close()
    wait_for(lambda: len(clients.connected_unix(path)) == 1,
             "the listener to close the connection its client closed")


def test_connections_to_another_socket_file_are_not_counted(
        tmp_path: Path, vnc: tuple[Path, Listener], listeners: list[Listener]) -> None:
    """With --network host the kernel lists every container's sockets: only those
    behind our own socket file count, even under the same name elsewhere."""
    path, _ = vnc
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_path = other_dir / path.name
    other = Listener("unix", str(other_path))
    listeners.append(other)
    _connect_unix(other_path, other)
    wait_for(lambda: len(clients.connected_unix(other_path)) == 1, "the other's client")
    assert clients.connected_unix(path) == set()


def test_a_missing_socket_file_cannot_be_counted(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        clients.connected_unix(tmp_path / "nothing.sock")


def test_established_tcp_connections_to_the_port_are_counted(
        listeners: list[Listener]) -> None:
    listener = Listener("tcp")
    listeners.append(listener)
    port = int(listener.line)
    assert clients.connected_tcp(port) == set()
    listener.clients.append(socket.create_connection(("127.0.0.1", port)))
    wait_for(lambda: len(clients.connected_tcp(port)) == 1, "one TCP client")
    listener.clients.pop().close()
    wait_for(lambda: clients.connected_tcp(port) == set(), "the TCP client gone")


def test_a_connection_counts_once_it_outlived_min_age(vnc: tuple[Path, Listener]) -> None:
    """A health check's login lasts milliseconds: one seen in a single count, or in two
    counts closer than MIN_AGE, is not a client."""
    path, listener = vnc
    clock = FakeClock(100.0)
    counter = ClientCounter(path, clock=clock)
    _connect_unix(path, listener)
    wait_for(lambda: len(clients.connected_unix(path)) == 1, "the client accepted")
    assert counter.count() == 0  # first seen now
    clock.advance(MIN_AGE / 2)
    assert counter.count() == 0
    clock.advance(MIN_AGE / 2)
    assert counter.count() == 1
    # A check's login, seen once, then gone: never counted.
    check = _connect_unix(path, listener)
    wait_for(lambda: len(clients.connected_unix(path)) == 2, "the check accepted")
    assert counter.count() == 1
    check.close()
    wait_for(lambda: len(clients.connected_unix(path)) == 1, "the check gone")
    clock.advance(MIN_AGE)
    assert counter.count() == 1


def test_the_tcp_port_counts_with_expose_vnc(vnc: tuple[Path, Listener],
                                             listeners: list[Listener]) -> None:
    path, listener = vnc
    tcp = Listener("tcp")
    listeners.append(tcp)
    clock = FakeClock()
    counter = ClientCounter(path, int(tcp.line), clock=clock)
    _connect_unix(path, listener)
    tcp.clients.append(socket.create_connection(("127.0.0.1", int(tcp.line))))
    wait_for(lambda: len(clients.connected_unix(path)) == 1
             and len(clients.connected_tcp(int(tcp.line))) == 1, "both clients")
    assert counter.count() == 0
    clock.advance(MIN_AGE)
    assert counter.count() == 2
    assert ClientCounter(path, None, clock=clock).count() == 0  # new: seen first now
