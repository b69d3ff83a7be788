"""The web sign-in service: nginx asks it (auth_request) whether a request may pass.

    python3 -m whaletopd.webauth --socket /run/whaletop/web/auth.sock \\
        --settings /run/whaletop/web/auth.json

HTTP/1.1 on a UNIX socket (mode 0600), one thread per connection, standard library only
so the process stays small.  Paths (nginx forwards them unchanged, and the client's
address in X-Real-IP):

    GET  /auth/check     204 + X-Whaletop-User/-Role for a session cookie, Basic
                         credentials or the probe token; else 401 (locked out too);
                         with ?need=full, 403 for a viewer (nginx asks it so for what
                         only full access may do: switching the keyboard's layout)
    GET  /auth/signin    the sign-in page;  POST: sign in, 303 to ../NEXT with a cookie
    GET  /auth/redirect  302 to the sign-in page, relative to X-Original-URI
    GET  /auth/signout   a page with a button;  POST: end the session, 303 to signin
    GET  /auth/session   {"user", "role"} for the page (never a VNC password: the
                         desktop's relay logs in to the VNC server itself, vncrelay.py)

Sessions are random tokens; only their sha256 is kept, in memory and in the sessions file
(so a restart keeps people signed in).  A session ends when it expires or its user leaves
the users file or gets a new password or role.  /auth/check names the grant a request
came with (X-Whaletop-Grant: the session, or the user's password for Basic), and the
grants still good are published in the grants file, rewritten within GRANTS_TICK of any
change: the desktop's relay closes the connections of a grant that ended.

Failed sign-ins are counted per client address: past half the allowed attempts each
failure is answered more slowly, at the limit the address is refused for lockout_s.
Logs are JSON lines on stdout, never with a password, hash, token or cookie.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hmac
import html
import json
import math
import os
import re
import signal
import socketserver
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from string import Template
from typing import Any, cast
from urllib.parse import parse_qs, quote, urlsplit

from whaletopd import webusers
from whaletopd.rfbauth import PROBE_GRANT
from whaletopd.webauth_state import (
    GRANTS_TICK,
    GrantsFile,
    Guard,
    Sessions,
    UsersFile,
    emit,
    session_grant,
    user_grant,
)
from whaletopd.webusers import WebUser

MAX_BODY = 8 * 1024
PROBE_USER = "(probe)"  # not a valid user name, so never mistaken for one
TEMPLATE = Path(__file__).with_name("signin.html")

WRONG = "Wrong user name or password."
HTML_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; "
                                "form-action 'self'; frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
)
_ADDR_RE = re.compile(r"^[0-9A-Za-z:.%_-]{1,64}$")
_COOKIE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_NEXT_RE = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@/?%#]*$")



# -- what whaletopd tells us --------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    users_file: Path
    sessions_file: Path
    grants_file: Path
    probe_token: str = field(repr=False)
    attempts: int = 10
    lockout_s: float = 300.0
    secure_cookie: bool = False
    cookie_name: str = "whaletop_session"
    session_hours: float = 12.0

    @classmethod
    def load(cls, path: Path) -> Settings:
        doc = json.loads(path.read_text("utf-8"))
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: not a JSON object")

        def get(key: str, kind: type | tuple[type, ...], default: object = None) -> Any:
            value = doc.get(key, default)
            if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
                raise ValueError(f"{path}: {key!r} is missing or of the wrong type")
            return value

        s = cls(users_file=Path(get("users_file", str)),
                sessions_file=Path(get("sessions_file", str)),
                grants_file=Path(get("grants_file", str)),
                probe_token=get("probe_token", str),
                attempts=get("attempts", int, 10),
                lockout_s=float(get("lockout_s", (int, float), 300)),
                secure_cookie=get("secure_cookie", bool, False),
                cookie_name=get("cookie_name", str, "whaletop_session"),
                session_hours=float(get("session_hours", (int, float), 12)))
        if len(s.probe_token) < 16:
            raise ValueError(f"{path}: 'probe_token' is shorter than 16 characters")
        if s.attempts < 1 or not 0 < s.lockout_s <= 86400 or not 0 < s.session_hours <= 8760:
            raise ValueError(f"{path}: 'attempts', 'lockout_s' or 'session_hours' is out of "
                             "range")
        if not _COOKIE_NAME_RE.match(s.cookie_name):
            raise ValueError(f"{path}: 'cookie_name' is not a valid cookie name")
        return s


# -- small pure rules ---------------------------------------------------------------------

def safe_next(value: str) -> str:
    """`value` when it is a harmless path relative to the site's root (it follows "../"
    in a Location), else "": no scheme, no leading '/' or '\\', no '//', URL-safe only."""
    if (len(value) > 2048 or not _NEXT_RE.match(value) or value.startswith("/")
            or "//" in value):
        return ""
    if ":" in re.split(r"[/?#]", value, maxsplit=1)[0]:
        return ""  # a scheme: javascript:, http:
    return value


def same_origin(origin: str | None, host: str | None, scheme: str) -> bool:
    """No Origin header, or one that is `scheme`://Host: this site as the browser reaches
    it.  A page on http:// is another origin for an https:// desktop (anyone on the
    network can write it), whatever its host."""
    if origin is None:
        return True
    if not host:
        return False
    parts = urlsplit(origin.strip())
    if parts.scheme != scheme or not parts.netloc:
        return False
    default = ":80" if parts.scheme == "http" else ":443"

    def norm(hostport: str) -> str:
        hostport = hostport.strip().lower()
        return hostport.removesuffix(default)

    return norm(parts.netloc) == norm(host)


def redirect_location(original: str | None) -> str:
    """Where /auth/redirect sends a browser, relative to the URL it shows.  nginx reaches
    /auth/redirect by an internal error_page, so the browser still shows the original
    URI ($request_uri in X-Original-URI): climb as many levels as it has to the site's
    root, then auth/signin.  Without the header the browser is at /auth/redirect."""
    if not original or not original.startswith("/"):
        return "signin?next="
    path = re.split(r"[?#]", original, maxsplit=1)[0]
    target = "" if path.startswith("/auth/") else original[1:]
    return "../" * (path.count("/") - 1) + "auth/signin?next=" + quote(target, safe="")


def try_again(seconds: float) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    unit = "minute" if minutes == 1 else "minutes"
    return f"Too many failed sign-ins from your address. Try again in {minutes} {unit}."


# -- the service --------------------------------------------------------------------------

class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.users = UsersFile(settings.users_file)
        self.sessions = Sessions(settings.sessions_file)
        self.guard = Guard(settings.attempts, settings.lockout_s)
        self.grants = GrantsFile(settings.grants_file)
        self.template = Template(TEMPLATE.read_text("utf-8"))

    def publish_grants(self) -> None:
        """The grants still good, for the desktop's relay: every valid session, and
        every user's password (what HTTP Basic signs in with), each with its role."""
        users = self.users.current()
        grants = {user_grant(u): u.role for u in users.values()}
        grants.update(self.sessions.live(users))
        self.grants.publish(grants)

    def keep_grants(self, tick: float = GRANTS_TICK) -> None:
        """A thread: users file changes and expiries become grants that end."""
        while True:
            time.sleep(tick)
            self.publish_grants()

    def cookie(self, value: str, max_age: int) -> str:
        secure = "; Secure" if self.settings.secure_cookie else ""
        return (f"{self.settings.cookie_name}={value}; Path=/; Max-Age={max_age}; HttpOnly; "
                f"SameSite=Lax{secure}")

    def try_password(self, client: str, name: str, password: str,
                     users: dict[str, WebUser]) -> tuple[WebUser | None, float]:
        """(the user, 0) when the password is right; (None, seconds the address is now
        refused, 0 when it is not)."""
        wait = self.guard.begin(client)
        if wait:
            return None, wait
        user = webusers.check(users, name, password)
        if user is not None:
            self.guard.succeeded(client)
            return user, 0.0
        f = self.guard.failed(client)
        # A name nobody has may be a password typed in the wrong field: not logged.
        emit("sign_in_failed", "warning", client=client,
             user=name if name in users else None, failures=f.failures)
        if f.locked_s:
            emit("sign_in_locked", "warning", client=client, seconds=f.locked_s)
        if f.delay:
            time.sleep(f.delay)
        return None, self.guard.locked_for(client)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "whaletop-webauth"
    sys_version = ""
    timeout = 60  # an idle keep-alive connection gives its thread back

    @property
    def app(self) -> App:
        return cast(Server, self.server).app

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the service logs its own events, never each request."""

    # -- plumbing --

    def send(self, status: int, body: bytes = b"", content_type: str = "",
             headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if content_type:
            self.send_header("Content-Type", content_type)
        for k, v in headers:
            self.send_header(k, v)
        if status != 204:  # a 204 has no body, and says no length
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def page(self, status: int, notice: str = "", next_: str = "",
             headers: tuple[tuple[str, str], ...] = ()) -> None:
        notice_html = (f'<p class="notice" role="alert">{html.escape(notice)}</p>'
                       if notice else "")
        body = self.app.template.substitute(notice=notice_html, next=html.escape(next_))
        self.send(status, body.encode("utf-8"), "text/html; charset=utf-8",
                  HTML_HEADERS + headers)

    def send_json(self, status: int, doc: dict[str, object],
                  headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send(status, json.dumps(doc).encode("utf-8"), "application/json", headers)

    def body_length(self) -> int | None:
        """The declared body's length, or None (and the connection closes after this
        answer) when it is chunked, malformed or larger than MAX_BODY."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if self.headers.get("Transfer-Encoding") or not 0 <= length <= MAX_BODY:
            self.close_connection = True
            return None
        return length

    def discard_body(self) -> None:
        """Keep the connection usable after a body nobody reads."""
        if length := self.body_length():
            self.rfile.read(length)

    def read_form(self) -> dict[str, list[str]] | None:
        length = self.body_length()
        if length is None:
            return None
        body = self.rfile.read(length).decode("utf-8", "replace")
        try:
            return parse_qs(body, keep_blank_values=True, max_num_fields=16)
        except ValueError:
            return None

    def client(self) -> str:
        addr = self.headers.get("X-Real-IP", "").strip()
        return addr if _ADDR_RE.match(addr) else "unknown"

    def same_origin(self) -> bool:
        """nginx says which scheme the browser used (X-Forwarded-Proto: the connection's,
        or a trusted proxy's word); without it, the one whaletop serves."""
        scheme = (self.headers.get("X-Forwarded-Proto") or "").strip().lower()
        if scheme not in ("http", "https"):
            scheme = "https" if self.app.settings.secure_cookie else "http"
        return same_origin(self.headers.get("Origin"), self.headers.get("Host"), scheme)

    def tokens(self) -> Iterator[str]:
        name = self.app.settings.cookie_name
        for header in self.headers.get_all("Cookie") or []:
            for part in header.split(";"):
                k, sep, v = part.strip().partition("=")
                if sep and k == name:
                    yield v.strip().strip('"')

    def basic(self) -> tuple[str, str] | None:
        scheme, _, value = (self.headers.get("Authorization") or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return ("", "")  # credentials that cannot be right: still a failure
        name, _, password = decoded.partition(":")
        return name, password

    def authenticate(self) -> tuple[WebUser | None, float, str]:
        """(the user, 0, its grant) for a valid session cookie or Basic credentials,
        else (None, seconds this address stays refused, "")."""
        users = self.app.users.current()
        for token in self.tokens():
            user = self.app.sessions.lookup(token, users)
            if user is not None:
                return user, 0.0, session_grant(token)
        client = self.client()
        creds = self.basic()
        if creds is None:
            return None, self.app.guard.locked_for(client), ""
        user, locked = self.app.try_password(client, creds[0], creds[1], users)
        return user, locked, user_grant(user) if user is not None else ""

    def refused(self, locked: float) -> tuple[int, tuple[tuple[str, str], ...]]:
        if locked:
            return 429, (("Retry-After", str(math.ceil(locked))),)
        return 401, ()

    # -- routes --

    def do_GET(self) -> None:
        self.route()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def route(self) -> None:
        path = urlsplit(self.path).path
        method = "GET" if self.command == "HEAD" else self.command
        if path == "/auth/check":  # auth_request may pass the original method on
            self.discard_body()
            self.check()
            return
        handlers: dict[tuple[str, str], Callable[[], None]] = {
            ("/auth/signin", "GET"): self.signin_page,
            ("/auth/signin", "POST"): self.signin,
            ("/auth/redirect", "GET"): self.redirect,
            ("/auth/signout", "GET"): self.signout_page,
            ("/auth/signout", "POST"): self.signout,
            ("/auth/session", "GET"): self.session,
        }
        handler = handlers.get((path, method))
        if handler is None:
            self.discard_body()
            known = sorted({m for p, m in handlers if p == path})
            if known:
                self.send(405, headers=(("Allow", ", ".join([*known, "HEAD"])),))
            else:
                self.send(404)
            return
        if method != "POST":
            self.discard_body()
        handler()

    def check(self) -> None:
        probe = self.headers.get("X-Whaletop-Probe")
        if probe is not None and hmac.compare_digest(
                probe.encode("utf-8"), self.app.settings.probe_token.encode("utf-8")):
            self.send(204, headers=(("X-Whaletop-User", PROBE_USER),
                                    ("X-Whaletop-Role", "full"),
                                    ("X-Whaletop-Grant", PROBE_GRANT)))
            return
        user, _locked, grant = self.authenticate()
        if user is not None and user.role != "full" and parse_qs(
                urlsplit(self.path).query).get("need") == ["full"]:
            self.send(403)
            return
        if user is not None:
            self.send(204, headers=(("X-Whaletop-User", user.name),
                                    ("X-Whaletop-Role", user.role),
                                    ("X-Whaletop-Grant", grant)))
            return
        # 401 even for a locked-out address (whose password was not even checked): nginx's
        # auth_request turns any answer but 2xx, 401 and 403 into a 500, whereas a 401
        # sends the browser to the sign-in page, which says how long the lock lasts.
        self.send(401)

    def session(self) -> None:
        user, locked, _grant = self.authenticate()
        if user is None:
            status, headers = self.refused(locked)
            self.send_json(status, {"error": "too many failed sign-ins" if locked
                                    else "not signed in"}, headers)
            return
        self.send_json(200, {"user": user.name, "role": user.role})

    def signin_page(self) -> None:
        values = parse_qs(urlsplit(self.path).query).get("next", [""])
        locked = self.app.guard.locked_for(self.client())
        self.page(200, try_again(locked) if locked else "", safe_next(values[0]))

    def redirect(self) -> None:
        location = redirect_location(self.headers.get("X-Original-URI"))
        self.send(302, headers=(("Location", location),))

    def signin(self) -> None:
        if not self.same_origin():
            self.discard_body()
            self.send(403, b"Cross-site sign-in refused.\n", "text/plain; charset=utf-8")
            return
        form = self.read_form()
        if form is None:
            self.send(413 if self.close_connection else 400)
            return

        def first(key: str) -> str:
            return form.get(key, [""])[0]

        next_ = safe_next(first("next"))
        client = self.client()
        user, locked = self.app.try_password(client, first("username"), first("password"),
                                             self.app.users.current())
        if user is None:
            if locked:
                self.page(429, try_again(locked), next_,
                          (("Retry-After", str(math.ceil(locked))),))
            else:
                self.page(401, WRONG, next_)
            return
        s = self.app.settings
        token = self.app.sessions.create(user, s.session_hours)
        self.app.publish_grants()
        emit("signed_in", user=user.name, role=user.role, client=client)
        self.send(303, headers=(("Location", "../" + next_),
                                ("Set-Cookie", self.app.cookie(token,
                                                               int(s.session_hours * 3600)))))

    def signout_page(self) -> None:
        body = ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
                '<meta name="viewport" content="width=device-width, initial-scale=1">'
                '<title>Sign out - whaletop</title></head>'
                '<body style="font: 16px system-ui, sans-serif; margin: 3em; '
                'text-align: center"><form method="post" action="signout">'
                '<button type="submit" style="font-size: 1em; padding: .6em 2em">'
                'Sign out</button></form></body></html>')
        self.send(200, body.encode("utf-8"), "text/html; charset=utf-8", HTML_HEADERS)

    def signout(self) -> None:
        self.discard_body()
        if not self.same_origin():
            self.send(403, b"Cross-site sign-out refused.\n", "text/plain; charset=utf-8")
            return
        for token in self.tokens():
            s = self.app.sessions.delete(token)
            if s is not None:
                self.app.publish_grants()  # the desktop's relay closes its connections
                emit("signed_out", user=s.user, client=self.client())
        self.send(303, headers=(("Location", "signin"),
                                ("Set-Cookie", self.app.cookie("", 0))))


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(self, socket_path: Path, app: App) -> None:
        self.app = app
        self.socket_path = socket_path
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(socket_path).st_mode):
                os.unlink(socket_path)  # left by a previous run
        old = os.umask(0o177)  # born 0600: never reachable by others, not even briefly
        try:
            super().__init__(str(socket_path), Handler)
        finally:
            os.umask(old)
        os.chmod(socket_path, 0o600)
        self.inode = os.stat(socket_path).st_ino

    def remove_socket(self) -> None:
        with contextlib.suppress(OSError):
            if os.stat(self.socket_path).st_ino == self.inode:
                os.unlink(self.socket_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m whaletopd.webauth",
                                     description="whaletop's web sign-in service")
    parser.add_argument("--socket", required=True, type=Path,
                        help="UNIX socket to listen on (created with mode 0600)")
    parser.add_argument("--settings", required=True, type=Path,
                        help="JSON settings written by whaletopd")
    args = parser.parse_args(argv)
    # Blocked before any thread exists, so every thread inherits the mask and the signal
    # waits for sigwait() below (a handler would run only when the main thread wakes).
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        app = App(Settings.load(args.settings))
        server = Server(args.socket, app)
    except (OSError, ValueError) as e:
        emit("webauth_failed", "error", reason=str(e))
        return 2
    app.publish_grants()
    threading.Thread(target=app.keep_grants, name="grants", daemon=True).start()
    # Nothing else wakes on a timer: the loop's poll interval only matters to shutdown(), which
    # is never called (the process exits instead).
    threading.Thread(target=server.serve_forever, args=(3600,), name="serve",
                     daemon=True).start()
    emit("webauth_ready", socket=str(args.socket))
    signal.sigwait(stop_signals)
    server.remove_socket()
    app.sessions.lock.acquire()  # let a session save in progress finish; none starts
    return 0


if __name__ == "__main__":
    sys.exit(main())
