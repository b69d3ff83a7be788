"""Provisioning: the desktop user, sudo, the VNC password, the runtime directories.

Every step is idempotent, so `docker restart` of the same container provisions again
cleanly.  A mounted home is never walked: at most its top directory changes owner, and
only when it is an empty root-owned mount point (docker's fresh bind mount).  Leftover
cleanup never follows a link out of the home.
"""

from __future__ import annotations

import errno
import fnmatch
import grp
import os
import pwd
import secrets
import socket
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from whaletopd import logs, rootless, xauth
from whaletopd.children import RunAs
from whaletopd.config import Config, system_group
from whaletopd.files import atomic_write, copy_missing
from whaletopd.logs import step
from whaletopd.paths import SKEL, Paths

# No look-alikes (0/O, 1/l/I): the password is read off a log and typed by hand.
PASSWORD_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
# VNC authentication (DES) uses only the first 8 characters of a password.
VNC_PASSWORD_LENGTH = 8
DEFAULT_UID = 1000
# A live X server answers at once; this only bounds a hung one.
X_SOCKET_CONNECT_TIMEOUT = 2.0
log = logs.get("whaletopd")
P = ParamSpec("P")
T = TypeVar("T")


class ProvisionError(RuntimeError):
    """A provisioning step that cannot succeed with this input."""


@dataclass(frozen=True)
class Account:
    """What provisioning made: who the children run as, their environment (made once),
    and the VNC password the probes log in with."""

    run_as: RunAs
    env: dict[str, str]
    password: str
    view_only_password: str | None = None  # VNC's second password: watch only


def provision(config: Config, paths: Paths, display: int) -> Account:
    """Every step, each logged with its duration.  Raises ProvisionError or OSError.
    As root, the desktop user is made (and given sudo); otherwise it is whaletopd's own
    user, and nothing of the image changes (rootless.py)."""
    root = os.geteuid() == 0
    with step("prepare_dirs"):
        if root:
            prepare_dirs(paths)
        else:
            _rootless(rootless.prepare_dirs, paths)
    with step("clear_stale_x_lock") as out:
        out["removed"] = clear_stale_x_lock(paths, display)
    with step("ensure_user", username=config.username) as out:
        if root:
            run_as, out["done"] = ensure_user(config, paths)
            names: dict[str, str] = {}
        else:
            run_as, names, out["done"] = _rootless(rootless.desktop_user, config, paths)
    with step("clear_session_leftovers") as out:
        out["removed"] = clear_session_leftovers(Path(run_as.home))
    if root:
        with step("configure_sudo") as out:
            out["result"] = configure_sudo(config, paths)
    with step("vnc_password"):
        password = config.vnc_password or generate_password()
        # With sign-in the relay logs in with it for viewers: nobody types it.
        view_only = config.view_only_password or (
            generate_password() if config.sign_in else None)
        write_password(password, paths, run_as, view_only)
    with step("x_cookie"):
        write_x_cookie(paths, run_as, display)
    if config.vnc_password is None:
        # Logged for whoever must type it: without sign-in, or for the VNC port.  With
        # sign-in only the relay uses it (and it stays in the 0600 file).
        if not config.sign_in or config.expose_vnc:
            log.info("vnc_password", password=password, file=str(paths.vnc_passwd))
    elif len(config.vnc_password) > VNC_PASSWORD_LENGTH:
        log.warning("vnc_password_truncated", length=len(config.vnc_password),
                    reason="VNC authentication uses only the first 8 characters")
    env = child_env(config, run_as, display, paths, runtime_dir(run_as, paths))
    return Account(run_as, env | names, password, view_only)


def _rootless(work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    try:
        return work(*args, **kwargs)
    except rootless.RootlessError as exc:
        raise ProvisionError(str(exc)) from None


def child_env(config: Config, run_as: RunAs, display: int, paths: Paths,
              xdg_runtime_dir: str) -> dict[str, str]:
    """The children's whole environment: nothing of the daemon's leaks into the desktop.
    /Apps entries are on XDG_DATA_DIRS after the system's folders."""
    name = config.username
    return {
        "HOME": run_as.home, "USER": name, "LOGNAME": name, "SHELL": "/bin/bash",
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/games",
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "DISPLAY": f":{display}",
        "XAUTHORITY": str(paths.xauthority),
        "XDG_RUNTIME_DIR": xdg_runtime_dir,
        "XDG_DATA_DIRS": f"/usr/local/share:/usr/share:{paths.menu_data_dir}",
        "APPIMAGE_EXTRACT_AND_RUN": "1",
    }


def _run(argv: list[str], input_text: str | None = None) -> bytes:
    try:
        result = subprocess.run(argv, input=None if input_text is None else input_text.encode(),
                                capture_output=True, check=False)
    except OSError as exc:
        raise ProvisionError(f"{argv[0]}: {exc.strerror}") from None
    if result.returncode != 0:
        err = result.stderr.decode(errors="replace").strip().splitlines()
        raise ProvisionError(f"{' '.join(argv[:2])} failed ({result.returncode}): "
                             f"{err[-1] if err else 'no message'}")
    return result.stdout


def prepare_dirs(paths: Paths) -> None:
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    paths.state_dir.chmod(0o755)
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    paths.run_dir.chmod(0o755)
    paths.x11_socket_dir.mkdir(parents=True, exist_ok=True)
    paths.x11_socket_dir.chmod(0o1777)


def _pid_exists(pid: int) -> bool:
    """psutil.pid_exists without psutil (~1 MiB of the daemon's memory for one call)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's
    return True


def clear_stale_x_lock(paths: Paths, display: int) -> list[str]:
    """Remove the X lock and socket a previous run left (docker restart keeps /tmp).
    Both are checked before either goes: a lock whose process runs, or a socket a server
    still answers on (its lock file deleted), means the display is taken."""
    lock = paths.x_lock_dir / f".X{display}-lock"
    sock = paths.x11_socket_dir / f"X{display}"
    try:
        pid = int(lock.read_text().strip())
    except FileNotFoundError:
        pid = 0
    except ValueError:
        pid = 0  # a torn lock file is as stale as a dead one
    if pid > 0 and _pid_exists(pid):
        raise ProvisionError(f"display :{display} is held by a running process (pid {pid})")
    if _answers(sock):
        raise ProvisionError(f"display :{display} is in use: an X server answers on {sock} "
                             "(its lock file is gone); stop it or remove its container")
    removed: list[str] = []
    for path in (lock, sock):
        try:
            path.unlink()  # a symlink itself, never what it points at
        except FileNotFoundError:
            continue
        removed.append(str(path))
    return removed


def _answers(sock: Path) -> bool:
    """Whether a server accepts connections on this socket file.  Only a real socket
    is tried: connect() would follow a symlink."""
    try:
        if not stat.S_ISSOCK(sock.lstat().st_mode):
            return False
    except FileNotFoundError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(X_SOCKET_CONNECT_TIMEOUT)
        try:
            client.connect(str(sock))
        except (ConnectionRefusedError, FileNotFoundError):
            return False  # nobody listens: a dead server's file
        except TimeoutError:
            return True  # a listener whose backlog is full is still alive
    return True


def _home_owner(home: Path) -> tuple[int, int] | None:
    try:
        st = home.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        raise ProvisionError(f"{home} exists and is not a directory")
    return st.st_uid, st.st_gid


def _ensure_group(name: str, gid: int) -> None:
    try:
        grp.getgrgid(gid)
    except KeyError:
        group_name = name
        try:
            grp.getgrnam(name)
            group_name = f"{name}{gid}"  # the name is taken by another gid
        except KeyError:
            pass
        _run(["groupadd", "-g", str(gid), group_name])


def ensure_user(config: Config, paths: Paths) -> tuple[RunAs, list[str]]:
    """The desktop user, created once.  Returns how to run as it and what was done."""
    name = config.username
    home = paths.home_root / name
    done: list[str] = []
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        entry = None
    created = entry is None
    if entry is None:
        uid, gid = _choose_ids(config, home)
        holder = _account_of(uid)
        if holder is not None:
            raise ProvisionError(f"uid {uid} already belongs to account {holder!r}; "
                                 "choose another --uid")
        if os.statvfs("/etc").f_flag & os.ST_RDONLY:
            raise ProvisionError(
                "the image is read-only (docker run --read-only) and whaletopd, as root, "
                "makes the desktop user in /etc/passwd: run the container as that user "
                "instead, e.g. --user 1000:1000 (no sudo then; see the README's Security)")
        _ensure_group(name, gid)
        _run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/bash",
              "--uid", str(uid), "--gid", str(gid), name])
        done.append(f"created user {name} (uid {uid}, gid {gid})")
        entry = pwd.getpwnam(name)
    uid, gid = entry.pw_uid, entry.pw_gid
    for flag, wanted, actual in (("--uid", config.uid, uid), ("--gid", config.gid, gid)):
        if wanted is not None and wanted != actual:
            # Changing it would mean re-owning the whole home: never done behind a user's back.
            raise ProvisionError(f"{flag} {wanted}: user {name} already exists here with "
                                 f"{flag[2:]} {actual}; remove the container to change it")
    if _home_owner(home) is None:
        home.mkdir(mode=0o755, parents=True)
        os.chown(home, uid, gid)
        done.append(f"created {home}")
    elif _home_owner(home) == (0, 0) and uid != 0 and _is_empty(home):
        os.chown(home, uid, gid)  # a fresh bind mount point docker made for us
        home.chmod(0o755)  # or the image's, open to any uid (rootless mode): closed
        done.append(f"took ownership of {home} (not its contents)")
    if created:
        # First start of this user: add the default files the home lacks, keep the rest.
        copy_missing(SKEL, home, (uid, gid))
        done.append(f"added missing default files from {SKEL}")
    groups = tuple(g.gr_gid for g in grp.getgrall() if name in g.gr_mem and g.gr_gid != gid)
    return RunAs(uid=uid, gid=gid, groups=groups, home=str(home)), done


def _account_of(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _choose_ids(config: Config, home: Path) -> tuple[int, int]:
    """--uid/--gid if given; else a mounted home's owner (so nothing in it is re-owned);
    else the first free uid from 1000, with a group of the same number.  Refuses a home
    that is root's and not empty (root's files are not the user's to take) and an
    owner's group that is one of the image's system groups."""
    owner = _home_owner(home)
    if owner is not None and owner[0] == 0:
        if not _is_empty(home):
            # Root's files are not the user's to take, and a home the user cannot write
            # is no desktop: the owner on the host decides.
            raise ProvisionError(
                f"{home} is root's and not empty: chown the folder on the host to the user "
                "who should have it (e.g. chown -R 1000:1000 DIR; that owner becomes the "
                "desktop user, or choose it with --uid and --gid), or mount an empty one")
        owner = None  # a root-owned mount point docker created: nobody's yet
    uid = config.uid if config.uid is not None else owner[0] if owner else None
    if uid is None:
        uid = DEFAULT_UID
        while _account_of(uid) is not None:
            uid += 1
    if config.gid is not None:
        return uid, config.gid
    if owner is None:
        return uid, uid
    group = system_group(owner[1])
    if group is not None:
        raise ProvisionError(
            f"{home} belongs to group {group!r} (gid {owner[1]}), a system group that must "
            "not be the desktop user's: choose the user's group with --gid (e.g. --gid "
            "1000, or your host user's group: id -g)")
    return uid, owner[1]


def _is_empty(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return next(entries, None) is None


# What a session leaves behind in a persisted home when its container was killed: lock
# files that make the next Chromium refuse to start ("profile in use") and old logs.
LEFTOVER_PATTERNS = (".vnc/*.pid", ".vnc/*.log", ".config/chromium/Singleton*",
                     ".config/google-chrome/Singleton*")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def clear_session_leftovers(home: Path) -> list[str]:
    """Remove what LEFTOVER_PATTERNS name, and only inside the home: each folder on the
    way is opened relative to the one before without following a link, so a `.vnc` or
    `.config` that links elsewhere (even to /) is skipped, never cleaned."""
    removed: list[str] = []
    skipped: dict[str, str] = {}
    try:
        home_fd = os.open(home, _DIR_FLAGS)
    except OSError as exc:
        # ensure_user saw a real folder: a link or file here now is not cleaned through.
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            raise
        return removed
    try:
        for pattern in LEFTOVER_PATTERNS:
            *folders, name_pattern = pattern.split("/")
            _clear_matching(home, home_fd, folders, name_pattern, removed, skipped)
    finally:
        os.close(home_fd)
    if skipped:
        log.info("session_leftovers_skipped", skipped=skipped,
                 reason="only folders inside the home are cleaned")
    return removed


def _clear_matching(home: Path, home_fd: int, folders: list[str], name_pattern: str,
                    removed: list[str], skipped: dict[str, str]) -> None:
    fd = os.dup(home_fd)
    try:
        where = home
        for folder in folders:
            where = where / folder
            if str(where) in skipped:
                return
            try:
                next_fd = os.open(folder, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                return
            except OSError as exc:
                # O_NOFOLLOW|O_DIRECTORY on a link: ENOTDIR (Linux) or ELOOP.
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                if stat.S_ISLNK(os.stat(folder, dir_fd=fd, follow_symlinks=False).st_mode):
                    target = os.readlink(folder, dir_fd=fd)
                    skipped[str(where)] = f"a symbolic link to {target}"
                else:
                    skipped[str(where)] = "not a folder"
                return
            os.close(fd)
            fd = next_fd
        for name in sorted(os.listdir(fd)):
            if not fnmatch.fnmatchcase(name, name_pattern):
                continue
            mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode):
                os.unlink(name, dir_fd=fd)
                removed.append(str(where / name))
    finally:
        os.close(fd)


def configure_sudo(config: Config, paths: Paths) -> str:
    if config.no_sudo:
        paths.sudoers_file.unlink(missing_ok=True)
        return "sudo disabled"
    paths.sudoers_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = paths.sudoers_file.with_name(".whaletop.tmp")
    tmp.write_text(f"{config.username} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    tmp.chmod(0o440)
    os.replace(tmp, paths.sudoers_file)
    return "password-less sudo granted"


def generate_password() -> str:
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(VNC_PASSWORD_LENGTH))


def write_password(password: str, paths: Paths, run_as: RunAs,
                   view_only: str | None = None) -> None:
    """Plain text for root (docker exec), obfuscated for Xvnc (readable by the user only).
    `vncpasswd -f` takes the full-access password and, on a second line, the view-only
    one (Xvnc refuses that client's keyboard, mouse and clipboard)."""
    atomic_write(paths.vnc_passwd, password + "\n", mode=0o600)
    if view_only is None:
        paths.vnc_view_only_passwd.unlink(missing_ok=True)
    else:
        atomic_write(paths.vnc_view_only_passwd, view_only + "\n", mode=0o600)
    lines = password + "\n" + (view_only + "\n" if view_only else "")
    obfuscated = _run(["vncpasswd", "-f"], input_text=lines)
    atomic_write(paths.vnc_auth, obfuscated, mode=0o600, owner=(run_as.uid, run_as.gid))


def write_x_cookie(paths: Paths, run_as: RunAs, display: int) -> None:
    """The X display's cookie, the desktop user's (xauth.py)."""
    owner = (run_as.uid, run_as.gid) if os.geteuid() == 0 else None
    try:
        xauth.write(paths.xauthority, display, owner)
    except xauth.XauthError as exc:
        raise ProvisionError(str(exc)) from None


def runtime_dir(run_as: RunAs, paths: Paths) -> str:
    """XDG_RUNTIME_DIR: /run/user/UID as on any Linux desktop when root can make it;
    else a folder of whaletopd's own run folder."""
    if os.geteuid() == 0:
        path = Path(f"/run/user/{run_as.uid}")
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, run_as.uid, run_as.gid)
    else:
        path = paths.run_dir / "xdg"
        path.mkdir(exist_ok=True)
    path.chmod(0o700)
    return str(path)
