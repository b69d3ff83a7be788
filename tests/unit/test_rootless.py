"""The desktop user when whaletopd is not root: each case runs in a forked child that
really is another uid (as `docker run --user` makes it), on folders in tmp_path."""

from __future__ import annotations

import os
import pickle
import shutil
import stat
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from whaletopd import rootless
from whaletopd.config import Config
from whaletopd.paths import Paths

from .. import tools

T = TypeVar("T")
UID, GID = 54321, 54322  # no entry in this machine's /etc/passwd or /etc/group
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="becomes another uid: needs root")


def as_user(fn: Callable[[], T], uid: int = UID, gid: int = GID) -> T:
    """fn's result (or exception) in a child that runs as uid:gid with no other groups."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            result: Any = ("ok", fn())
        except BaseException as exc:
            result = ("raised", exc if _picklable(exc) else RuntimeError(
                traceback.format_exc()))
        with os.fdopen(write, "wb") as out:
            pickle.dump(result, out)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as inp:
        kind, value = pickle.load(inp)
    os.waitpid(pid, 0)
    if kind == "raised":
        raise value
    return value  # type: ignore[no-any-return]


def _picklable(exc: BaseException) -> bool:
    try:
        pickle.dumps(exc)
    except Exception:
        return False
    return True


@pytest.fixture
def base() -> Iterator[Path]:
    """A folder the other uid can reach (pytest's own are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="whaletop-rootless-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def paths(base: Path) -> Paths:
    """The image's folders: open to any uid, sticky."""
    tmp_path = base
    p = Paths(state_dir=tmp_path / "opt", run_dir=tmp_path / "run",
              x11_socket_dir=tmp_path / "tmp" / ".X11-unix", x_lock_dir=tmp_path / "tmp",
              home_root=tmp_path / "home", applications_dir=tmp_path / "run" / "menu" / "a")
    for folder in (p.state_dir, p.run_dir, p.home_root, p.x_lock_dir):
        folder.mkdir()
        folder.chmod(0o1777)
    return p


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_uid_without_an_account_gets_a_desktop_user_with_a_name(paths: Paths) -> None:
    def inside() -> Any:
        rootless.prepare_dirs(paths)
        return rootless.desktop_user(Config(username="alice"), paths)

    run_as, env, done = as_user(inside)
    home = paths.home_root / "alice"
    assert (run_as.uid, run_as.gid, run_as.groups, run_as.home) == (UID, GID, (), str(home))
    assert (home.stat().st_uid, home.stat().st_gid) == (UID, GID)
    assert (home / ".bashrc").is_file(), "the fresh home got /etc/skel's files"
    assert env["LD_PRELOAD"] == "libnss_wrapper.so"
    passwd = Path(env["NSS_WRAPPER_PASSWD"]).read_text().splitlines()
    assert f"alice:x:{UID}:{GID}:whaletop desktop user:{home}:/bin/bash" in passwd
    assert passwd[0].startswith("root:x:0:0:"), "the image's accounts are kept"
    group = Path(env["NSS_WRAPPER_GROUP"]).read_text().splitlines()
    assert f"alice:x:{GID}:" in group
    assert "no sudo: the container does not run as root" in done


def test_the_names_work_for_a_real_program(paths: Paths) -> None:
    """What bash's prompt and dbus ask: who am I?"""
    import subprocess

    def inside() -> str:
        rootless.prepare_dirs(paths)
        _, env, _ = rootless.desktop_user(Config(username="alice"), paths)
        return subprocess.run(["id", "-un"], env={**env, "PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, check=True).stdout.strip()

    tools.NSS_WRAPPER.require()
    assert as_user(inside) == "alice"


def test_openshift_group_zero_is_kept_and_not_added(paths: Paths) -> None:
    """An arbitrary uid in group 0: the root group exists, no second entry is made."""
    def inside() -> Any:
        rootless.prepare_dirs(paths)
        return rootless.desktop_user(Config(), paths)

    run_as, env, _ = as_user(inside, uid=1000620000, gid=0)
    assert (run_as.uid, run_as.gid) == (1000620000, 0)
    group = Path(env["NSS_WRAPPER_GROUP"]).read_text().splitlines()
    assert [line for line in group if line.split(":")[2] == "0"] == ["root:x:0:"]


@pytest.mark.parametrize(("flag", "value"), [("uid", 1000), ("gid", 1000)])
def test_a_uid_or_gid_flag_other_than_the_containers_is_refused(
        paths: Paths, flag: str, value: int) -> None:
    config = Config(**{flag: value})  # type: ignore[arg-type]
    with pytest.raises(rootless.RootlessError) as err:
        as_user(lambda: rootless.desktop_user(config, paths))
    assert str(err.value).startswith(f"--{flag} {value}: the container runs as {flag} ")
    assert not (paths.home_root / "user").exists(), "nothing made before refusing"


def test_a_home_it_cannot_write_is_refused_and_left_alone(paths: Paths) -> None:
    home = paths.home_root / "user"
    home.mkdir()
    (home / "notes.txt").write_text("root's\n")
    home.chmod(0o755)
    with pytest.raises(rootless.RootlessError) as err:
        as_user(lambda: rootless.desktop_user(Config(), paths))
    assert str(err.value) == (
        f"the home {home} (owner uid 0, gid 0, mode 0755) is not writable by uid {UID} "
        f"(gid {GID}): make it writable by uid {UID} or by group 0 (OpenShift's convention)")
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]


def test_someone_elses_home_names_its_owner(paths: Paths) -> None:
    home = paths.home_root / "user"
    home.mkdir(mode=0o700)
    os.chown(home, 1000, 1000)
    with pytest.raises(rootless.RootlessError, match=r"run the container as its owner "
                       r"\(--user 1000:1000\)"):
        as_user(lambda: rootless.desktop_user(Config(), paths))


def test_a_home_writable_through_group_zero_is_used_as_it_is(paths: Paths) -> None:
    home = paths.home_root / "user"
    home.mkdir()
    (home / "work.txt").write_text("kept\n")
    home.chmod(0o2775)
    run_as, _, done = as_user(lambda: rootless.desktop_user(Config(), paths), gid=0)
    assert run_as.home == str(home)
    assert (home.stat().st_uid, _mode(home)) == (0, 0o2775), "nothing re-owned or re-moded"
    assert not (home / ".bashrc").exists(), "a home in use gets no default files"
    assert done == ["named uid 54321 'user' through nss_wrapper",
                    "no sudo: the container does not run as root"]


def test_a_state_folder_it_cannot_write_is_named_with_the_fix(paths: Paths) -> None:
    paths.state_dir.chmod(0o755)
    with pytest.raises(rootless.RootlessError) as err:
        as_user(lambda: rootless.prepare_dirs(paths))
    assert str(err.value) == (
        f"{paths.state_dir} is not writable by uid {UID}: mount it writable "
        f"(--tmpfs {paths.state_dir} or a volume)")


def test_a_run_folder_it_cannot_make_is_named_with_the_fix(paths: Paths) -> None:
    paths.run_dir.rmdir()
    paths.run_dir.parent.chmod(0o755)
    with pytest.raises(rootless.RootlessError) as err:
        as_user(lambda: rootless.prepare_dirs(paths))
    assert str(err.value) == (
        f"cannot create {paths.run_dir} as uid {UID} (Permission denied): mount it "
        f"writable (--tmpfs {paths.run_dir})")


def test_its_own_folders_are_closed(paths: Paths) -> None:
    paths.run_dir.rmdir()
    paths.run_dir.parent.chmod(0o1777)
    as_user(lambda: rootless.prepare_dirs(paths))
    assert _mode(paths.run_dir) == 0o700
    assert _mode(paths.x11_socket_dir) == 0o1777
    assert _mode(paths.state_dir) == 0o1777, "the image's folder: not ours to change"
