"""The sign-in service: the real process on a UNIX socket in tmp_path, real HTTP."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urljoin

import pytest

from tests.unit.helpers import WAIT, wait_for
from whaletopd import webauth, webusers

ROOT = Path(__file__).resolve().parents[2]
ALICE_PW = "alice's secret"
BOB_PW = "bob sees only"
PROBE = "probe-0123456789abcdef"
COOKIE = "whaletop_session_8080"
HOST = "localhost:8080"


@pytest.fixture(scope="module")
def hashes() -> dict[str, str]:
    return {"alice": webusers.hash_password(ALICE_PW), "bob": webusers.hash_password(BOB_PW)}


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=WAIT)
        self.socket_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(str(self.socket_path))
        self.sock = s


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name, "")

    def cookie(self) -> str:
        """The session token this reply sets."""
        name, _, rest = self.header("Set-Cookie").partition("=")
        assert name == COOKIE
        return rest.split(";")[0]

    def json(self) -> dict[str, object]:
        doc = json.loads(self.body)
        assert isinstance(doc, dict)
        return doc


@dataclass
class Service:
    socket: Path
    users_file: Path
    settings: Path
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # every cookie value handed out

    def request(self, method: str, path: str, body: str | None = None,
                client: str = "192.0.2.1", **headers: str) -> Reply:
        h = {k.replace("_", "-"): v for k, v in headers.items()}
        h.setdefault("Host", HOST)
        if client:
            h["X-Real-IP"] = client
        conn = UnixConnection(self.socket)
        try:
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            return Reply(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def sign_in(self, user: str, password: str, next_: str = "", client: str = "192.0.2.1",
                **headers: str) -> Reply:
        form = urlencode({"username": user, "password": password, "next": next_})
        r = self.request("POST", "/auth/signin", form, client,
                         Content_Type="application/x-www-form-urlencoded", **headers)
        if r.status == 303:
            self.tokens.append(r.cookie())
        return r

    def check(self, token: str | None = None, client: str = "192.0.2.1",
              **headers: str) -> Reply:
        if token is not None:
            headers["Cookie"] = f"other=1; {COOKIE}={token}"
        return self.request("GET", "/auth/check", client=client, **headers)

    def events(self, name: str) -> list[dict[str, object]]:
        docs = [json.loads(line) for line in list(self.lines)]
        return [d for d in docs if d["event"] == name]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=WAIT)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def users_text(hashes: dict[str, str], bob_role: str = "viewer") -> str:
    return f"# test users\nalice:{hashes['alice']}\nbob:{hashes['bob']}:{bob_role}\n"


def replace_file(path: Path, text: str) -> None:
    """As whaletopd installs a file: a new inode renamed over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


Start = Callable[..., Service]


@pytest.fixture
def start(tmp_path: Path, hashes: dict[str, str]) -> Iterator[Start]:
    started: list[Service] = []
    users_file = tmp_path / "users"
    users_file.write_text(users_text(hashes))

    def _start(**overrides: object) -> Service:
        settings = {"users_file": str(users_file),
                    "sessions_file": str(tmp_path / "sessions.json"),
                    "grants_file": str(tmp_path / "grants.json"), "probe_token": PROBE,
                    "attempts": 4, "lockout_s": 30, "secure_cookie": False,
                    "cookie_name": COOKIE, "session_hours": 12, **overrides}
        settings_file = tmp_path / "auth.json"
        settings_file.write_text(json.dumps(settings))
        sock = tmp_path / "auth.sock"
        proc = subprocess.Popen(
            [sys.executable, "-m", "whaletopd.webauth", "--socket", str(sock),
             "--settings", str(settings_file)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        svc = Service(sock, users_file, settings_file, proc)
        started.append(svc)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                svc.lines.append(line.rstrip("\n"))

        threading.Thread(target=pump, daemon=True).start()
        wait_for(lambda: svc.events("webauth_ready") if svc.lines else False,
                 "webauth_ready")
        return svc

    yield _start
    for svc in started:
        if svc.proc.poll() is None:
            assert svc.stop() == 0
        # Every line is one JSON object, and none carries a secret.
        for line in svc.lines:
            doc = json.loads(line)
            assert doc["level"] in ("info", "warning", "error"), line
            for secret in (ALICE_PW, BOB_PW, PROBE, *hashes.values(),
                           *svc.tokens):
                assert secret not in line


def test_sign_in_then_check_then_session(start: Start) -> None:
    svc = start()
    page = svc.request("GET", "/auth/signin?next=vnc.html%3Fa%3D1%26b%3D%27x")
    assert page.status == 200
    assert b'name="next" value="vnc.html?a=1&amp;b=&#x27;x"' in page.body
    assert page.header("Content-Security-Policy") == (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'")
    assert page.header("X-Frame-Options") == "DENY"
    assert page.header("Cache-Control") == "no-store"

    r = svc.sign_in("alice", ALICE_PW, "vnc.html?a=1&b=2")
    assert r.status == 303
    assert r.header("Location") == "../vnc.html?a=1&b=2"
    set_cookie = r.header("Set-Cookie")
    token = r.cookie()
    assert len(token) >= 40
    assert set_cookie.endswith("; Path=/; Max-Age=43200; HttpOnly; SameSite=Lax")
    assert r.header("Cache-Control") == "no-store"

    ok = svc.check(token)
    assert ok.status == 204
    assert (ok.header("X-Whaletop-User"), ok.header("X-Whaletop-Role")) == ("alice", "full")
    session = svc.request("GET", "/auth/session", Cookie=f"{COOKIE}={token}")
    assert session.status == 200
    assert session.header("Cache-Control") == "no-store"
    assert session.json() == {"user": "alice", "role": "full"}

    viewer = svc.sign_in("bob", BOB_PW).cookie()
    assert svc.check(viewer).header("X-Whaletop-Role") == "viewer"
    assert svc.request("GET", "/auth/session", Cookie=f"{COOKIE}={viewer}").json() == {
        "user": "bob", "role": "viewer"}

    assert svc.request("GET", "/auth/session").status == 401
    assert svc.check().status == 401
    assert svc.check("not-a-session-token-at-all").status == 401
    assert [(e["user"], e["role"]) for e in svc.events("signed_in")] == [
        ("alice", "full"), ("bob", "viewer")]
    assert svc.events("users_loaded")[0]["count"] == 2
    assert svc.events("users_loaded")[0]["viewers"] == 1


def test_what_only_full_access_may_do_is_refused_to_a_viewer(start: Start) -> None:
    svc = start()
    full, viewer = svc.sign_in("alice", ALICE_PW).cookie(), svc.sign_in("bob", BOB_PW).cookie()
    ask = "/auth/check?need=full"
    cookie = f"{COOKIE}="
    assert svc.request("GET", ask, Cookie=cookie + full).status == 204
    assert svc.request("GET", ask, Cookie=cookie + viewer).status == 403
    assert svc.request("GET", ask).status == 401
    assert svc.request("GET", ask, X_Whaletop_Probe=PROBE).status == 204
    assert svc.check(viewer).status == 204  # the page itself: a viewer watches


def test_secure_cookie(start: Start) -> None:
    svc = start(secure_cookie=True)
    assert svc.sign_in("alice", ALICE_PW).header("Set-Cookie").endswith("; Secure")


def test_wrong_password_and_unknown_user_get_401(start: Start) -> None:
    svc = start()
    wrong = svc.sign_in("alice", "guess", "vnc.html")
    assert wrong.status == 401
    assert b"Wrong user name or password." in wrong.body
    assert b'value="vnc.html"' in wrong.body
    assert "Set-Cookie" not in wrong.headers
    unknown = svc.sign_in("mallory", ALICE_PW)
    assert unknown.status == 401
    assert b"Wrong user name or password." in unknown.body
    # A name nobody has may be a password typed in the wrong field: it is not logged.
    assert svc.sign_in(BOB_PW, "x").status == 401
    failed = svc.events("sign_in_failed")
    assert [(e["user"], e["failures"], e["client"]) for e in failed] == [
        ("alice", 1, "192.0.2.1"), (None, 2, "192.0.2.1"), (None, 3, "192.0.2.1")]
    assert all(e["level"] == "warning" for e in failed)


def test_lockout_refuses_even_the_right_password_and_only_that_address(start: Start) -> None:
    svc = start(attempts=4)
    for _ in range(3):
        assert svc.sign_in("alice", "guess").status == 401
    fourth = svc.sign_in("alice", "guess")
    assert fourth.status == 429
    right = svc.sign_in("alice", ALICE_PW)
    assert right.status == 429
    assert b"Try again in 1 minute." in right.body
    assert right.header("Retry-After") == "30"
    # nginx's auth_request would turn a 429 into a 500: /auth/check says 401, and the
    # sign-in page it leads to says how long the lock lasts.
    assert svc.check(client="192.0.2.1").status == 401
    assert svc.check(client="192.0.2.1", Authorization=basic("alice", ALICE_PW)).status == 401
    assert svc.request("GET", "/auth/session", client="192.0.2.1",
                       Authorization=basic("alice", ALICE_PW)).status == 429
    assert b"Try again in" in svc.request("GET", "/auth/signin").body
    # Another address is not affected at all.
    other = svc.sign_in("alice", ALICE_PW, client="198.51.100.7")
    assert other.status == 303
    # Nor is a session that was already open at the locked address.
    assert svc.check(other.cookie(), client="192.0.2.1").status == 204
    # The health checks are never limited.
    assert svc.check(client="192.0.2.1", X_Whaletop_Probe=PROBE).status == 204
    locked = svc.events("sign_in_locked")
    assert [(e["client"], e["seconds"], e["level"]) for e in locked] == [
        ("192.0.2.1", 30, "warning")]
    assert [e["failures"] for e in svc.events("sign_in_failed")] == [1, 2, 3, 4]


def test_lockout_ends_after_lockout_s(start: Start) -> None:
    svc = start(attempts=2, lockout_s=1)
    assert svc.sign_in("alice", "guess").status == 401
    t0 = time.monotonic()
    assert svc.sign_in("alice", "guess").status == 429
    assert time.monotonic() - t0 >= 0.25  # past half the attempts, answers come slower
    assert svc.sign_in("alice", ALICE_PW).status == 429
    wait_for(lambda: svc.sign_in("alice", ALICE_PW).status == 303, "the lockout to end",
             timeout=3)


def test_a_success_resets_the_count(start: Start) -> None:
    svc = start(attempts=2, lockout_s=30)
    assert svc.sign_in("alice", "guess").status == 401
    assert svc.sign_in("alice", ALICE_PW).status == 303
    assert svc.sign_in("alice", "guess").status == 401  # the count starts again


def test_probe_token_passes_is_never_counted_or_logged(start: Start) -> None:
    svc = start(attempts=2)
    before = len(svc.lines)
    for _ in range(5):
        r = svc.check(client="192.0.2.9", X_Whaletop_Probe=PROBE)
        assert r.status == 204
        assert r.header("X-Whaletop-Role") == "full"
    wrong = svc.check(client="192.0.2.9", X_Whaletop_Probe=PROBE[:-1] + "x")
    assert wrong.status == 401
    assert svc.request("HEAD", "/auth/check", client="", X_Whaletop_Probe=PROBE).status == 204
    time.sleep(0.1)
    assert svc.lines[before:] == []
    assert svc.sign_in("alice", ALICE_PW, client="192.0.2.9").status == 303


def test_basic_auth_works_and_counts_failures(start: Start) -> None:
    svc = start(attempts=2)
    ok = svc.check(Authorization=basic("bob", BOB_PW))
    assert ok.status == 204
    assert (ok.header("X-Whaletop-User"), ok.header("X-Whaletop-Role")) == ("bob", "viewer")
    session = svc.request("GET", "/auth/session", Authorization=basic("alice", ALICE_PW))
    assert session.json() == {"user": "alice", "role": "full"}
    assert svc.check(Authorization=basic("bob", "guess")).status == 401
    assert svc.check(Authorization="Basic !!!notbase64").status == 401
    assert svc.sign_in("bob", BOB_PW).status == 429
    assert [e["failures"] for e in svc.events("sign_in_failed")] == [1, 2]


def test_sign_out_ends_the_session_server_side(start: Start) -> None:
    svc = start()
    token = svc.sign_in("alice", ALICE_PW).cookie()
    page = svc.request("GET", "/auth/signout", Cookie=f"{COOKIE}={token}")
    assert page.status == 200
    assert b'<form method="post" action="signout">' in page.body
    assert page.header("X-Frame-Options") == "DENY"
    out = svc.request("POST", "/auth/signout", "", Cookie=f"{COOKIE}={token}",
                      Origin=f"http://{HOST}")
    assert out.status == 303
    assert out.header("Location") == "signin"
    assert out.header("Set-Cookie").startswith(f"{COOKIE}=; Path=/; Max-Age=0;")
    # The old cookie, kept by someone who copied it, no longer works.
    assert svc.check(token).status == 401
    assert svc.request("GET", "/auth/session", Cookie=f"{COOKIE}={token}").status == 401
    assert [e["user"] for e in svc.events("signed_out")] == ["alice"]


def test_sessions_survive_a_restart(start: Start, tmp_path: Path) -> None:
    svc = start()
    token = svc.sign_in("alice", ALICE_PW).cookie()
    sessions = tmp_path / "sessions.json"
    assert stat.S_IMODE(sessions.stat().st_mode) == 0o600
    assert token not in sessions.read_text()
    assert svc.stop() == 0
    assert not svc.socket.exists()
    again = start()
    assert again.check(token).status == 204


def test_a_new_password_or_role_ends_the_session(start: Start,
                                                 hashes: dict[str, str]) -> None:
    svc = start()
    alice = svc.sign_in("alice", ALICE_PW).cookie()
    bob = svc.sign_in("bob", BOB_PW).cookie()
    replace_file(svc.users_file, users_text(hashes, bob_role="full"))
    assert svc.check(bob).status == 401  # viewer -> full: sign in again
    assert svc.check(alice).status == 204
    new = {**hashes, "alice": webusers.hash_password("new password")}
    replace_file(svc.users_file, users_text(new, bob_role="full"))
    assert svc.check(alice).status == 401
    assert svc.sign_in("alice", ALICE_PW).status == 401
    assert svc.sign_in("alice", "new password").status == 303
    assert [e["count"] for e in svc.events("users_loaded")] == [2, 2, 2]


def _grants(svc: Service) -> dict[str, str]:
    path = svc.settings.parent / "grants.json"
    try:
        return dict(json.loads(path.read_text())["grants"])
    except FileNotFoundError:
        return {}


def test_the_grants_the_relay_reads_end_with_the_access(start: Start,
                                                        hashes: dict[str, str]) -> None:
    """Every grant /auth/check names is in the grants file with its role while it is
    good, and gone once signed out, demoted, removed or re-passworded: the relay closes
    the connections of a grant that is gone (vncrelay.py)."""
    svc = start()
    alice = svc.sign_in("alice", ALICE_PW).cookie()
    bob = svc.sign_in("bob", BOB_PW).cookie()
    a_grant = svc.check(alice).header("X-Whaletop-Grant")
    b_grant = svc.check(bob).header("X-Whaletop-Grant")
    basic_grant = svc.check(Authorization=basic("alice", ALICE_PW)).header("X-Whaletop-Grant")
    assert len({a_grant, b_grant, basic_grant}) == 3
    assert alice not in json.dumps(_grants(svc)), "the cookie is never written"
    wait_for(lambda: _grants(svc).get(a_grant) == "full"
             and _grants(svc).get(b_grant) == "viewer"
             and _grants(svc).get(basic_grant) == "full", "the grants published")
    # Sign-out: at once.
    assert svc.request("POST", "/auth/signout", Cookie=f"{COOKIE}={bob}").status == 303
    assert b_grant not in _grants(svc)
    # A new role (by a users file edit): within a tick of the service.
    replace_file(svc.users_file, users_text(hashes, bob_role="full"))
    wait_for(lambda: _grants(svc).get(a_grant) == "full"
             and basic_grant in _grants(svc), "alice's grants kept")
    # A new password ends her session and her Basic grant alike.
    new = {**hashes, "alice": webusers.hash_password("new password")}
    replace_file(svc.users_file, users_text(new))
    wait_for(lambda: a_grant not in _grants(svc) and basic_grant not in _grants(svc),
             "alice's grants gone with her old password")
    probe = svc.check(X_Whaletop_Probe=PROBE)
    assert probe.header("X-Whaletop-Grant") == "probe"
    assert "probe" not in _grants(svc), "the probes' grant is the relay's own to know"


def test_a_refused_users_file_keeps_the_previous_users(start: Start) -> None:
    svc = start()
    token = svc.sign_in("alice", ALICE_PW).cookie()
    replace_file(svc.users_file, "alice:$apr1$4xk3Sb2r$Xh8bIZ9zV8LC1hZ2e3Rn6/\n")
    assert svc.check(token).status == 204
    assert svc.sign_in("bob", BOB_PW).status == 303
    # The service's output is read by a thread: its line may come a moment later.
    wait_for(lambda: svc.events("users_refused"), "the refusal to be logged")
    refused = svc.events("users_refused")
    assert len(refused) == 1  # once, not at every request
    assert refused[0]["level"] == "error"
    assert "line 1: user 'alice': $apr1$ (Apache MD5) hashes are weak" in str(
        refused[0]["reason"])
    assert "Xh8bIZ9z" not in str(refused[0]["reason"])
    svc.users_file.unlink()
    assert svc.check(token).status == 204
    wait_for(lambda: len(svc.events("users_refused")) >= 2, "the second refusal")
    assert len(svc.events("users_refused")) == 2


@pytest.mark.parametrize(("value", "kept"), [
    ("vnc.html?a=1&b=2", True),
    ("vnc.html?autoconnect=1&path=websockify#x", True),
    ("", True),
    ("a/b/c.html", True),
    ("//evil.com", False),
    ("///evil.com", False),
    ("a//b", False),
    ("http://x", False),
    ("javascript:alert(1)", False),
    ("HTTPS:evil.com", False),
    ("/abs", False),
    ("\\x", False),
    ("\\\\evil.com", False),
    ("a\\b", False),
    ("a b", False),
    ("a\r\nSet-Cookie: x=1", False),
    ("<script>", False),
    ("x" * 2049, False),
])
def test_next_sanitizer(value: str, kept: bool) -> None:
    assert webauth.safe_next(value) == (value if kept else "")


@pytest.mark.parametrize(("original", "location"), [
    ("/vnc.html?autoconnect=1&resize=remote",
     "auth/signin?next=vnc.html%3Fautoconnect%3D1%26resize%3Dremote"),
    ("/", "auth/signin?next="),
    ("/app/deep/page", "../../auth/signin?next=app%2Fdeep%2Fpage"),
    ("/auth/redirect", "../auth/signin?next="),
    (None, "signin?next="),
])
def test_redirect_to_the_sign_in_page_is_relative(original: str | None,
                                                  location: str) -> None:
    assert webauth.redirect_location(original) == location
    # A browser at `original` lands on /auth/signin, under any prefix.
    base = "http://h/prefix" + (original or "/auth/redirect")
    assert urljoin(base, location).startswith("http://h/prefix/auth/signin?next=")


def test_redirect_endpoint(start: Start) -> None:
    svc = start()
    headers = {"X_Original_URI": "/vnc.html?autoconnect=1"}
    r = svc.request("GET", "/auth/redirect", **headers)
    assert r.status == 302
    assert r.header("Location") == "auth/signin?next=vnc.html%3Fautoconnect%3D1"
    page = svc.request("GET", "/auth/signin?next=vnc.html%3Fautoconnect%3D1")
    assert b'value="vnc.html?autoconnect=1"' in page.body
    hostile = svc.sign_in("alice", ALICE_PW, "//evil.com")
    assert hostile.header("Location") == "../"


@pytest.mark.parametrize(("origin", "host", "scheme", "same"), [
    (None, HOST, "http", True),
    ("http://localhost:8080", "localhost:8080", "http", True),
    ("https://Desk.Example.com", "desk.example.com", "https", True),
    ("https://desk.example.com", "desk.example.com:443", "https", True),
    ("http://localhost:8081", "localhost:8080", "http", False),
    ("http://evil.com:8080", "localhost:8080", "http", False),
    ("null", "localhost:8080", "http", False),
    ("http://localhost:8080", None, "http", False),
    # The other scheme is another origin, the same host and port or not.
    ("http://desk.example.com", "desk.example.com", "https", False),
    ("http://localhost:8080", "localhost:8080", "https", False),
    ("https://localhost:8080", "localhost:8080", "http", False),
])
def test_same_origin(origin: str | None, host: str | None, scheme: str, same: bool) -> None:
    assert webauth.same_origin(origin, host, scheme) is same


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_form_from_the_other_scheme_is_refused(start: Start, tls: bool) -> None:
    """nginx tells the service which scheme the browser used (X-Forwarded-Proto); without
    the header, the one the desktop serves (its Secure cookie says TLS)."""
    svc = start(secure_cookie=tls)
    scheme, other = ("https", "http") if tls else ("http", "https")
    for told in ({"X_Forwarded_Proto": scheme}, {}):
        assert svc.sign_in("alice", ALICE_PW, Origin=f"{other}://{HOST}",
                           **told).status == 403
        token = svc.sign_in("alice", ALICE_PW, Origin=f"{scheme}://{HOST}", **told).cookie()
        out = svc.request("POST", "/auth/signout", "", Cookie=f"{COOKIE}={token}",
                          Origin=f"{other}://{HOST}", **told)
        assert out.status == 403
        assert svc.check(token).status == 204, "still signed in"


def test_cross_site_posts_are_refused(start: Start) -> None:
    svc = start()
    token = svc.sign_in("alice", ALICE_PW, Origin=f"http://{HOST}").cookie()
    assert svc.sign_in("alice", ALICE_PW, Origin="http://evil.com:8080").status == 403
    out = svc.request("POST", "/auth/signout", "", Cookie=f"{COOKIE}={token}",
                      Origin="http://evil.com:8080")
    assert out.status == 403
    assert svc.check(token).status == 204


def test_socket_is_private_and_a_stale_one_is_replaced(start: Start, tmp_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "auth.sock"))
    stale.close()  # the file stays, nobody listens
    svc = start()
    assert stat.S_IMODE(svc.socket.stat().st_mode) == 0o600
    assert svc.check(X_Whaletop_Probe=PROBE).status == 204


def test_bad_requests(start: Start) -> None:
    svc = start()
    big = svc.request("POST", "/auth/signin", "x=" + "a" * webauth.MAX_BODY,
                      Content_Type="application/x-www-form-urlencoded")
    assert big.status == 413
    assert svc.request("GET", "/nope").status == 404
    assert svc.request("DELETE", "/auth/signin").status == 405
    # auth_request may pass the original method and body on: still answered.
    assert svc.request("POST", "/auth/check", "body", X_Whaletop_Probe=PROBE).status == 204
    assert svc.sign_in("", "").status == 401


def test_settings_refused_exit_2(tmp_path: Path) -> None:
    settings = tmp_path / "auth.json"
    settings.write_text(json.dumps({"users_file": "u", "probe_token": "short"}))
    proc = subprocess.run(
        [sys.executable, "-m", "whaletopd.webauth", "--socket", str(tmp_path / "s"),
         "--settings", str(settings)],
        cwd=ROOT, capture_output=True, text=True, timeout=WAIT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert (doc["event"], doc["level"]) == ("webauth_failed", "error")
