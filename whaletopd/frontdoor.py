"""The part that owns the front door: nginx's configuration (nginx_conf.py), checked
with `nginx -t` before use; the folders and sockets of the web side; the health checks'
secret; and, with sign-in on, the people who may sign in (the users file, watched like
the certificate: a changed file is validated and a bad one refused, the old one
staying) and the sign-in service's settings.

nginx and the sign-in service are children (programs.py); starting, restarting and
reloading them is the supervisor's work.  The desktop puts the parts together.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whaletopd import children, filedav, logs, nginx_conf
from whaletopd.children import RunAs
from whaletopd.config import Config
from whaletopd.events import EventQueue, WebUsersChanged
from whaletopd.files import atomic_write, file_digest
from whaletopd.logs import step
from whaletopd.paths import Paths

if TYPE_CHECKING:
    from whaletopd import webusers
    from whaletopd.watch import Watcher

log = logs.get("whaletopd")
WEB_ACCOUNT = "www-data"  # Debian's account for web servers (base-passwd: always there)
SESSION_HOURS = 12


class FrontDoorError(RuntimeError):
    """nginx refused its configuration, or the users file cannot be used."""


def web_account() -> RunAs | None:
    """The web side's own account when whaletopd runs as root; None otherwise (then
    everything runs as whaletopd's own user)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(WEB_ACCOUNT)
    except KeyError:
        raise FrontDoorError(f"the image has no {WEB_ACCOUNT!r} account for nginx's worker "
                             "and the sign-in service") from None
    return RunAs(uid=entry.pw_uid, gid=entry.pw_gid, groups=(), home="/")


def root_account() -> RunAs:
    return RunAs(uid=os.geteuid(), gid=os.getegid(), groups=(), home="/")


def web_env() -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": os.environ.get("LANG", "C.UTF-8")}


def _own(path: Path, account: RunAs | None, mode: int, gid: int | None = None) -> None:
    if account is not None and os.geteuid() == 0:
        os.chown(path, account.uid, account.gid if gid is None else gid)
    path.chmod(mode)


def _fresh_dir(path: Path, account: RunAs | None, mode: int, gid: int | None = None) -> None:
    """The folder, owned and with its mode; sockets left by a killed desktop removed
    (a server cannot bind to a path that exists)."""
    path.mkdir(parents=True, exist_ok=True)
    for leftover in path.glob("*.sock"):
        leftover.unlink(missing_ok=True)
    _own(path, account, mode, gid)


def desktop_dir_mode(web: RunAs | None) -> tuple[int, int | None]:
    """The mode and group of the desktop user's socket folder.  Its servers (websockify,
    the sound bridge, the file server) are the desktop user's and nginx's workers are
    their only clients: with a web account, the folder's group is the web account's, and
    setgid, so each socket made in it has that group too (0660 is enough); other uids
    cannot pass the folder, whatever a socket's own mode.  Without root, one uid: 0700."""
    return (0o700, None) if web is None else (0o2750, web.gid)


class FrontDoor:
    def __init__(self, config: Config, paths: Paths, events: EventQueue,
                 web: RunAs | None = None) -> None:
        self._config = config
        self._paths = paths
        self._events = events
        self._web = web  # None: the same account as whaletopd
        self.probe_token = secrets.token_hex(16)
        self.sound_token = secrets.token_hex(16)
        self._users: dict[str, webusers.WebUser] = {}
        self._users_digest: str | None = None
        self._watcher: Watcher | None = None

    def use_web_account(self, web: RunAs | None) -> None:
        """The account of nginx's worker and the sign-in service (None: whaletopd's)."""
        self._web = web

    @property
    def users_file(self) -> Path:
        return self._paths.web_dir / "users"

    def describe(self) -> dict[str, Any]:
        cfg = self._config
        listening = [f"tcp {cfg.web_port} (nginx{', TLS' if cfg.tls else ''})"]
        if cfg.expose_vnc:
            listening.append(f"tcp {cfg.vnc_port} (Xvnc)")
        sign_in = None
        if cfg.sign_in:
            sign_in = {"users": sum(u.role == "full" for u in self._users.values()),
                       "viewers": sum(u.role == "viewer" for u in self._users.values()),
                       "source": cfg.web_users or "WEB_PASSWORD"}
        return {"listening": listening, "sign_in": sign_in}

    # -- before the children start -------------------------------------------------------

    def users_valid(self) -> None:
        """First of provisioning, with the certificate: a bad users file is FAILED before
        anything is touched.  Raises FrontDoorError."""
        cfg = self._config
        if not cfg.sign_in:
            return
        from whaletopd import webusers  # ctypes and libcrypt: only with sign-in

        if cfg.web_users:
            path = Path(cfg.web_users)
            self._users_digest = _digest(path)
            self._users = self._load(path)
        elif cfg.web_password is not None:
            text = webusers.from_password(cfg.username, cfg.web_password)
            self._users = webusers.parse(text, "WEB_PASSWORD")

    @staticmethod
    def _load(path: Path) -> dict[str, webusers.WebUser]:
        from whaletopd import webusers

        try:
            return webusers.load(path)
        except webusers.WebUsersError as exc:
            raise FrontDoorError(f"--web-users: {exc}") from None

    def prepare(self, desktop: RunAs, tls_pem: Path | None, vnc_password: str,
                view_only_password: str | None) -> None:
        """Folders, the sign-in service's files, nginx's configuration, checked.
        Raises FrontDoorError (nginx's own message) or OSError."""
        paths, cfg = self._paths, self._config
        _fresh_dir(paths.desktop_dir, desktop, *desktop_dir_mode(self._web))
        _fresh_dir(paths.nginx_dir, None, 0o755)
        # nginx's listener for the health checks: whaletopd's account alone enters.
        _fresh_dir(paths.probe_dir, None, 0o700)
        tmp = paths.nginx_dir / "tmp"
        tmp.mkdir(exist_ok=True)
        _own(tmp, self._web, 0o700)
        self._write_relay(desktop, vnc_password, view_only_password)
        if cfg.sign_in:
            _fresh_dir(paths.web_dir, self._web, 0o700)
            self._grants_dir(desktop)
            self._write_users()
            settings = {
                "users_file": str(self.users_file),
                "sessions_file": str(paths.web_dir / "sessions.json"),
                "grants_file": str(paths.grants_file),
                "probe_token": self.probe_token,
                "attempts": cfg.sign_in_attempts,
                "lockout_s": cfg.sign_in_lockout,
                "secure_cookie": cfg.tls,
                "cookie_name": f"whaletop_session_{cfg.web_port}",
                "session_hours": SESSION_HOURS,
            }
            self._write_web(paths.web_dir / "auth.json", json.dumps(settings, indent=1))
        spec = nginx_conf.FrontDoorSpec(
            probe_token=self.probe_token, tls_pem=tls_pem,
            worker_user=WEB_ACCOUNT if self._web is not None else None,
            sound_token=self.sound_token)
        filedav.prepare(cfg, paths, desktop, self._web, vnc_password)
        atomic_write(paths.nginx_conf, nginx_conf.render(cfg, paths, spec), mode=0o600)
        with step("nginx_check"):
            self.check()

    def _write_relay(self, desktop: RunAs, vnc_password: str,
                     view_only_password: str | None) -> None:
        """The relay's settings (vncrelay.py, the desktop user's child): the passwords
        it logs in to Xvnc with.  Only there and in Xvnc's own file: with sign-in no
        browser is ever handed one."""
        paths, cfg = self._paths, self._config
        settings = {
            "vnc_socket": str(paths.vnc_socket),
            "sign_in": cfg.sign_in,
            "password": vnc_password,
            "view_only_password": view_only_password,
            "grants_file": str(paths.grants_file) if cfg.sign_in else None,
        }
        owner = (desktop.uid, desktop.gid) if os.geteuid() == 0 else None
        atomic_write(paths.relay_settings, json.dumps(settings), mode=0o600, owner=owner)

    def _grants_dir(self, desktop: RunAs) -> None:
        """The sign-in service writes the grants, the relay (the desktop user) reads
        them; nobody else: the web account's, group the desktop user's, setgid so the
        file gets that group."""
        _fresh_dir(self._paths.grants_file.parent, self._web, 0o2750, desktop.gid)
        self._paths.grants_file.unlink(missing_ok=True)  # a previous run's

    def check(self) -> None:
        """`nginx -t`: its own words when it refuses (FrontDoorError)."""
        paths = self._paths
        try:
            result = subprocess.run(
                ["nginx", "-t", "-q", "-c", str(paths.nginx_conf), "-p", str(paths.nginx_dir),
                 "-e", "stderr"], capture_output=True, check=False, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FrontDoorError(f"nginx -t: {exc}") from None
        if result.returncode != 0:
            lines = [children.nginx_message(line.removeprefix("nginx: ").strip())
                     for line in result.stderr.decode(errors="replace").splitlines()]
            reason = next((line for line in lines if "[emerg]" in line), None) or (
                lines[0] if lines else f"exit {result.returncode}")
            raise FrontDoorError(f"nginx refused its configuration: {reason}")

    def _write_web(self, path: Path, text: str) -> None:
        """A file for the sign-in service only."""
        owner = (self._web.uid, self._web.gid) if self._web is not None else None
        atomic_write(path, text, mode=0o600, owner=owner)

    def _write_users(self) -> None:
        from whaletopd import webusers

        self._write_web(self.users_file, webusers.render(self._users))
        log.info("web_users", users=sorted(self._users),
                 viewers=sorted(n for n, u in self._users.items() if u.role == "viewer"))

    def watch(self) -> None:
        """--web-users: watch its folder (replaced by rename, or Kubernetes' ..data swap)."""
        if not self._config.web_users:
            return
        from whaletopd.watch import Watcher  # watchdog: only when there is a file to watch

        self._watcher = Watcher(Path(self._config.web_users).parent,
                                lambda: self._events.post(WebUsersChanged()),
                                tree=False, quiet=0.1)
        self._watcher.start()

    # -- while it runs ------------------------------------------------------------------

    def reload_users(self) -> bool:
        """The users file changed: validated, then in service at once (the sign-in
        service re-reads it); a bad one is refused and the old one stays.  True when the
        people who may sign in changed."""
        path = Path(self._config.web_users)
        digest = _digest(path)
        if digest == self._users_digest:
            return False  # a touch, or another file in the folder
        self._users_digest = digest
        try:
            users = self._load(path)
        except FrontDoorError as exc:
            log.error("web_users_refused", reason=str(exc), in_service=len(self._users))
            return False
        self._users = users
        try:
            self._write_users()
        except OSError as exc:
            log.error("web_users_refused", reason=f"cannot install it: {exc}")
            return False
        return True

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()


def _digest(path: Path) -> str | None:
    from whaletopd import webusers

    return file_digest(path, limit=webusers.MAX_FILE + 1)
