"""Files in and out (filedav.py) on the real image, through the front door on
127.0.0.1:8080: 1 GiB up and down byte-identical, bad names, missing credentials,
viewers, --max-upload and --no-file-transfer refused; an upload shows on LXDE's desktop;
a file Chromium inside saved is offered by the page's Files panel."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops

from . import browser, vnc
from .conftest import Container, wait_until
from .test_front_door import PASSWORDS, submit, users_text

HOST, PORT = "127.0.0.1", 8080
GIB = 1024**3
CHUNK = 1024**2
HOME = "/home/user"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def request(method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, PORT, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def put_stream(path: str, size: int, headers: dict[str, str]) -> tuple[int, str]:
    """PUT `size` random bytes, streamed (never all in memory); (status, their sha256)."""
    digest = hashlib.sha256()

    def chunks() -> Any:
        left = size
        while left:
            block = os.urandom(min(CHUNK, left))
            digest.update(block)
            left -= len(block)
            yield block

    conn = http.client.HTTPConnection(HOST, PORT, timeout=300)
    try:
        conn.request("PUT", path, body=chunks(),
                     headers={**headers, "Content-Length": str(size)})
        r = conn.getresponse()
        r.read()
        return r.status, digest.hexdigest()
    finally:
        conn.close()


def get_stream(path: str, headers: dict[str, str]) -> tuple[int, int, str]:
    """GET, hashed as it comes: (status, bytes, sha256)."""
    digest = hashlib.sha256()
    count = 0
    conn = http.client.HTTPConnection(HOST, PORT, timeout=300)
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        while block := r.read(CHUNK):
            digest.update(block)
            count += len(block)
        return r.status, count, digest.hexdigest()
    finally:
        conn.close()


def sha256_in(c: Container, path: str) -> str:
    return c.exec("sha256sum", path).stdout.split()[0]


def exists_in(c: Container, path: str) -> bool:
    return c.exec("test", "-e", path, check=False).returncode == 0


def refusals(c: Container) -> list[dict[str, Any]]:
    return [e for e in c.log_lines() if e.get("event") == "request" and e.get("refused")]


def test_default_mode_1_gib_up_and_down_and_every_refusal(desktop: Any) -> None:
    c: Container = desktop()
    c.wait_status("HEALTHY")
    auth = basic("user", c.password())
    # Provisioning made the folders, the desktop user's.
    owners = c.exec("stat", "-c", "%U %F", f"{HOME}/Desktop", f"{HOME}/Downloads").stdout
    assert owners.splitlines() == ["user directory", "user directory"]
    assert c.status_json()["children"]["files"]["pid"] > 0

    # 1 GiB up: byte-identical, the desktop user's, no temporary file left.
    status, sent = put_stream("/files/Desktop/big.bin", GIB, auth)
    assert status == 201
    assert sha256_in(c, f"{HOME}/Desktop/big.bin") == sent
    assert c.exec("stat", "-c", "%U %s", f"{HOME}/Desktop/big.bin").stdout.split() == [
        "user", str(GIB)]
    assert c.exec("find", f"{HOME}/.cache/whaletop-uploads", "-type", "f").stdout == ""
    # ... and down again from ~/Downloads.
    c.exec("mv", f"{HOME}/Desktop/big.bin", f"{HOME}/Downloads/big.bin", user="user")
    status, count, got = get_stream("/files/Downloads/big.bin", auth)
    assert (status, count, got) == (200, GIB, sent)
    listing = request("GET", "/files/Downloads/", auth)
    assert listing[0] == 200
    assert [(e["name"], e["size"]) for e in json.loads(listing[2])] == [("big.bin", GIB)]
    c.exec("rm", f"{HOME}/Downloads/big.bin")

    # No or wrong credentials; the view-only password is not the VNC password.
    for headers in ({}, basic("user", "wrong-pw1"), basic("root", c.password())):
        assert request("PUT", "/files/Desktop/x", headers, b"x")[0] == 401
    # Each bad name: 400, nothing written.
    for name in ("a%2Fb", "..", "%2e%2e", "a%00b", "a%0Ab", "a%1Bb", "../.bashrc",
                 "sub/x"):
        status = request("PUT", f"/files/Desktop/{name}", auth, b"bad")[0]
        assert status == 400, name
    assert c.exec("ls", "-A", f"{HOME}/Desktop").stdout == ""
    # A link out of the folder is not followed.
    c.exec("ln", "-s", f"{HOME}/.bashrc", f"{HOME}/Downloads/rc", user="user")
    assert request("GET", "/files/Downloads/rc", auth)[0] == 403
    # Each refusal is one warning line saying why (nginx's lines pass through whaletopd).
    # (an encoded NUL is refused by nginx's parser before any location: no reason)
    wait_until(lambda: len(refusals(c)) == 3 + 7 + 1,
               f"a line for each refusal: {refusals(c)}")
    lines = refusals(c)
    reasons = {e["status"]: e["refused"] for e in lines}
    assert reasons[401] == "no or wrong credentials"
    assert reasons[400].startswith("bad file name")
    assert "link" in reasons[403]
    assert all(e["level"] == "warning" for e in lines)

    # An interrupted upload leaves no file under its name (nor a temporary one).
    with socket.create_connection((HOST, PORT), timeout=30) as sock:
        head = (f"PUT /files/Desktop/half.bin HTTP/1.1\r\nHost: {HOST}\r\n"
                f"Authorization: {auth['Authorization']}\r\nContent-Length: {GIB}\r\n\r\n")
        sock.sendall(head.encode() + os.urandom(8 * CHUNK))
        wait_until(lambda: c.exec("find", f"{HOME}/.cache/whaletop-uploads", "-type", "f")
                   .stdout != "", "the upload's temporary file")
    wait_until(lambda: c.exec("find", f"{HOME}/.cache/whaletop-uploads", "-type", "f")
               .stdout == "", "the temporary file removed")
    assert not exists_in(c, f"{HOME}/Desktop/half.bin")


def test_sign_in_viewers_and_max_upload(desktop: Any, tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.mkdir()
    (users / "users").write_text(users_text(alice="full", bob="viewer"))
    c: Container = desktop("--web-users=/users/users", "--max-upload=1M",
                           volumes=(f"{users}:/users:ro",))
    c.wait_status("HEALTHY")
    alice, bob = basic("alice", PASSWORDS["alice"]), basic("bob", PASSWORDS["bob"])
    assert request("PUT", "/files/Desktop/a.txt", alice, b"from alice")[0] == 201
    assert c.exec("cat", f"{HOME}/Desktop/a.txt").stdout == "from alice"
    # A viewer (watch-only) is refused both ways; no one without credentials.
    assert request("PUT", "/files/Desktop/b.txt", bob, b"from bob")[0] == 403
    assert request("GET", "/files/Downloads/", bob)[0] == 403
    assert request("PUT", "/files/Desktop/c.txt", {}, b"anyone")[0] == 401
    assert not exists_in(c, f"{HOME}/Desktop/b.txt")
    assert not exists_in(c, f"{HOME}/Desktop/c.txt")
    # Over --max-upload: 413 and no file.
    assert request("PUT", "/files/Desktop/big", alice, b"x" * (CHUNK + 1))[0] == 413
    assert not exists_in(c, f"{HOME}/Desktop/big")
    reasons = {(e["status"], e["user"]): e["refused"] for e in refusals(c)}
    assert reasons[(403, "bob")].startswith("watch-only")
    # (refused from its Content-Length, before anyone is asked who they are)
    assert reasons[(413, "")] == "larger than --max-upload"
    # In the page: alice uploads with her session (no password sent), bob has no Files.
    for name, files_shown in (("alice", True), ("bob", False)):
        (tmp_path / name).mkdir()
        with browser.browser(tmp_path / name) as page:
            page.goto(f"http://{HOST}:{PORT}/")
            submit(page, name, PASSWORDS[name])
            page.wait_for_url("**/vnc.html*")
            page.wait_for_selector("html[data-whaletop-files]", state="attached")
            decided = page.get_attribute("html", "data-whaletop-files")
            assert decided == ("on" if files_shown else "viewer")
            if files_shown:
                page.wait_for_selector("#whaletop_files_button").click()
                note = tmp_path / "from-alice.txt"
                note.write_text("signed in\n")
                page.set_input_files("#whaletop_files_picker", str(note))
                page.wait_for_selector('.whaletop-upload[data-state="done"]')
                assert c.exec("cat", f"{HOME}/Desktop/from-alice.txt").stdout == "signed in\n"
            else:
                assert page.locator("#whaletop_files_button").count() == 0
    # The about document says sign-in and the limit; no user name.
    about = json.loads(request("GET", "/files/")[2])
    assert about == {"upload": "Desktop/", "download": "Downloads/", "max_upload": CHUNK,
                     "auth": "sign-in"}


def test_no_file_transfer_is_404(desktop: Any) -> None:
    c: Container = desktop("--no-file-transfer")
    c.wait_status("HEALTHY")
    password = c.password()
    for method, path in (("PUT", "/files/Desktop/x"), ("GET", "/files/Downloads/"),
                         ("GET", "/files/")):
        assert request(method, path, basic("user", password),
                       b"x" if method == "PUT" else None)[0] == 404
    assert "files" not in c.status_json()["children"]
    assert not exists_in(c, f"{HOME}/Desktop/x")


def _changed(before: Path, after: Path, box: tuple[int, int, int, int]) -> bool:
    with Image.open(before) as a, Image.open(after) as b:
        diff = ImageChops.difference(a.convert("RGB").crop(box), b.convert("RGB").crop(box))
        return diff.getbbox() is not None


def _free_port() -> int:
    with socket.create_server((HOST, 0)) as s:
        return int(s.getsockname()[1])


SERVE_ONE_FILE = r"""
import http.server, sys
port, folder = int(sys.argv[1]), sys.argv[2]
handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=folder)
http.server.ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()
"""


def test_the_page_uploads_to_the_desktop_and_offers_chromium_s_downloads(
        desktop: Any, tmp_path: Path) -> None:
    c: Container = desktop()
    c.wait_status("HEALTHY")
    with browser.browser(tmp_path) as page:
        browser.log_in(page, f"http://{HOST}:{PORT}/", c.password())
        before = browser.artifact("files-before-upload.png")
        wait_until(lambda: page.screenshot(path=str(before)) is not None
                   and vnc.looks_drawn(before), "the desktop drawn in the browser", timeout=60)
        # Upload with the Files panel's picker: a progress row, then "on the desktop".
        note = tmp_path / "whaletop-notes.txt"
        note.write_text("dropped in from the browser\n")
        page.click("#whaletop_files_button")
        page.set_input_files("#whaletop_files_picker", str(note))
        page.wait_for_selector('.whaletop-upload[data-state="done"]', timeout=30000)
        assert c.exec("cat", f"{HOME}/Desktop/whaletop-notes.txt").stdout == note.read_text()
        page.click("#whaletop_files_button")  # the panel away, for the picture
        # Dropped on the page: the same, for each file dropped.
        dropped = page.evaluate_handle("""() => {
            const dt = new DataTransfer();
            dt.items.add(new File(["one\\n"], "dropped-1.txt"));
            dt.items.add(new File(["two\\n"], "dropped-2.txt"));
            return dt;
        }""")
        page.dispatch_event("#noVNC_container", "drop", {"dataTransfer": dropped})
        wait_until(lambda: c.exec("cat", f"{HOME}/Desktop/dropped-1.txt",
                                  f"{HOME}/Desktop/dropped-2.txt", check=False).stdout
                   == "one\ntwo\n", "both dropped files on the desktop")
        # LXDE's desktop (pcmanfm) shows the new file's icon at once: the top left of
        # the screen, where its icons go, changes.
        shot = browser.artifact("files-on-desktop.png")
        wait_until(lambda: page.screenshot(path=str(shot)) is not None
                   and _changed(before, shot, (0, 0, 300, 300)),
                   "the file's icon on the desktop", timeout=30)

        # Chromium inside saves a file into ~/Downloads...
        folder = "/tmp/served"
        c.exec("mkdir", "-p", folder)
        c.exec("sh", "-c", f"head -c 100000 /dev/urandom > {folder}/report-42.bin")
        port = _free_port()
        c.exec("sh", "-c", f"python3 -c '{SERVE_ONE_FILE}' {port} {folder} "
               ">/dev/null 2>&1 &")
        wait_until(lambda: c.exec("python3", "-c", "import socket; socket.create_connection("
                                  f"('127.0.0.1', {port}), 1)", check=False).returncode == 0,
                   "the file's server inside")
        c.exec("sh", "-c", "DISPLAY=:1 HOME=/home/user chromium --no-first-run "
               f"http://127.0.0.1:{port}/report-42.bin >/dev/null 2>&1 &", user="user")
        wait_until(lambda: exists_in(c, f"{HOME}/Downloads/report-42.bin"),
                   "Chromium inside to save the file in ~/Downloads", timeout=90)
        inside = sha256_in(c, f"{HOME}/Downloads/report-42.bin")
        # ... and the Files panel offers it: one click downloads it.
        page.click("#whaletop_files_button")
        link = page.wait_for_selector('a.whaletop-file[data-name="report-42.bin"]',
                                      timeout=30000)
        assert link is not None
        page.screenshot(path=str(browser.artifact("files-panel.png")))
        with page.expect_download() as info:
            link.click()
        saved = tmp_path / "report-42.bin"
        info.value.save_as(str(saved))
        assert hashlib.sha256(saved.read_bytes()).hexdigest() == inside


def test_without_root_in_an_existing_home(desktop: Any, tmp_path: Path) -> None:
    """--user 1000:1000 (no root anywhere): the file server is the container's uid, like
    everything; a home that has ~/Downloads keeps it and what it holds."""
    home = tmp_path / "home"
    (home / "Downloads").mkdir(parents=True)
    (home / "Downloads" / "kept.txt").write_text("from before\n")
    for path in (home, home / "Downloads", home / "Downloads" / "kept.txt"):
        os.chown(path, 1000, 1000)
    c: Container = desktop(volumes=(f"{home}:/home/user",), extra=("--user", "1000:1000"))
    c.wait_status("HEALTHY")
    auth = basic("user", c.password())
    assert request("PUT", "/files/Desktop/hi.txt", auth, b"hello\n")[0] == 201
    st = (home / "Desktop" / "hi.txt").stat()
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert (home / "Desktop" / "hi.txt").read_bytes() == b"hello\n"
    listing = request("GET", "/files/Downloads/", auth)
    assert [e["name"] for e in json.loads(listing[2])] == ["kept.txt"]
    assert request("GET", "/files/Downloads/kept.txt", auth)[2] == b"from before\n"


def test_a_killed_file_server_is_restarted(desktop: Any) -> None:
    """kill -9 leaves its socket behind: the restarted one removes it and serves again;
    the desktop stays HEALTHY."""
    c: Container = desktop()
    c.wait_status("HEALTHY")
    auth = basic("user", c.password())
    pid = c.status_json()["children"]["files"]["pid"]
    c.exec("kill", "-9", str(pid))
    wait_until(lambda: c.status_json()["children"]["files"]["pid"] != pid
               and c.status_json()["children"]["files"]["running"], "a new file server")
    wait_until(lambda: request("PUT", "/files/Desktop/again.txt", auth, b"again")[0] == 201,
               "uploads served again")
    assert c.exec("cat", f"{HOME}/Desktop/again.txt").stdout == "again"
    assert c.status() == "HEALTHY\n"
