"""A sandbox where the provisioning steps that change the account database run for real
(useradd, groupadd, chown, /run/user/UID) without ever changing this machine's accounts.

`run(fn, scratch)` forks.  The child enters a private mount namespace and lays
copy-on-write overlays over /etc and /var/log and a tmpfs over /run/user, then calls fn
and sends back what it returned or raised (pickled, through a pipe).  Every write lands
in the overlays, which die with the child; the parent never enters the namespace.

Where root may not mount (a container's root by default: no CAP_SYS_ADMIN, Docker's
seccomp and AppArmor profiles) and the machine is CI's own throwaway container, that
container stands in for the namespace: the parent sets aside what the account tools
write (the account files, their backups and locks, /etc/skel, lastlog and faillog),
the child runs fn against the container's real /etc, and the parent puts every byte,
owner, mode, mtime and inode back and removes what /run/user gained.  Anything else
under /etc, /var/log or /var/mail that changed fails the test (ContainerChanged).  It
is never used on a machine that is not such a container: there the tests skip (and in
CI fail, tests/conftest.py).

Why overlays and not bind mounts of the four account files: useradd and groupadd write
/etc/passwd+ and rename it over /etc/passwd (EBUSY over a bind-mounted file, and the
`+` file is left in the real /etc), take lock files and write `-` backups next to it,
and do the same for /etc/subuid and /etc/subgid.  /var/log is covered too: useradd may
reset the new uid's records in lastlog and faillog.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import hashlib
import os
import pickle
import shutil
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from whaletopd.provision import SKEL

from .. import tools
from ..conftest import in_ci

T = TypeVar("T")

CLONE_NEWNS = 0x0002_0000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

OVERLAID = (Path("/etc"), Path("/var/log"))
RUNTIME_ROOT = Path("/run/user")
# Regular accounts (Debian's UID_MIN..): the machine's people, absent from a fresh container.
REGULAR_IDS = range(1000, 65534)

# What the host must keep byte for byte (also the `-` backups shadow-utils writes).
ACCOUNT_FILES = ("passwd", "group", "shadow", "gshadow", "subuid", "subgid")
LOG_FILES = (Path("/var/log/lastlog"), Path("/var/log/faillog"))
# Docker's and Podman's marks of a container.
CONTAINER_MARKS = (Path("/.dockerenv"), Path("/run/.containerenv"))
# Checked unchanged after fn in a container (beyond what is put back).
WATCHED = (Path("/etc"), Path("/var/log"), Path("/var/mail"), Path("/var/spool/mail"))

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]


class SandboxUnavailable(Exception):
    """This kernel or container does not let us make a private mount namespace."""


class ContainerChanged(RuntimeError):
    """fn changed the throwaway container beyond what the sandbox puts back."""


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise SandboxUnavailable(f"{what}: {os.strerror(ctypes.get_errno())}")


def _mount(source: str | None, target: Path | str, fstype: str | None, flags: int = 0,
           data: str | None = None) -> None:
    def b(s: str | None) -> bytes | None:
        return None if s is None else s.encode()
    what = f"mount -t {fstype} {target}" if fstype else f"mount --make-rprivate {target}"
    _check(_libc.mount(b(source), str(target).encode(), b(fstype), flags, b(data)), what)


def _enter(scratch: Path) -> None:
    """Make this process's view of /etc, /var/log and /run/user private and writable.
    Raises SandboxUnavailable before anything is covered, RuntimeError if a mount that
    reported success did not cover its path (fn must then never run)."""
    runtime = RUNTIME_ROOT if RUNTIME_ROOT.is_dir() else RUNTIME_ROOT.parent
    covered = (*OVERLAID, runtime)
    host_dev = {path: os.stat(path).st_dev for path in covered}
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Nothing mounted from here on propagates back to the machine's namespace.
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", scratch, "tmpfs", data="mode=0700")
    overlays = OVERLAID if runtime == RUNTIME_ROOT else (*OVERLAID, runtime)
    for i, lower in enumerate(overlays):
        upper, work = scratch / f"{i}.upper", scratch / f"{i}.work"
        upper.mkdir()
        work.mkdir()
        _mount("overlay", lower, "overlay",
               data=f"lowerdir={lower},upperdir={upper},workdir={work}")
    if runtime == RUNTIME_ROOT:
        _mount("tmpfs", RUNTIME_ROOT, "tmpfs", data="mode=0755")
    else:
        RUNTIME_ROOT.mkdir(mode=0o755)  # in the overlay of its parent
    for path, dev in host_dev.items():
        if os.stat(path).st_dev == dev:
            raise RuntimeError(f"{path} is still the machine's after mounting over it")
    _forget_regular_accounts()


def _forget_regular_accounts() -> None:
    """The account database of a fresh container: the machine's system accounts, none of
    its people (so the first free uid is 1000 whoever uses this machine)."""
    gone_users: set[str] = set()
    gone_groups: set[str] = set()
    for name, gone in (("passwd", gone_users), ("group", gone_groups)):
        path = Path("/etc") / name
        kept = []
        for line in path.read_text().splitlines(keepends=True):
            fields = line.split(":")
            if len(fields) > 2 and fields[2].isdigit() and int(fields[2]) in REGULAR_IDS:
                gone.add(fields[0])
            else:
                kept.append(line)
        path.write_text("".join(kept))
    for name, gone in (("shadow", gone_users), ("gshadow", gone_groups)):
        path = Path("/etc") / name
        if path.exists():
            lines = path.read_text().splitlines(keepends=True)
            path.write_text("".join(ln for ln in lines if ln.split(":")[0] not in gone))


def _coverage_restart() -> Any:
    """When the tests run under coverage.py: stop the tracer the fork inherited (its data
    is the parent's to save) and measure this child into a data file of its own, which
    `coverage report` combines."""
    try:
        import coverage  # optional: only there when measuring
    except ImportError:
        return None
    parent = coverage.Coverage.current()
    if parent is None:
        return None
    parent.stop()
    child = coverage.Coverage(
        data_file=os.path.abspath(str(parent.get_option("run:data_file"))), data_suffix=True,
        branch=parent.get_option("run:branch"), source=parent.get_option("run:source"),
        include=parent.get_option("run:include"), omit=parent.get_option("run:omit"))
    child.set_option("run:disable_warnings", ["no-data-collected", "module-not-measured",
                                              "module-not-imported"])
    child.start()
    return child


def _outcome(fn: Callable[[], Any], enter: Callable[[], None]) -> tuple[Any, ...]:
    try:
        enter()
    except SandboxUnavailable as exc:
        return ("unavailable", str(exc))
    except Exception as exc:  # half covered: fn must not run
        return ("raised", exc, traceback.format_exc())
    try:
        return ("returned", fn())
    except BaseException as exc:
        return ("raised", exc, traceback.format_exc())


def _child(fn: Callable[[], Any], enter: Callable[[], None], out_fd: int) -> None:
    """Never returns: the child must not run any of pytest's code after fn."""
    status = 70
    try:
        try:
            cov = _coverage_restart()
        except Exception:  # measuring is a bonus: never a reason for a test to fail
            cov = None
        outcome = _outcome(fn, enter)
        try:
            data = pickle.dumps(outcome)
        except Exception:  # an unpicklable result or exception: send its text
            text = "".join(map(str, outcome[1:]))
            data = pickle.dumps(("raised", RuntimeError(f"unpicklable {outcome[0]}: {text}"),
                                 ""))
        with os.fdopen(out_fd, "wb") as out:
            out.write(data)
        if cov is not None:
            cov.stop()
            cov.save()
        status = 0
    finally:
        os._exit(status)


def run(fn: Callable[[], T], scratch: Path) -> T:
    """fn() in a forked child inside the sandbox; its return value, or its exception
    re-raised here (with the child's traceback as a note).  `scratch` is an empty
    directory the child mounts its tmpfs on.  Raises SandboxUnavailable."""
    if _way() != "container":
        return _forked(fn, functools.partial(_enter, scratch))
    kept = _Kept()
    try:
        result = _forked(fn, _enter_container)
    finally:
        kept.put_back()
    return result


def _forked(fn: Callable[[], T], enter: Callable[[], None]) -> T:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(fn, enter, write_fd)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not data:
        raise RuntimeError(f"the sandbox child ended with status {status} and no result")
    outcome = pickle.loads(data)
    if outcome[0] == "unavailable":
        raise SandboxUnavailable(outcome[1])
    if outcome[0] == "raised":
        exc: BaseException = outcome[1]
        exc.add_note(f"raised in the sandbox:\n{outcome[2]}")
        raise exc
    result: T = outcome[1]
    return result


def unavailable_reason() -> str | None:
    """None when a sandbox can be made here, else why not (asked once per session)."""
    way = _way()
    return None if way in ("namespace", "container") else way


@functools.cache
def _way() -> str:
    """How the sandbox is made here: "namespace", "container" (the module docstring),
    or why neither can be."""
    if os.geteuid() != 0:
        return "the sandbox mounts over /etc and runs useradd: needs root"
    for tool in (tools.USERADD, tools.GROUPADD):
        if tool.path is None:
            return tool.reason
    with tempfile.TemporaryDirectory(prefix="sandbox-probe.") as scratch:
        try:
            _forked(lambda: None, functools.partial(_enter, Path(scratch)))
        except SandboxUnavailable as exc:
            if in_ci() and any(mark.exists() for mark in CONTAINER_MARKS):
                return "container"
            return (f"cannot make a private mount namespace here ({exc}), and this is not "
                    "CI (CI=true) in a container of its own, whose accounts could stand in")
    return "namespace"


# -- the throwaway container as the sandbox -----------------------------------------------

def _enter_container() -> None:
    """The child's start in a container: what _enter leaves after its mounts."""
    RUNTIME_ROOT.mkdir(mode=0o755, exist_ok=True)
    _forget_regular_accounts()


class _Kept:
    """What the account tools write, set aside by the parent before fn and put back
    after it, whatever fn did (even when the child died)."""

    def __init__(self) -> None:
        self.watched = _listing()
        self.runtime = set(os.listdir(RUNTIME_ROOT)) if RUNTIME_ROOT.is_dir() else None
        # A second link to each account file keeps its inode: useradd renames a new file
        # over the name, and putting the kept one back restores what `ls -i` showed.
        self.links = Path(tempfile.mkdtemp(prefix=".whaletop-sandbox.", dir="/etc"))
        self.files: dict[Path, tuple[os.stat_result, bytes, Path | None]] = {}
        for path in (*_account_paths(), *LOG_FILES):
            with contextlib.suppress(FileNotFoundError):
                link = None
                if path.parent == Path("/etc"):
                    link = self.links / path.name
                    os.link(path, link)
                self.files[path] = (path.stat(), path.read_bytes(), link)
        self.skel = self.links / "skel"
        if SKEL.exists():
            shutil.copytree(SKEL, self.skel, symlinks=True)

    def put_back(self) -> None:
        for path in (*_account_paths(), *LOG_FILES):
            if path not in self.files:
                path.unlink(missing_ok=True)
        for path, (st, data, link) in self.files.items():
            target = link or path
            with open(target, "r+b" if target.exists() else "wb") as out:
                out.write(data)
                out.truncate()
            os.chown(target, st.st_uid, st.st_gid)
            os.chmod(target, st.st_mode & 0o7777)
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
            if link is not None:
                os.replace(link, path)
        shutil.rmtree(SKEL, ignore_errors=True)
        if self.skel.exists():
            shutil.copytree(self.skel, SKEL, symlinks=True)
        shutil.rmtree(self.links)
        self._runtime_back()
        changed = _differences(self.watched, _listing())
        if changed:
            raise ContainerChanged(f"the sandbox left the container changed: {changed}")

    def _runtime_back(self) -> None:
        if self.runtime is None:
            shutil.rmtree(RUNTIME_ROOT, ignore_errors=True)
            return
        for name in set(os.listdir(RUNTIME_ROOT)) - self.runtime:
            path = RUNTIME_ROOT / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _account_paths() -> list[Path]:
    etc = Path("/etc")
    return [etc / n for n in sorted(os.listdir(etc))
            if n == ".pwd.lock" or n.split(".")[0].rstrip("+-") in ACCOUNT_FILES]


def _listing() -> dict[str, tuple[int, ...]]:
    """Every file and link under WATCHED: type, mode, owner, size, mtime (a folder's
    mtime is left out: adding and removing an entry changes it)."""
    found: dict[str, tuple[int, ...]] = {}
    for top in WATCHED:
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not d.startswith(".whaletop-sandbox.")]
            for name in (*dirs, *files):
                st = os.lstat(os.path.join(folder, name))
                mtime = 0 if name in dirs else st.st_mtime_ns
                found[os.path.join(folder, name)] = (
                    st.st_mode, st.st_uid, st.st_gid, 0 if name in dirs else st.st_size,
                    mtime)
    return found


def _differences(before: dict[str, tuple[int, ...]],
                 after: dict[str, tuple[int, ...]]) -> list[str]:
    return ([f"{p} added" for p in sorted(after.keys() - before.keys())]
            + [f"{p} removed" for p in sorted(before.keys() - after.keys())]
            + [f"{p} changed" for p in sorted(before.keys() & after.keys())
               if before[p] != after[p]])


# -- helpers for code running inside the sandbox ----------------------------------------

def write_skel(files: dict[str, str], links: dict[str, str] | None = None) -> None:
    """Replace /etc/skel (the sandbox's) with these files and symlinks."""
    shutil.rmtree(SKEL, ignore_errors=True)
    SKEL.mkdir()
    for rel, text in files.items():
        (SKEL / rel).parent.mkdir(parents=True, exist_ok=True)
        (SKEL / rel).write_text(text)
    for rel, target in (links or {}).items():
        (SKEL / rel).symlink_to(target)


def tree(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Everything under root: relative path -> (uid, gid, mode, content or link target);
    a folder's content is "/"."""
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            what = "-> " + os.readlink(path)
        elif path.is_dir():
            what = "/"
        else:
            what = path.read_text()
        found[str(path.relative_to(root))] = (st.st_uid, st.st_gid, st.st_mode, what)
    return found


# -- what the machine must keep ---------------------------------------------------------

def _fingerprint(path: Path) -> tuple[int, int, int, str] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    digest = ""
    if st.st_size < 1 << 20:  # lastlog is sparse and can be huge: its stat must do
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return st.st_ino, st.st_size, st.st_mtime_ns, digest


def host_snapshot() -> dict[str, object]:
    """The machine's account files (with their backups, lock and `+` files) and logs:
    contents, inode (a rename over the file changes it) and mtime."""
    etc = Path("/etc")
    names = sorted(n for n in os.listdir(etc)
                   if n == ".pwd.lock" or n.split(".")[0].rstrip("+-") in ACCOUNT_FILES)
    snap: dict[str, object] = {"/etc entries": names}
    for name in names:
        snap[f"/etc/{name}"] = _fingerprint(etc / name)
    for path in LOG_FILES:
        snap[str(path)] = _fingerprint(path)
    # test_provision_account.py makes /run/user/UID for uids from 40000 on the machine
    # itself (and removes them): not the sandbox's doing.
    with contextlib.suppress(FileNotFoundError):
        snap["/run/user entries"] = sorted(
            n for n in os.listdir(RUNTIME_ROOT) if not (n.isdigit() and int(n) >= 40000))
    return snap
