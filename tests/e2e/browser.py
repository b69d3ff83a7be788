"""Debian's Chromium, driven by Playwright (never a downloaded browser), as a user's browser."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("WHALETOP_ARTIFACTS", ROOT / "artifacts"))


@contextmanager
def browser(tmp: Path, width: int = 1200, height: int = 760) -> Iterator[Any]:
    """A page in a fresh profile; clipboard permissions granted like a user would."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": width, "height": height}, ignore_https_errors=True)
        try:
            yield ctx.new_page()
        finally:
            ctx.close()


def log_in(page: Any, url: str, password: str) -> None:
    page.goto(url)
    page.wait_for_url("**/vnc.html*")
    page.fill("#noVNC_password_input", password)
    page.click("#noVNC_credentials_button")


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


class SubPathProxy:
    """A reverse proxy serving the desktop under /desk/, as nginx or Traefik would:
    each connection's request line loses the prefix, then bytes flow both ways (HTTP/1.0
    pages and the WebSocket upgrade alike).  Listens on 127.0.0.1 only."""

    def __init__(self, upstream_port: int, prefix: str = "/desk") -> None:
        self.prefix = prefix.encode()
        self.upstream_port = upstream_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.rewritten: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                client.close()
                return
            head += chunk
        if b"\nupgrade:" not in head.lower():
            # One request per connection, so every request line passes through here: the
            # browser's own Connection header (keep-alive) replaced, or nginx keeps the
            # connection open and the next request's path would not be rewritten.
            lines = [line for line in head.split(b"\r\n")
                     if not line.lower().startswith((b"connection:", b"keep-alive:"))]
            head = b"\r\n".join([lines[0], b"Connection: close", *lines[1:]])
        method, path, rest = head.split(b" ", 2)
        if not path.startswith(self.prefix + b"/"):
            client.sendall(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            client.close()
            return
        path = path[len(self.prefix):]
        self.rewritten.append(path.decode(errors="replace"))
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        upstream.sendall(b" ".join([method, path, rest]))
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()
