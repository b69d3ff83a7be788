"""Talking to the desktop on 127.0.0.1, the only address the runner ever talks to."""

from __future__ import annotations

import hashlib
import http.client
import socket
import ssl
import time

HOST = "127.0.0.1"


def _unverified() -> ssl.SSLContext:
    """The desktop's certificates are self-signed or the runner's own: nothing to verify."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def http_get(port: int, path: str = "/vnc.html", tls: bool = False,
             timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) from 127.0.0.1; TLS without verification."""
    conn: http.client.HTTPConnection
    if tls:
        conn = http.client.HTTPSConnection(HOST, port, timeout=timeout, context=_unverified())
    else:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def page_served(port: int, tls: bool = False) -> bool:
    try:
        status, body = http_get(port, tls=tls)
    except (OSError, http.client.HTTPException):
        return False
    return status == 200 and b"noVNC" in body


def served_fingerprint(port: int, timeout: float = 2.0) -> tuple[str | None, float]:
    """SHA-256 of the certificate 127.0.0.1:port presents, and when the handshake ended.
    Then it asks for the page, as a browser would, so the server sees a complete request."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as raw, \
                _unverified().wrap_socket(raw) as tls_sock:
            der = tls_sock.getpeercert(binary_form=True) or b""
            at = time.time()
            tls_sock.sendall(f"GET /vnc.html HTTP/1.0\r\nHost: {HOST}:{port}\r\n\r\n".encode())
            while tls_sock.recv(65536):
                pass
    except OSError:
        return None, time.time()
    return hashlib.sha256(der).hexdigest(), at


def port_listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False
