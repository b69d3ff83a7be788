"""File transfer (filedav.py and nginx_conf._files) as nginx itself runs it: the front
door from render() and the desktop user's file server from filedav.render(), both real
nginx processes in a temporary prefix, in the default mode (HTTP Basic with the VNC
password, checked by nginx against the hashed file filedav.prepare writes).

As root (the container's case) the file server runs as nobody and the front's workers
as www-data: an upload must be the desktop user's file, and each must reach the other's
socket.  The tests talk to 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from whaletopd import filedav, nginx_conf
from whaletopd.children import RunAs
from whaletopd.config import Config, ConfigError, parse
from whaletopd.paths import Paths

from .. import tools
from .helpers import wait_for

NGINX = tools.NGINX.path
needs_nginx = tools.NGINX.needed
PASSWORD = "vnc-s3cret"
ROOT = os.geteuid() == 0
WORKER = "www-data" if ROOT else None
TOKEN = "0123456789abcdef0123456789abcdef"


# -- configuration ---------------------------------------------------------------------

@pytest.mark.parametrize(("given", "size"), [
    ("2G", 2 * 1024**3), ("500M", 500 * 1024**2), ("64k", 64 * 1024), ("1", 1),
    (" 3g ", 3 * 1024**3), ("1024G", 1024**4)])
def test_max_upload_takes_a_size(given: str, size: int) -> None:
    assert parse(["--max-upload", given], {}).max_upload_bytes == size
    assert parse([], {"WHALETOP_MAX_UPLOAD": given}).max_upload_bytes == size


def test_max_upload_is_2_gib_and_file_transfer_on_by_default() -> None:
    config = parse([], {})
    assert config.max_upload_bytes == 2 * 1024**3
    assert config.file_transfer


@pytest.mark.parametrize("given", ["", "0", "2T", "1.5G", "-1", "2 G", "1025G", "G",
                                   "\uff12G", "2GB", "1e9"])
def test_a_bad_max_upload_is_refused_naming_the_flag(given: str) -> None:
    with pytest.raises(ConfigError, match=r"^--max-upload: "):
        parse(["--max-upload", given], {})


def test_no_file_transfer_from_flag_and_env() -> None:
    assert not parse(["--no-file-transfer"], {}).file_transfer
    assert not parse([], {"WHALETOP_NO_FILE_TRANSFER": "yes"}).file_transfer


def _paths(base: Path) -> Paths:
    return Paths(state_dir=base / "state", run_dir=base / "run", tmpfs_dir=base / "shm",
                 x11_socket_dir=base / "x11", x_lock_dir=base / "xlock",
                 home_root=base / "home", sudoers_file=base / "sudoers",
                 novnc_dir=base / "novnc", apps_root=base / "Apps",
                 applications_dir=base / "applications")


def test_the_file_server_serves_only_the_two_folders(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    conf = filedav.render(Config(max_upload="500M"), paths, Path("/home/ann"))
    assert f"client_max_body_size {500 * 1024**2};" in conf
    assert "client_body_temp_path /home/ann/.cache/whaletop-uploads;" in conf
    assert "alias /home/ann/Desktop/;" in conf
    assert "alias /home/ann/Downloads/;" in conf
    assert "create_full_put_path off;" in conf
    assert "disable_symlinks on;" in conf
    assert "dav_methods PUT;" in conf
    assert "MKCOL" not in conf
    assert "DELETE" not in conf
    assert f"listen unix:{filedav.socket_path(paths)};" in conf
    assert "listen 80" not in conf
    assert "user " not in conf


@pytest.mark.parametrize("home", ["/home/a b", "/home/x;y", '/home/"q', "/home/a\nb",
                                  "/home/$x"])
def test_a_home_nginx_cannot_hold_is_refused(tmp_path: Path, home: str) -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        filedav.render(Config(), _paths(tmp_path), Path(home))


def test_without_file_transfer_files_is_404_and_no_upstream(tmp_path: Path) -> None:
    conf = nginx_conf.render(Config(no_file_transfer=True), _paths(tmp_path),
                             nginx_conf.FrontDoorSpec(probe_token=TOKEN))
    assert "whaletop_files" not in conf
    assert "location ^~ /files/ {\n            return 404;" in conf


def test_sign_in_asks_the_sign_in_service_and_passes_the_role(tmp_path: Path) -> None:
    conf = nginx_conf.render(Config(web_users="/data/users"), _paths(tmp_path),
                             nginx_conf.FrontDoorSpec(probe_token=TOKEN))
    files = conf[conf.index("location ^~ /files/"):]
    assert "auth_request /auth/check;" in files
    assert "auth_basic" not in conf
    assert "auth_request_set $whaletop_files_role $upstream_http_x_whaletop_role;" in files
    assert "proxy_set_header X-Whaletop-Role $whaletop_files_role;" in files
    assert 'proxy_set_header Authorization "";' in files
    assert 'proxy_set_header Cookie "";' in files


# -- nginx running both ------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Files:
    paths: Paths
    config: Config
    home: Path
    desktop: RunAs
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    access: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def request(self, method: str, path: str, body: bytes | None = None,
                password: str | None = PASSWORD, user: str = "user",
                headers: Mapping[str, str] | None = None) -> Answer:
        sent = dict(headers or {})
        if password is not None:
            creds = base64.b64encode(f"{user}:{password}".encode()).decode()
            sent["Authorization"] = f"Basic {creds}"
        conn = http.client.HTTPConnection("127.0.0.1", self.config.web_port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()},
                          response.read())
        finally:
            conn.close()

    def logged(self, path: str) -> dict[str, Any]:
        """The front's one access log line for `path` (the path as sent)."""
        def lines() -> list[dict[str, Any]]:
            return [d for d in map(json.loads, list(self.access)) if d["path"] == path]
        wait_for(lines, f"the log line of {path} in {self.access}")
        found = lines()
        assert len(found) == 1, found
        return found[0]


def _pump(stream: Any, into: list[str]) -> None:
    for raw in stream:
        into.append(raw.decode(errors="replace").rstrip("\n"))


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


StartFiles = Callable[..., Files]


@pytest.fixture
def start() -> Iterator[StartFiles]:
    started: list[Files] = []
    base = Path(tempfile.mkdtemp(prefix="whaletop-files-"))
    base.chmod(0o755)

    def start(**kwargs: Any) -> Files:
        assert NGINX is not None
        config = Config(**{"web_port": _free_port(), **kwargs})
        paths = _paths(base)
        if ROOT:
            nobody = pwd.getpwnam("nobody")
            desktop = RunAs(nobody.pw_uid, nobody.pw_gid, (), str(base / "home" / "user"))
            www = pwd.getpwnam("www-data")
            web: RunAs | None = RunAs(www.pw_uid, www.pw_gid, (), "/")
        else:
            desktop = RunAs(os.getuid(), os.getgid(), (), str(base / "home" / "user"))
            web = None
        home = Path(desktop.home)
        for folder in (paths.run_dir, paths.desktop_dir, paths.nginx_dir,
                       paths.nginx_dir / "tmp", paths.probe_dir, paths.novnc_dir, home):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o755)
        if ROOT:
            for folder in (paths.desktop_dir, home):
                os.chown(folder, desktop.uid, desktop.gid)
            assert web is not None
            os.chown(paths.nginx_dir / "tmp", web.uid, web.gid)
        filedav.prepare(config, paths, desktop, web, PASSWORD)
        spec = nginx_conf.FrontDoorSpec(probe_token=TOKEN, worker_user=WORKER)
        paths.nginx_conf.write_text(nginx_conf.render(config, paths, spec))
        # A second front in the same folders takes the health checks' socket over, as
        # nginx_argv does for a restarted one.
        paths.probe_socket.unlink(missing_ok=True)
        files = Files(paths, config, home, desktop)
        started.append(files)
        commands: list[tuple[list[str], int | None]] = [
            ([NGINX, "-c", str(paths.nginx_conf), "-p", str(paths.nginx_dir),
              "-e", "stderr"], None)]
        if config.file_transfer:
            prefix = filedav.files_dir(paths)
            commands.append(([NGINX, "-c", str(filedav.conf_path(paths)), "-p", str(prefix),
                              "-e", "stderr"], desktop.uid if ROOT else None))
        for argv, uid in commands:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True,
                                    user=uid, group=desktop.gid if uid is not None else None,
                                    extra_groups=[] if uid is not None else None)
            files.procs.append(proc)
            for stream, into in ((proc.stdout, files.access), (proc.stderr, files.errors)):
                threading.Thread(target=_pump, args=(stream, into), daemon=True).start()

        def up() -> bool:
            for proc in files.procs:
                assert proc.poll() is None, f"nginx exited: {files.errors}"
            if config.file_transfer and not filedav.socket_path(paths).exists():
                return False
            try:
                socket.create_connection(("127.0.0.1", config.web_port), timeout=1).close()
            except OSError:
                return False
            return True

        wait_for(up, "both nginx to listen")
        return files

    yield start
    for files in started:
        for proc in files.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    shutil.rmtree(base, ignore_errors=True)


@needs_nginx
def test_upload_list_download(start: StartFiles) -> None:
    files = start()
    data = os.urandom(300_000)
    put = files.request("PUT", "/files/Desktop/report%20%C3%A9t%C3%A9.bin", data)
    assert put.status == 201, (put, files.errors)
    landed = files.home / "Desktop" / "report été.bin"
    assert landed.read_bytes() == data
    st = landed.stat()
    assert (st.st_uid, st.st_gid) == (files.desktop.uid, files.desktop.gid)
    assert st.st_mode & 0o777 == 0o644
    assert files.logged("/files/Desktop/report%20%C3%A9t%C3%A9.bin")["refused"] == ""
    again = files.request("PUT", "/files/Desktop/report%20%C3%A9t%C3%A9.bin", b"new")
    assert again.status == 204
    assert landed.read_bytes() == b"new"

    (files.home / "Downloads" / "out.pdf").write_bytes(b"%PDF-1.4 data")
    listing = files.request("GET", "/files/Downloads/")
    assert listing.status == 200
    assert listing.headers["content-type"].startswith("application/json")
    names = [e["name"] for e in json.loads(listing.body)]
    assert names == ["out.pdf"]
    got = files.request("GET", "/files/Downloads/out.pdf")
    assert got.status == 200
    assert got.body == b"%PDF-1.4 data"
    assert got.headers["content-disposition"] == "attachment"
    assert got.headers["cache-control"] == "no-store"


@needs_nginx
def test_home_folders_are_made_for_the_desktop_user(start: StartFiles) -> None:
    files = start()
    for name in ("Desktop", "Downloads", ".cache"):
        st = (files.home / name).stat()
        assert (st.st_uid, st.st_gid) == (files.desktop.uid, files.desktop.gid), name
    assert (files.home / ".cache").stat().st_mode & 0o777 == 0o700


def test_an_existing_link_in_place_of_a_folder_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "Desktop").symlink_to(tmp_path / "elsewhere")
    made = filedav.ensure_folders(tmp_path, None)
    assert made == ["Downloads", ".cache"]
    assert (tmp_path / "Desktop").is_symlink()


@needs_nginx
def test_the_page_learns_the_limit_and_the_auth_without_credentials(
        start: StartFiles) -> None:
    files = start(max_upload="5M")
    about = files.request("GET", "/files/", password=None)
    assert about.status == 200
    assert json.loads(about.body) == {"upload": "Desktop/", "download": "Downloads/",
                                      "max_upload": 5 * 1024**2, "auth": "vnc-password",
                                      "user": "user"}


@needs_nginx
@pytest.mark.parametrize(("path", "status"), [
    ("/files/Desktop/a%2Fb", 400),
    ("/files/Desktop/a%2fb", 400),
    ("/files/Desktop/..", 400),
    ("/files/Desktop/%2e%2e", 400),
    ("/files/Desktop/.", 400),
    ("/files/Desktop/../.bashrc", 400),
    ("/files/Desktop/../../etc/passwd", 400),
    ("/files/Desktop/a%00b", 400),
    ("/files/Desktop/a%0Ab", 400),
    ("/files/Desktop/a%1bb", 400),
    ("/files/Desktop/a%7Fb", 400),
    ("/files/Desktop/sub/x", 400),
    ("/files/Desktop/", 400),
    ("/files/Documents/x", 404),
    ("/files/Downloads/x", 405),
])
def test_bad_names_are_refused_with_a_reason(start: StartFiles, path: str,
                                             status: int) -> None:
    files = start()
    answer = files.request("PUT", path, b"data")
    assert answer.status == status, (answer, files.errors)
    if "%00" in path:
        # nginx's own parser refuses an encoded NUL before any location: its 400 line
        # has no path (nginx could not read one).
        wait_for(lambda: any(json.loads(line)["status"] == 400 for line in files.access),
                 "the 400's log line")
    else:
        line = files.logged(path)
        assert line["status"] == status
        assert line["level"] == "warning"
        assert line["refused"]
    assert sorted(p.name for p in (files.home / "Desktop").iterdir()) == []
    assert not (files.home / ".bashrc").exists()


@needs_nginx
@pytest.mark.parametrize(("password", "user"), [(None, "user"), ("wrong-pass", "user"),
                                                (PASSWORD, "someone")])
def test_without_the_vnc_password_nothing_passes(start: StartFiles, password: str | None,
                                                 user: str) -> None:
    files = start()
    for method, path in (("PUT", "/files/Desktop/x"), ("GET", "/files/Downloads/")):
        answer = files.request(method, path, b"x" if method == "PUT" else None,
                               password=password, user=user)
        assert answer.status == 401
        assert answer.headers["www-authenticate"].startswith("Basic ")
        line = files.logged(path)
        assert line["refused"] == "no or wrong credentials"
        assert line["user"] == ""
    assert not (files.home / "Desktop" / "x").exists()


@needs_nginx
def test_the_client_cannot_claim_a_role(start: StartFiles) -> None:
    """The front sets X-Whaletop-Role itself; a client's is never passed on, and the
    file server refuses a request without it."""
    files = start()
    answer = files.request("PUT", "/files/Desktop/x", b"x", password=None,
                           headers={"X-Whaletop-Role": "full"})
    assert answer.status == 401
    conn = http.client.HTTPConnection("localhost")
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.connect(str(filedav.socket_path(files.paths)))
    conn.request("PUT", "/files/Desktop/y", body=b"y")
    assert conn.getresponse().status == 403
    conn.close()


@needs_nginx
def test_a_file_over_max_upload_is_refused_and_leaves_nothing(start: StartFiles) -> None:
    files = start(max_upload="1M")
    answer = files.request("PUT", "/files/Desktop/big", os.urandom(1024**2 + 1))
    assert answer.status == 413
    assert files.logged("/files/Desktop/big")["refused"] == "larger than --max-upload"
    assert not (files.home / "Desktop" / "big").exists()
    assert files.request("PUT", "/files/Desktop/fits", b"x" * 1024**2).status == 201


@needs_nginx
def test_an_interrupted_upload_leaves_no_file(start: StartFiles) -> None:
    files = start()
    sock = socket.create_connection(("127.0.0.1", files.config.web_port), timeout=10)
    creds = base64.b64encode(f"user:{PASSWORD}".encode()).decode()
    sock.sendall((f"PUT /files/Desktop/half HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Basic {creds}\r\nContent-Length: 10000000\r\n\r\n"
                  ).encode() + os.urandom(2_000_000))
    temp = files.home / ".cache" / "whaletop-uploads"
    wait_for(lambda: temp.exists() and any(p.is_file() for p in temp.rglob("*")),
             "the upload's temporary file")
    sock.close()
    files.logged("/files/Desktop/half")
    wait_for(lambda: not any(p.is_file() for p in temp.rglob("*")),
             "the temporary file to go")
    assert not (files.home / "Desktop" / "half").exists()


@needs_nginx
def test_links_are_not_followed(start: StartFiles) -> None:
    files = start()
    secret = files.home / "secret"
    secret.write_text("private")
    (files.home / "Downloads" / "link").symlink_to(secret)
    answer = files.request("GET", "/files/Downloads/link")
    assert answer.status == 403
    assert b"private" not in answer.body
    assert "link" in files.logged("/files/Downloads/link")["refused"]


@needs_nginx
@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/files/Desktop/x"), ("DELETE", "/files/Desktop/x"),
    ("MKCOL", "/files/Desktop/x"), ("DELETE", "/files/Downloads/x"),
    ("PUT", "/files/Downloads/"), ("POST", "/files/Downloads/x")])
def test_other_methods_are_refused(start: StartFiles, method: str, path: str) -> None:
    files = start()
    (files.home / "Desktop" / "x").write_text("kept")
    (files.home / "Downloads" / "x").write_text("kept")
    assert files.request(method, path).status == 405
    assert (files.home / "Desktop" / "x").read_text() == "kept"
    assert (files.home / "Downloads" / "x").read_text() == "kept"


@needs_nginx
def test_no_file_transfer_is_404(start: StartFiles) -> None:
    files = start()
    assert filedav.htpasswd_path(files.paths).exists()
    off = start(no_file_transfer=True)
    # The credentials stay: the page's keyboard switch asks for them too.
    assert filedav.htpasswd_path(off.paths).exists()
    for method, path in (("PUT", "/files/Desktop/x"), ("GET", "/files/Downloads/"),
                         ("GET", "/files/")):
        assert off.request(method, path, b"x" if method == "PUT" else None).status == 404


def test_the_default_mode_s_file_holds_a_cheap_hash_nginx_checks_inline(
        tmp_path: Path) -> None:
    from whaletopd import webusers

    paths = _paths(tmp_path)
    for folder in (paths.desktop_dir, paths.nginx_dir, tmp_path / "home"):
        folder.mkdir(parents=True)
    desktop = RunAs(os.getuid(), os.getgid(), (), str(tmp_path / "home"))
    filedav.prepare(Config(username="ann"), paths, desktop, None, PASSWORD)
    path = filedav.htpasswd_path(paths)
    assert path.stat().st_mode & 0o777 == 0o600
    name, hashed = path.read_text().rstrip("\n").split(":")
    assert name == "ann"
    assert hashed.startswith("$6$")
    assert "rounds=" not in hashed  # the default, 5000
    assert PASSWORD not in path.read_text()
    assert webusers.crypt(PASSWORD, hashed) == hashed
    assert webusers.crypt("wrong", hashed) != hashed
    # With sign-in the sign-in service checks: no such file.
    filedav.prepare(Config(web_users="/data/users"), paths, desktop, None, PASSWORD)
    assert not path.exists()


@needs_nginx
def test_another_site_s_page_is_refused(start: StartFiles) -> None:
    files = start()
    other = {"Origin": "http://evil.example", "Host": f"127.0.0.1:{files.config.web_port}"}
    assert files.request("PUT", "/files/Desktop/x", b"x", headers=other).status == 403
    assert "another site" in files.logged("/files/Desktop/x")["refused"]
    assert not (files.home / "Desktop" / "x").exists()
    same = {"Origin": f"http://127.0.0.1:{files.config.web_port}",
            "Host": f"127.0.0.1:{files.config.web_port}"}
    assert files.request("PUT", "/files/Desktop/y", b"y", headers=same).status == 201


@needs_nginx
def test_a_name_too_long_for_the_filesystem_is_refused(start: StartFiles) -> None:
    """255 bytes once decoded, however it was encoded."""
    files = start()
    longest = "%C3%A9" * 127 + "n"  # 255 bytes
    assert files.request("PUT", "/files/Desktop/" + longest, b"x").status == 201
    assert (files.home / "Desktop" / ("é" * 127 + "n")).read_bytes() == b"x"
    for name in ("n" * 256, "%C3%A9" * 128, "%C3%A9" * 127 + "nn"):
        answer = files.request("PUT", "/files/Desktop/" + name, b"x")
        assert answer.status == 400, answer
    assert len(list((files.home / "Desktop").iterdir())) == 1


# -- with sign-in ------------------------------------------------------------------------

class _SignInHandler(BaseHTTPRequestHandler):
    """Stands for webauth: /auth/check passes the cookie "ok" or any Basic credentials as
    alice with full access, and refuses anything else."""

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        signed_in = ("session=ok" in self.headers.get("Cookie", "")
                     or self.headers.get("Authorization", "").startswith("Basic "))
        self.send_response(204 if signed_in else 401)
        if signed_in:
            self.send_header("X-Whaletop-User", "alice")
            self.send_header(filedav.ROLE_HEADER, "full")
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def sign_in_service() -> Iterator[Callable[[Paths], None]]:
    servers: list[socketserver.UnixStreamServer] = []

    def serve(paths: Paths) -> None:
        paths.web_dir.mkdir(parents=True, exist_ok=True)
        server = socketserver.ThreadingUnixStreamServer(str(paths.auth_socket),
                                                        _SignInHandler)
        paths.auth_socket.chmod(0o666)  # the front's workers run as www-data here
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@needs_nginx
@pytest.mark.parametrize("credentials", [{"Cookie": "session=ok"},
                                         {"Authorization": "Basic YWxpY2U6cHc="}])
def test_with_sign_in_an_upload_larger_than_nginx_s_default_body_limit_lands(
        start: StartFiles, sign_in_service: Callable[[Paths], None],
        credentials: dict[str, str]) -> None:
    """The sign-in check is a subrequest that carries the upload's Content-Length but not
    its body: nginx's default 1 MiB body limit there must not refuse it (it did: 500).
    --max-upload still holds."""
    files = start(web_password_from_env=True, web_password="correct horse", max_upload="8M")
    sign_in_service(files.paths)
    data = os.urandom(8 * 1024**2)
    put = files.request("PUT", "/files/Desktop/x", data, password=None, headers=credentials)
    assert put.status == 201, (put.status, files.errors)
    assert (files.home / "Desktop" / "x").read_bytes() == data
    assert files.logged("/files/Desktop/x")["user"] == "alice"
    over = files.request("PUT", "/files/Desktop/y", data + b"!", password=None,
                         headers=credentials)
    assert over.status == 413
    assert files.logged("/files/Desktop/y")["refused"] == "larger than --max-upload"
    assert not (files.home / "Desktop" / "y").exists()
