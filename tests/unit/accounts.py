"""A sandbox where the provisioning steps that change the account database run for real
(useradd, groupadd, chown, /run/user/UID) without ever changing this machine's accounts.

`run(fn, scratch)` forks.  The child enters a private mount namespace and lays
copy-on-write overlays over /etc and /var/log and a tmpfs over /run/user, then calls fn
and sends back what it returned or raised (pickled, through a pipe).  Every write lands
in the overlays, which die with the child; the parent never enters the namespace.

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

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]


class SandboxUnavailable(Exception):
    """This kernel or container does not let us make a private mount namespace."""


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


def _outcome(fn: Callable[[], Any], scratch: Path) -> tuple[Any, ...]:
    try:
        _enter(scratch)
    except SandboxUnavailable as exc:
        return ("unavailable", str(exc))
    except Exception as exc:  # half covered: fn must not run
        return ("raised", exc, traceback.format_exc())
    try:
        return ("returned", fn())
    except BaseException as exc:
        return ("raised", exc, traceback.format_exc())


def _child(fn: Callable[[], Any], scratch: Path, out_fd: int) -> None:
    """Never returns: the child must not run any of pytest's code after fn."""
    status = 70
    try:
        try:
            cov = _coverage_restart()
        except Exception:  # measuring is a bonus: never a reason for a test to fail
            cov = None
        outcome = _outcome(fn, scratch)
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
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(fn, scratch, write_fd)
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


@functools.cache
def unavailable_reason() -> str | None:
    """None when a sandbox can be made here, else why not (asked once per session)."""
    if os.geteuid() != 0:
        return "the sandbox mounts over /etc and runs useradd: needs root"
    for tool in (tools.USERADD, tools.GROUPADD):
        if tool.path is None:
            return tool.reason
    with tempfile.TemporaryDirectory(prefix="sandbox-probe.") as scratch:
        try:
            run(lambda: None, Path(scratch))
        except SandboxUnavailable as exc:
            return f"cannot make a private mount namespace here: {exc}"
    return None


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
