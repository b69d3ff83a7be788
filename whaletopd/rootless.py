"""The desktop user when whaletopd does not run as root (`docker run --user`, Kubernetes'
restricted pods, OpenShift's arbitrary uids): the container's own user is the desktop
user.  Nothing is created in the image: no account in /etc/passwd, no sudo, no chown.

Programs that look their user up (bash's prompt, dbus, Chromium) find a name through
nss_wrapper: a passwd and a group file in the run folder, preloaded into the children
only when the uid has no entry of its own.  The home must be writable by the uid or,
OpenShift's convention, by its group 0; the image's /home/user is made so.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

from whaletopd.children import RunAs
from whaletopd.config import Config
from whaletopd.files import atomic_write, copy_missing
from whaletopd.paths import SKEL, Paths

NSS_WRAPPER = "libnss_wrapper.so"


class RootlessError(RuntimeError):
    """The container's user cannot have a desktop with this input (named, with a fix)."""


def prepare_dirs(paths: Paths) -> None:
    """The folders whaletopd writes, made (or checked) as its own user.  The image makes
    /opt/whaletop and /run/whaletop writable by any uid; --read-only needs them mounted."""
    me = f"uid {os.getuid()}"
    for path, hint in ((paths.state_dir, f"--tmpfs {paths.state_dir} or a volume"),
                       (paths.run_dir, f"--tmpfs {paths.run_dir}"),
                       (paths.x11_socket_dir, f"--tmpfs {paths.x11_socket_dir.parent}")):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RootlessError(f"cannot create {path} as {me} ({exc.strerror}): "
                                f"mount it writable ({hint})") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise RootlessError(f"{path} is not writable by {me}: mount it writable "
                                f"({hint})")
        if path.stat().st_uid == os.getuid():
            # X's socket folder is everyone's by convention; the others are ours.
            path.chmod({paths.state_dir: 0o755, paths.x11_socket_dir: 0o1777}.get(path, 0o700))


def desktop_user(config: Config, paths: Paths) -> tuple[RunAs, dict[str, str], list[str]]:
    """Who the children run as (this process's uid and gid), the environment that names
    it (nss_wrapper's, when needed), and what was done."""
    uid, gid = os.getuid(), os.getgid()
    name = config.username
    for flag, wanted, actual in (("--uid", config.uid, uid), ("--gid", config.gid, gid)):
        if wanted is not None and wanted != actual:
            raise RootlessError(
                f"{flag} {wanted}: the container runs as {flag[2:]} {actual} (docker run "
                f"--user, or the pod's securityContext), which is the desktop user's; "
                f"drop {flag} or run the container as {wanted}")
    home = paths.home_root / name
    done = _ensure_home(home, uid, gid)
    env: dict[str, str] = {}
    if not _named(uid, name, home):
        env = _nss_wrapper(paths, name, uid, gid, home)
        done.append(f"named uid {uid} {name!r} through nss_wrapper")
    if config.sudo:
        done.append("no sudo: the container does not run as root")
    return RunAs(uid=uid, gid=gid, groups=(), home=str(home)), env, done


def _ensure_home(home: Path, uid: int, gid: int) -> list[str]:
    who = f"uid {uid} (gid {gid})"
    try:
        st = home.lstat()
    except FileNotFoundError:
        try:
            home.mkdir(mode=0o755)
        except OSError as exc:
            raise RootlessError(
                f"cannot create the home {home} as {who} ({exc.strerror}): mount a volume "
                f"there that {who} can write, e.g. -v whaletop-home:{home}") from None
        copy_missing(SKEL, home)  # owned by whoever we are
        return [f"created {home}", f"added default files from {SKEL}"]
    if not stat.S_ISDIR(st.st_mode):
        raise RootlessError(f"{home} exists and is not a directory")
    if not os.access(home, os.W_OK | os.X_OK):
        owner = (f"run the container as its owner (--user {st.st_uid}:{st.st_gid}), or "
                 if st.st_uid != 0 else "")
        raise RootlessError(
            f"the home {home} (owner uid {st.st_uid}, gid {st.st_gid}, mode "
            f"{stat.S_IMODE(st.st_mode):04o}) is not writable by {who}: {owner}make it "
            f"writable by uid {uid} or by group 0 (OpenShift's convention)")
    done = []
    if not any(home.iterdir()):
        copy_missing(SKEL, home)  # owned by whoever we are
        done.append(f"added default files from {SKEL} to the empty {home}")
    return done


def _named(uid: int, name: str, home: Path) -> bool:
    """The image already names this uid as the desktop user, with this home."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return False
    return entry.pw_name == name and entry.pw_dir == str(home)


def _nss_wrapper(paths: Paths, name: str, uid: int, gid: int,
                 home: Path) -> dict[str, str]:
    """/etc/passwd and /etc/group as they are, but with the desktop user (and its group,
    when the gid has none) and without any other entry of that name or uid."""
    folder = paths.run_dir / "nss"
    folder.mkdir(mode=0o755, exist_ok=True)
    passwd = [line for line in _lines(Path("/etc/passwd"))
              if line.split(":")[0] != name and _field(line, 2) != str(uid)]
    passwd.append(f"{name}:x:{uid}:{gid}:whaletop desktop user:{home}:/bin/bash")
    group = _lines(Path("/etc/group"))
    try:
        grp.getgrgid(gid)
    except KeyError:
        group.append(f"{name}:x:{gid}:")
    atomic_write(folder / "passwd", "\n".join(passwd) + "\n", mode=0o644)
    atomic_write(folder / "group", "\n".join(group) + "\n", mode=0o644)
    return {"LD_PRELOAD": NSS_WRAPPER, "NSS_WRAPPER_PASSWD": str(folder / "passwd"),
            "NSS_WRAPPER_GROUP": str(folder / "group")}


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def _field(line: str, index: int) -> str:
    parts = line.split(":")
    return parts[index] if len(parts) > index else ""
