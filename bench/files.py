"""The files group: upload and download throughput through the front door, in MB/s
(10^6 bytes a second), over plain HTTP and over TLS (--enable-tls, self-signed).

Each run starts one desktop per transport, PUTs SIZE bytes to /files/Desktop/ (HTTP
Basic with the VNC password, the default mode), checks the size that landed, moves the
file to ~/Downloads and GETs it back, reading and discarding.  The body is one random
MiB sent again and again: nothing on the path compresses, so its content does not
matter, and the client spends its CPU on the transfer.  The client runs on the same
machine (127.0.0.1): the figures are nginx's two hops and the disk, not a network.
"""

from __future__ import annotations

import base64
import http.client
import os
import ssl
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from bench.containers import BenchError, docker
from bench.log import log

if TYPE_CHECKING:
    from bench.measure import Bench

MIB = 1024**2
SIZE = 512 * MIB
QUICK_SIZE = 64 * MIB
HOME = "/home/user"


def _connection(port: int, tls: bool) -> http.client.HTTPConnection:
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection("127.0.0.1", port, timeout=600, context=context)
    return http.client.HTTPConnection("127.0.0.1", port, timeout=600)


def _body(size: int) -> Iterator[bytes]:
    block = os.urandom(MIB)
    left = size
    while left:
        chunk = block[:min(MIB, left)]
        left -= len(chunk)
        yield chunk


def upload(port: int, tls: bool, auth: str, size: int, name: str) -> float:
    """Seconds from the request's first byte to the answer."""
    conn = _connection(port, tls)
    try:
        conn.connect()
        t0 = time.perf_counter()
        conn.request("PUT", f"/files/Desktop/{name}", body=_body(size),
                     headers={"Authorization": auth, "Content-Length": str(size)})
        answer = conn.getresponse()
        answer.read()
        seconds = time.perf_counter() - t0
    finally:
        conn.close()
    if answer.status != 201:
        raise BenchError(f"upload answered {answer.status}")
    return seconds


def download(port: int, tls: bool, auth: str, size: int, name: str) -> float:
    conn = _connection(port, tls)
    try:
        conn.connect()
        t0 = time.perf_counter()
        conn.request("GET", f"/files/Downloads/{name}", headers={"Authorization": auth})
        answer = conn.getresponse()
        got = 0
        while block := answer.read(MIB):
            got += len(block)
        seconds = time.perf_counter() - t0
    finally:
        conn.close()
    if answer.status != 200 or got != size:
        raise BenchError(f"download answered {answer.status} with {got} of {size} bytes")
    return seconds


def fig_files(bench: Bench, i: int) -> None:
    size = QUICK_SIZE if bench.quick else SIZE
    for tls in (False, True):
        suffix = "_tls" if tls else ""
        with bench.container(f"files{suffix}{i}",
                             flags=["--enable-tls"] if tls else []) as c:
            c.wait_healthy()
            password = (c.state / "vnc_passwd").read_text().strip()
            auth = "Basic " + base64.b64encode(f"user:{password}".encode()).decode()
            name = "bench.bin"
            up = upload(bench.web_port, tls, auth, size, name)
            landed = docker("exec", c.name, "stat", "-c", "%s",
                            f"{HOME}/Desktop/{name}").stdout.strip()
            if landed != str(size):
                raise BenchError(f"the upload landed with {landed} bytes, not {size}")
            docker("exec", "-u", "user", c.name, "mv", f"{HOME}/Desktop/{name}",
                   f"{HOME}/Downloads/{name}")
            down = download(bench.web_port, tls, auth, size, name)
            bench.record(f"files_up{suffix}", size / 1e6 / up)
            bench.record(f"files_down{suffix}", size / 1e6 / down)
            log(f"files {i + 1}/{bench.runs}{' TLS' if tls else ''}: {size // MIB} MiB up "
                f"{size / 1e6 / up:.0f} MB/s, down {size / 1e6 / down:.0f} MB/s")
