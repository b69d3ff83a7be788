"""Files in and out of the desktop: a second nginx, the desktop user's, behind the front
door.

    PUT /files/Desktop/NAME    a file into ~/Desktop (shown by LXDE at once)
    GET /files/Downloads/      ~/Downloads as JSON (nginx's autoindex)
    GET /files/Downloads/NAME  a file out of ~/Downloads, as an attachment
    GET /files/                what the page needs: the user name, the auth, the limit

The front nginx (nginx_conf.py) checks who asks (the sign-in service, or in the default
mode HTTP Basic with the VNC password against a hashed file written here), refuses bad
names, methods and sizes with a log line saying why, and proxies what is left, unbuffered,
to this one on a UNIX socket.  This one runs as the desktop user, so an upload is the
desktop user's file with no chown, and nothing here can reach what that user cannot.
nginx's WebDAV PUT writes the body to a temporary file in the home (same filesystem) and
renames it into place when complete: an interrupted upload leaves no file under the
final name.  Symbolic links are never followed (disable_symlinks).

The front door tells it the role it checked (X-Whaletop-Role, always set by the front,
never passed through from the client); anything but "full" is refused here too.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from whaletopd import logs
from whaletopd.children import RunAs
from whaletopd.config import Config
from whaletopd.files import atomic_write
from whaletopd.paths import Paths

log = logs.get("whaletopd")
UPLOAD_FOLDER = "Desktop"
DOWNLOAD_FOLDER = "Downloads"
# In the home (the same filesystem as ~/Desktop, so the last step is a rename); nginx
# makes the last folder itself, the desktop user's, 0700.
UPLOAD_TEMP = ".cache/whaletop-uploads"
ROLE_HEADER = "X-Whaletop-Role"
MIME_TYPES = Path("/etc/nginx/mime.types")
NGINX = "/usr/sbin/nginx"  # Debian's
HTPASSWD_ROUNDS = 5000  # SHA-512-crypt's default


def files_dir(paths: Paths) -> Path:
    """The file server's prefix: its pid file and temporary folders."""
    return paths.desktop_dir / "files"


def conf_path(paths: Paths) -> Path:
    return files_dir(paths) / "nginx.conf"


def socket_path(paths: Paths) -> Path:
    return paths.desktop_dir / "files.sock"


def htpasswd_path(paths: Paths) -> Path:
    """The default mode's credentials for the front nginx (no sign-in service): /files/
    and the page's keyboard switch."""
    return paths.nginx_dir / "vnc.htpasswd"


def _block(header: str, body: list[str], indent: str = "    ") -> list[str]:
    return [f"{header} {{", *(indent + line for line in body), "}"]


def render(config: Config, paths: Paths, home: Path, mime_types: Path = MIME_TYPES) -> str:
    """The desktop user's nginx: WebDAV PUT into ~/Desktop, GET and a JSON listing of
    ~/Downloads, nothing else."""
    for folder in (home, paths.desktop_dir):
        if not str(folder).isprintable() or any(c in str(folder) for c in ' ;{}"\'\\$#'):
            raise ValueError(f"{folder}: a path nginx's configuration cannot hold as it is")
    prefix = files_dir(paths)
    role = "$http_" + ROLE_HEADER.lower().replace("-", "_")
    full_only = [f'if ({role} != "full") {{ return 403; }}', "disable_symlinks on;"]
    server = [
        f"listen unix:{socket_path(paths)};",
        "server_tokens off;",
        # The front door logs every request, with who asked and why one was refused.
        "access_log off;",
        *_block(f"location ^~ /files/{UPLOAD_FOLDER}/", [
            *full_only,
            f"alias {home / UPLOAD_FOLDER}/;",
            "dav_methods PUT;",
            "create_full_put_path off;",
            "dav_access user:rw group:r all:r;",
            *_block("limit_except PUT", ["deny all;"]),
        ]),
        *_block(f"location = /files/{DOWNLOAD_FOLDER}/", [
            *full_only,
            f"alias {home / DOWNLOAD_FOLDER}/;",
            "autoindex on;",
            "autoindex_format json;",
            *_block("limit_except GET", ["deny all;"]),
        ]),
        *_block(f"location ^~ /files/{DOWNLOAD_FOLDER}/", [
            *full_only,
            f"alias {home / DOWNLOAD_FOLDER}/;",
            "autoindex off;",
            "add_header Content-Disposition attachment always;",
            *_block("limit_except GET", ["deny all;"]),
        ]),
        *_block("location /", ["return 404;"]),
    ]
    http = [
        f"include {mime_types};",
        "default_type application/octet-stream;",
        "sendfile on;",
        "charset utf-8;",
        f"client_max_body_size {config.max_upload_bytes};",
        "client_body_timeout 120s;",
        f"client_body_temp_path {home / UPLOAD_TEMP};",
        f"proxy_temp_path {prefix}/proxy;",
        f"fastcgi_temp_path {prefix}/fastcgi;",
        f"uwsgi_temp_path {prefix}/uwsgi;",
        f"scgi_temp_path {prefix}/scgi;",
        *_block("server", server),
    ]
    conf = [
        "# Written by whaletopd from its flags at every start; edits here are lost.",
        "worker_processes 1;",
        "daemon off;",
        f"pid {prefix / 'nginx.pid'};",
        "error_log stderr warn;",
        *_block("events", ["worker_connections 256;"]),
        *_block("http", http),
    ]
    return "\n".join(conf) + "\n"


def about(config: Config) -> str:
    """GET /files/: what the page needs before it asks (JSON, no secret; open to anyone
    who reaches the page).  In the default mode, the user name HTTP Basic wants (the page
    sends it with the VNC password the person typed)."""
    doc: dict[str, object] = {
        "upload": f"{UPLOAD_FOLDER}/", "download": f"{DOWNLOAD_FOLDER}/",
        "max_upload": config.max_upload_bytes,
        "auth": "sign-in" if config.sign_in else "vnc-password",
    }
    if not config.sign_in:
        doc["user"] = config.username
    return json.dumps(doc, separators=(",", ":"))


def ensure_folders(home: Path, owner: tuple[int, int] | None) -> list[str]:
    """~/Desktop, ~/Downloads and ~/.cache, made when missing (the desktop user's, 0755;
    0700 for the cache), in a fresh or an existing home.  Never through a link: a name
    that is a link or not a folder is left alone and logged (uploads or downloads then
    fail with a 4xx).  Returns what was made."""
    made: list[str] = []
    home_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for name, mode in ((UPLOAD_FOLDER, 0o755), (DOWNLOAD_FOLDER, 0o755),
                           (".cache", 0o700)):
            try:
                os.mkdir(name, mode, dir_fd=home_fd)
            except FileExistsError:
                st = os.stat(name, dir_fd=home_fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    log.warning("files_folder_unusable", folder=str(home / name),
                                reason="it is not a folder (a link or a file): file "
                                       "transfer to or from it is refused; replace it by "
                                       "a folder")
                continue
            if owner is not None:
                os.chown(name, *owner, dir_fd=home_fd, follow_symlinks=False)
            os.chmod(name, mode, dir_fd=home_fd)  # mkdir's mode went through the umask
            made.append(name)
    finally:
        os.close(home_fd)
    return made


def prepare(config: Config, paths: Paths, desktop: RunAs, web: RunAs | None,
            vnc_password: str) -> None:
    """In the default mode the front's hashed credentials (files and the page's keyboard
    switch ask for them); with file transfer on, the file server's folder and
    configuration (the desktop user's) and the home's folders.  Raises OSError."""
    write_credentials(config, paths, web, vnc_password)
    if not config.file_transfer:
        return
    root = os.geteuid() == 0
    owner = (desktop.uid, desktop.gid) if root else None
    prefix = files_dir(paths)
    prefix.mkdir(mode=0o700, exist_ok=True)
    if owner is not None:
        os.chown(prefix, *owner)
    home = Path(desktop.home)
    with logs.step("files_folders") as out:
        out["made"] = ensure_folders(home, owner)
    atomic_write(conf_path(paths), render(config, paths, home), mode=0o644, owner=owner)


def write_credentials(config: Config, paths: Paths, web: RunAs | None,
                      vnc_password: str) -> None:
    """The default mode's HTTP Basic credentials for nginx (auth_basic_user_file): the
    desktop's user name and the full VNC password, hashed, readable by nginx's workers
    only.  With sign-in, none (the sign-in service decides).  Raises OSError."""
    htpasswd = htpasswd_path(paths)
    if config.sign_in:
        htpasswd.unlink(missing_ok=True)
        return
    from whaletopd import webusers  # libcrypt: only when it is needed

    # nginx's worker checks it inline, holding every other request (the desktop's
    # WebSocket too) meanwhile: crypt's default cost (about 2 ms), not the sign-in
    # service's 35 ms, which runs apart.  The plain password sits in a 0600 file anyway.
    hashed = webusers.crypt(vnc_password, webusers.gensalt("$6$", HTPASSWD_ROUNDS))
    if hashed is None:
        raise OSError(f"libxcrypt cannot hash the VNC password for {htpasswd}")
    line = f"{config.username}:{hashed}\n"
    web_owner = (web.uid, web.gid) if web is not None and os.geteuid() == 0 else None
    atomic_write(htpasswd, line, mode=0o600, owner=web_owner)

