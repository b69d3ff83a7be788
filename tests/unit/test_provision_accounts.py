"""The provisioning steps that change the account database, run for real (useradd,
groupadd, usermod, vncpasswd, chown) inside the sandbox of accounts.py: a forked child in
a private mount namespace with copy-on-write /etc, /var/log and /run/user (or, in CI's
throwaway container where root may not mount, that container with its account files put
back after each test).  Each test's `inside()` runs there and returns what the test
checks; the machine's own accounts are checked to be untouched after every test.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
from structlog.testing import capture_logs

from tests.unit import accounts
from whaletopd import provision
from whaletopd.children import RunAs
from whaletopd.config import Config
from whaletopd.paths import Paths
from whaletopd.provision import ProvisionError

from .. import tools

T = TypeVar("T")
Sandbox = Callable[[Callable[[], T]], T]

DISPLAY = 1
NAME = "alice"
SKEL_FILES = {
    ".bashrc": "# the image's bashrc\n",
    ".profile": "# the image's profile\n",
    ".config/lxterminal/lxterminal.conf": "[general]\nfontname=Monospace 10\n",
}
SKEL_LINKS = {".face": "/usr/share/pixmaps/debian-logo.png"}
needs_vncpasswd = tools.VNCPASSWD.needed


@pytest.fixture(autouse=True)
def _machine_accounts_untouched() -> Iterator[None]:
    """Whatever a test does in its sandbox, the machine's account files, their backups
    and lock files, lastlog/faillog and /run/user are as they were."""
    before = accounts.host_snapshot()
    yield
    assert accounts.host_snapshot() == before, "the sandbox leaked into the machine"


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox[Any]:
    reason = accounts.unavailable_reason()
    if reason:
        pytest.skip(reason)
    scratch = tmp_path / "sandbox"
    scratch.mkdir()

    def run(fn: Callable[[], T]) -> T:
        return accounts.run(fn, scratch)
    return run


def _mode(path: Path | str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _owner(path: Path | str) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def _sh(*argv: str) -> None:
    """An operator's command in the sandbox (useradd, groupadd, usermod)."""
    subprocess.run(argv, check=True, capture_output=True)


def _account(name: str) -> dict[str, Any] | None:
    """The user as the sandbox's account database has it."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return {"uid": entry.pw_uid, "gid": entry.pw_gid, "home": entry.pw_dir,
            "shell": entry.pw_shell, "group": grp.getgrgid(entry.pw_gid).gr_name}


def _group_gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _lines_naming(path: str, name: str) -> list[str]:
    return [ln for ln in Path(path).read_text().splitlines() if ln.split(":")[0] == name]


def _home(paths: Paths) -> Path:
    return paths.home_root / NAME


# -- the sandbox itself -----------------------------------------------------------------

def test_the_sandbox_changes_the_account_database_and_the_machine_keeps_its_own(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    name = "wtprobe"
    with pytest.raises(KeyError):
        pwd.getpwnam(name)  # the machine has no such user, so its absence after proves it
    passwd_before = Path("/etc/passwd").read_bytes()
    runtime_before = set(os.listdir("/run/user")) if os.path.isdir("/run/user") else set()

    def inside() -> tuple[bytes, int, bool]:
        run_as, _ = provision.ensure_user(Config(username=name), paths)
        provision.runtime_dir(run_as, paths)
        return (Path("/etc/passwd").read_bytes(), pwd.getpwnam(name).pw_uid,
                os.path.isdir(f"/run/user/{run_as.uid}"))

    passwd_inside, uid, runtime_made = sandbox(inside)
    assert f"\n{name}:x:{uid}:".encode() in passwd_inside, "useradd did not run in the sandbox"
    assert runtime_made
    assert Path("/etc/passwd").read_bytes() == passwd_before
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    with pytest.raises(KeyError):
        grp.getgrnam(name)
    if str(uid) not in runtime_before:
        assert not os.path.exists(f"/run/user/{uid}")


def test_the_sandbox_starts_as_a_fresh_container(sandbox: Sandbox[Any]) -> None:
    """The machine's people are not there (the first free uid is 1000), its system
    accounts are."""
    regular, root = sandbox(lambda: (
        [e.pw_name for e in pwd.getpwall() if e.pw_uid in accounts.REGULAR_IDS],
        pwd.getpwuid(0).pw_name))
    assert regular == []
    assert root == "root"


def test_what_the_sandbox_raises_is_raised_here(sandbox: Sandbox[Any]) -> None:
    def inside() -> None:
        raise ProvisionError("from the child")
    with pytest.raises(ProvisionError, match="from the child") as caught:
        sandbox(inside)
    assert any("raised in the sandbox" in note for note in caught.value.__notes__)


# -- a first start ----------------------------------------------------------------------

def test_a_fresh_user_gets_uid_1000_its_own_group_and_a_home_from_skel(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    def inside() -> Any:
        accounts.write_skel(SKEL_FILES, SKEL_LINKS)
        run_as, done = provision.ensure_user(Config(username=NAME), paths)
        home = _home(paths)
        return (run_as, done, _account(NAME), _mode(home), _owner(home), accounts.tree(home),
                _lines_naming("/etc/shadow", NAME))

    run_as, done, account, mode, owner, home_tree, shadow = sandbox(inside)
    home = str(_home(paths))
    assert account == {"uid": 1000, "gid": 1000, "home": home, "shell": "/bin/bash",
                       "group": NAME}
    assert run_as == RunAs(uid=1000, gid=1000, groups=(), home=home)
    assert len(shadow) == 1, "useradd wrote no shadow entry"
    assert mode == 0o755
    assert owner == (1000, 1000)
    assert {rel: (uid, gid, what) for rel, (uid, gid, _, what) in home_tree.items()} == {
        ".bashrc": (1000, 1000, SKEL_FILES[".bashrc"]),
        ".profile": (1000, 1000, SKEL_FILES[".profile"]),
        ".config": (1000, 1000, "/"),
        ".config/lxterminal": (1000, 1000, "/"),
        ".config/lxterminal/lxterminal.conf":
            (1000, 1000, SKEL_FILES[".config/lxterminal/lxterminal.conf"]),
        ".face": (1000, 1000, "-> " + SKEL_LINKS[".face"]),  # the link, not its target
    }
    assert done == [f"created user {NAME} (uid 1000, gid 1000)", f"created {home}",
                    f"added missing default files from {provision.SKEL}"]


def test_the_next_free_uid_when_1000_is_taken(sandbox: Sandbox[Any], paths: Paths) -> None:
    def inside() -> Any:
        _sh("useradd", "--uid", "1000", "--no-create-home", "bob")
        _sh("useradd", "--uid", "1001", "--no-create-home", "carol")
        provision.ensure_user(Config(username=NAME), paths)
        return _account(NAME), _account("bob")

    account, bob = sandbox(inside)
    assert (account["uid"], account["gid"], account["group"]) == (1002, 1002, NAME)
    assert bob["uid"] == 1000


def test_a_mounted_home_gives_its_owner_and_nothing_in_it_is_re_owned(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    home = _home(paths)
    (home / ".config" / "chromium").mkdir(parents=True)
    (home / ".bashrc").write_text("# mine\n")
    (home / "notes.txt").write_text("keep\n")
    (home / ".config" / "chromium" / "Preferences").write_text("{}")
    for path in (home, *home.rglob("*")):
        os.lchown(path, 1234, 1234)
    os.lchown(home / "notes.txt", 4321, 4321)  # someone else's file in the home: theirs
    before = accounts.tree(home)

    def inside() -> Any:
        accounts.write_skel(SKEL_FILES)
        run_as, done = provision.ensure_user(Config(username=NAME), paths)
        return run_as, done, _account(NAME)

    run_as, done, account = sandbox(inside)
    assert (run_as.uid, run_as.gid) == (1234, 1234)
    assert _owner(home) == (1234, 1234)
    assert (account["uid"], account["gid"], account["group"]) == (1234, 1234, NAME)
    after = accounts.tree(home)
    assert {rel: after[rel] for rel in before} == before, "something in the home changed"
    # Only what the home lacked came from skel, owned by the user.
    assert sorted(set(after) - set(before)) == [".config/lxterminal",
                                               ".config/lxterminal/lxterminal.conf",
                                               ".profile"]
    assert after[".profile"][:2] == (1234, 1234)
    assert not any("created /" in d or "ownership" in d for d in done), done


def test_an_empty_root_owned_mount_point_becomes_the_users(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    home = _home(paths)
    home.mkdir(parents=True)
    home.chmod(0o755)

    def inside() -> Any:
        accounts.write_skel({".profile": "# p\n"})
        return provision.ensure_user(Config(username=NAME), paths)

    run_as, done = sandbox(inside)
    assert (run_as.uid, run_as.gid) == (1000, 1000), "root's ownership is nobody's: default ids"
    assert _owner(home) == (1000, 1000)
    assert _owner(home / ".profile") == (1000, 1000)
    assert f"took ownership of {home} (not its contents)" in done


def _roots_folder(paths: Paths) -> Path:
    """A host folder of root's, with files in it, mounted as the home."""
    home = _home(paths)
    (home / "lost+found").mkdir(parents=True)
    (home / "README").write_text("root's\n")
    home.chmod(0o750)
    return home


def test_a_root_owned_home_with_files_is_refused_and_left_as_it_is(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    home = _roots_folder(paths)
    before = (_owner(home), _mode(home), accounts.tree(home))

    def inside() -> Any:
        accounts.write_skel({".profile": "# p\n"})
        with pytest.raises(ProvisionError) as caught:
            provision.ensure_user(Config(username=NAME), paths)
        return str(caught.value), _account(NAME), _group_gid(NAME)

    message, account, group = sandbox(inside)
    assert message.startswith(f"{home} is root's and not empty")
    assert "--uid and --gid" in message
    assert "chown the folder on the host" in message
    assert "\n" not in message
    assert (account, group) == (None, None)
    assert (_owner(home), _mode(home), accounts.tree(home)) == before


def test_a_root_owned_home_with_files_is_refused_even_with_both_flags(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    """A home the user could not write is no desktop: the flags do not make it one."""
    home = _roots_folder(paths)
    before = (_owner(home), _mode(home), accounts.tree(home))

    def inside() -> str:
        with pytest.raises(provision.ProvisionError) as err:
            provision.ensure_user(Config(username=NAME, uid=2000, gid=2000), paths)
        return str(err.value)

    assert sandbox(inside).startswith(f"{home} is root's and not empty")
    assert (_owner(home), _mode(home), accounts.tree(home)) == before


@pytest.mark.parametrize(("gid", "group"), [(0, "root"), (42, "shadow")])
def test_a_home_of_a_system_group_is_refused_and_nothing_made(
        sandbox: Sandbox[Any], paths: Paths, gid: int, group: str) -> None:
    home = _home(paths)
    home.mkdir(parents=True)
    (home / "notes.txt").write_text("mine\n")
    for path in (home, home / "notes.txt"):
        os.chown(path, 1234, gid)
    before = accounts.tree(home)

    def inside() -> Any:
        with pytest.raises(ProvisionError) as caught:
            provision.ensure_user(Config(username=NAME), paths)
        return str(caught.value), _account(NAME), _group_gid(NAME)

    message, account, own_group = sandbox(inside)
    assert message.startswith(f"{home} belongs to group {group!r} (gid {gid}), a system group")
    assert "--gid 1000" in message
    assert (account, own_group) == (None, None)
    assert _owner(home) == (1234, gid)
    assert accounts.tree(home) == before


def test_a_gid_flag_overrides_a_homes_system_group(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    home = _home(paths)
    home.mkdir(parents=True)
    os.chown(home, 1234, 42)

    run_as, _ = sandbox(lambda: provision.ensure_user(Config(username=NAME, gid=1000), paths))
    assert (run_as.uid, run_as.gid) == (1234, 1000)
    assert _owner(home) == (1234, 42), "the home was re-owned"


def test_uid_and_gid_flags_are_used_and_a_group_made_for_the_gid(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    def inside() -> Any:
        provision.ensure_user(Config(username=NAME, uid=2345, gid=3456), paths)
        return _account(NAME), _owner(_home(paths))

    account, owner = sandbox(inside)
    assert (account["uid"], account["gid"], account["group"]) == (2345, 3456, NAME)
    assert owner == (2345, 3456)


def test_a_gid_flag_naming_an_existing_group_joins_it(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    def inside() -> Any:
        groups_before = len(grp.getgrall())
        provision.ensure_user(Config(username=NAME, gid=100), paths)
        return _account(NAME), _group_gid(NAME), len(grp.getgrall()) - groups_before

    account, own_group, new_groups = sandbox(inside)
    assert (account["uid"], account["gid"], account["group"]) == (1000, 100, "users")
    assert own_group is None
    assert new_groups == 0


def test_flags_beat_the_mounted_homes_owner_and_the_home_is_left_as_it_is(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    home = _home(paths)
    home.mkdir(parents=True)
    (home / "data").write_text("x")
    os.chown(home, 1234, 1234)
    os.chown(home / "data", 1234, 1234)

    run_as, _ = sandbox(lambda: provision.ensure_user(
        Config(username=NAME, uid=2000, gid=2000), paths))
    assert (run_as.uid, run_as.gid) == (2000, 2000)
    assert _owner(home) == (1234, 1234)
    assert _owner(home / "data") == (1234, 1234)


def test_a_group_name_taken_by_another_gid_gives_a_group_named_with_the_gid(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    def inside() -> Any:
        _sh("groupadd", "--gid", "1500", NAME)
        provision.ensure_user(Config(username=NAME), paths)
        return _account(NAME), _group_gid(NAME), _group_gid(f"{NAME}1000")

    account, taken, made = sandbox(inside)
    assert (account["uid"], account["gid"], account["group"]) == (1000, 1000, f"{NAME}1000")
    assert taken == 1500, "the existing group was changed"
    assert made == 1000


def test_without_skel_the_home_is_created_empty(sandbox: Sandbox[Any], paths: Paths) -> None:
    def inside() -> Any:
        shutil.rmtree(provision.SKEL)
        run_as, _ = provision.ensure_user(Config(username=NAME), paths)
        return run_as

    run_as = sandbox(inside)
    assert run_as.uid == 1000
    assert os.listdir(_home(paths)) == []
    assert _owner(_home(paths)) == (1000, 1000)


# -- a restart (same container, user already there) -------------------------------------

def test_a_restart_changes_nothing_and_keeps_what_the_user_changed(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    db = ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow")

    def inside() -> Any:
        accounts.write_skel(SKEL_FILES)
        first, _ = provision.ensure_user(Config(username=NAME), paths)
        home = _home(paths)
        (home / ".bashrc").write_text("# edited\n")
        (home / ".profile").unlink()  # the user deleted it: it stays deleted
        # An operator's change; a member of its own group is still in it only once.
        _sh("usermod", "--append", "--groups", f"audio,{NAME}", NAME)
        files = {path: Path(path).read_bytes() for path in db}
        again, done = provision.ensure_user(Config(username=NAME, uid=1000, gid=1000), paths)
        unchanged = [path for path in db if Path(path).read_bytes() == files[path]]
        return (first, again, done, unchanged, accounts.tree(home),
                _lines_naming("/etc/passwd", NAME), grp.getgrnam("audio").gr_gid)

    first, again, done, unchanged, home_tree, entries, audio = sandbox(inside)
    assert done == []
    assert unchanged == list(db), "the second run wrote to the account database"
    assert len(entries) == 1
    assert again == RunAs(uid=first.uid, gid=first.gid, groups=(audio,), home=first.home)
    assert home_tree[".bashrc"][3] == "# edited\n"
    assert ".profile" not in home_tree


# -- refusals ---------------------------------------------------------------------------

def test_a_uid_flag_held_by_another_account_is_refused_and_nothing_made(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    def inside() -> Any:
        _sh("useradd", "--uid", "1500", "--no-create-home", "bob")
        with pytest.raises(ProvisionError) as caught:
            provision.ensure_user(Config(username=NAME, uid=1500), paths)
        return str(caught.value), _account(NAME), _group_gid(NAME)

    message, account, group = sandbox(inside)
    assert message == "uid 1500 already belongs to account 'bob'; choose another --uid"
    assert account is None
    assert group is None
    assert not _home(paths).exists()


@pytest.mark.parametrize("flag", ["uid", "gid"])
def test_an_existing_user_with_other_ids_than_the_flags_is_refused(
        sandbox: Sandbox[Any], paths: Paths, flag: str) -> None:
    flagged = {"uid": Config(username=NAME, uid=1001),
               "gid": Config(username=NAME, gid=1001)}[flag]

    def inside() -> Any:
        provision.ensure_user(Config(username=NAME), paths)
        with pytest.raises(ProvisionError) as caught:
            provision.ensure_user(flagged, paths)
        return str(caught.value), _account(NAME), _owner(_home(paths))

    message, account, owner = sandbox(inside)
    assert message == (f"--{flag} 1001: user {NAME} already exists here with {flag} 1000; "
                       "remove the container to change it")
    assert (account["uid"], account["gid"]) == (1000, 1000)
    assert owner == (1000, 1000), "the home was re-owned"


@pytest.mark.parametrize("kind", ["file", "symlink to a folder"])
def test_a_home_that_is_not_a_folder_is_refused_before_the_user_is_made(
        sandbox: Sandbox[Any], paths: Paths, tmp_path: Path, kind: str) -> None:
    home = _home(paths)
    paths.home_root.mkdir()
    if kind == "file":
        home.write_text("not a home\n")
    else:
        (tmp_path / "elsewhere").mkdir()
        home.symlink_to(tmp_path / "elsewhere")

    def inside() -> Any:
        with pytest.raises(ProvisionError) as caught:
            provision.ensure_user(Config(username=NAME), paths)
        return str(caught.value), _account(NAME)

    message, account = sandbox(inside)
    assert message == f"{home} exists and is not a directory"
    assert account is None
    if kind == "file":
        assert home.read_text() == "not a home\n"
    else:
        assert home.is_symlink()
        assert os.listdir(tmp_path / "elsewhere") == []


def test_a_name_the_tools_refuse_is_a_provision_error_with_their_message(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    def inside() -> Any:
        with pytest.raises(ProvisionError) as caught:
            provision.ensure_user(Config(username="Bad Name"), paths)
        return str(caught.value)

    message = sandbox(inside)
    assert message.startswith("groupadd -g failed (")
    assert "Bad Name" in message, "the tool's own message is missing"


# -- the runtime folder and the children's environment ------------------------------------

def test_the_runtime_folder_is_private_to_the_user(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    def inside() -> Any:
        run_as, _ = provision.ensure_user(Config(username=NAME), paths)
        left = Path(f"/run/user/{run_as.uid}")
        left.mkdir(mode=0o777)
        left.chmod(0o777)  # a restarted container's, left open
        (left / "kept").write_text("x")
        path = provision.runtime_dir(run_as, paths)
        return path, _mode(path), _owner(path), (Path(path) / "kept").read_text()

    path, mode, owner, kept = sandbox(inside)
    assert path == "/run/user/1000"
    assert mode == 0o700
    assert owner == (1000, 1000)
    assert kept == "x"


def test_a_new_runtime_folder_is_made(sandbox: Sandbox[Any], paths: Paths) -> None:
    run_as = RunAs(uid=1000, gid=1000, groups=(), home="/nowhere")

    def inside() -> Any:
        existed = os.path.exists("/run/user/1000")
        path = provision.runtime_dir(run_as, paths)
        return existed, _mode(path), _owner(path)

    assert sandbox(inside) == (False, 0o700, (1000, 1000))


# -- the VNC password files (no account database change: run here, as root) --------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="write_password chowns: needs root")
RUN_AS = RunAs(uid=1234, gid=2345, groups=(), home="/nowhere")


def _vnc_decrypt(block: bytes) -> bytes:
    """The password in an 8-byte block of a VNC password file: DES with VNC's fixed key
    (each byte's bits reversed, as VNC's d3des takes them)."""
    try:
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    except ImportError:  # cryptography < 43
        from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    key = bytes(int(f"{b:08b}"[::-1], 2) for b in (23, 82, 107, 6, 35, 78, 88, 7))
    decryptor = Cipher(TripleDES(key * 3), modes.ECB()).decryptor()
    return (decryptor.update(block) + decryptor.finalize()).rstrip(b"\0")


@needs_root
def test_the_plain_password_file_is_roots_alone(paths: Paths) -> None:
    provision.prepare_dirs(paths)
    if tools.VNCPASSWD.path is None:  # only the obfuscated file needs it
        with pytest.raises(ProvisionError, match="vncpasswd"):
            provision.write_password("hunter22", paths, RUN_AS)
    else:
        provision.write_password("hunter22", paths, RUN_AS)
    assert paths.vnc_passwd.read_text() == "hunter22\n"
    assert _mode(paths.vnc_passwd) == 0o600
    assert _owner(paths.vnc_passwd) == (0, 0)


@needs_root
def test_without_vncpasswd_the_error_names_it(paths: Paths, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    provision.prepare_dirs(paths)
    (tmp_path / "empty-bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(ProvisionError, match=r"^vncpasswd: No such file or directory$"):
        provision.write_password("hunter22", paths, RUN_AS)
    assert not paths.vnc_auth.exists()


@needs_root
@needs_vncpasswd
@pytest.mark.parametrize(("password", "checked"), [
    ("hunter22", b"hunter22"),
    ("s3cret", b"s3cret"),
    ("correct-horse-battery", b"correct-"),  # VNC uses the first 8 characters
])
def test_the_obfuscated_file_is_the_users_and_holds_the_password(
        paths: Paths, password: str, checked: bytes) -> None:
    provision.prepare_dirs(paths)
    provision.write_password(password, paths, RUN_AS)
    data = paths.vnc_auth.read_bytes()
    assert _mode(paths.vnc_auth) == 0o600
    assert _owner(paths.vnc_auth) == (RUN_AS.uid, RUN_AS.gid)
    assert password[:6].encode() not in data, "the password is in clear text"
    assert _vnc_decrypt(data[:8]) == checked
    # One password: no view-only one (a second block would let its holder in too).
    assert len(data) == 8
    assert not paths.vnc_view_only_passwd.exists()


@needs_root
@needs_vncpasswd
def test_a_view_only_password_is_the_second_block_and_differs(paths: Paths) -> None:
    """vncpasswd -f: the full password, then the view-only one.  Feeding it the full
    password twice made the view-only password equal to the full one."""
    provision.prepare_dirs(paths)
    provision.write_password("hunter22", paths, RUN_AS, view_only="watcher1")
    data = paths.vnc_auth.read_bytes()
    assert len(data) == 16
    assert _vnc_decrypt(data[:8]) == b"hunter22"
    assert _vnc_decrypt(data[8:]) == b"watcher1"
    assert _owner(paths.vnc_auth) == (RUN_AS.uid, RUN_AS.gid)
    assert b"watcher" not in data, "the password is in clear text"
    # For root (docker exec), like the full password.
    assert paths.vnc_view_only_passwd.read_text() == "watcher1\n"
    assert _mode(paths.vnc_view_only_passwd) == 0o600
    assert _owner(paths.vnc_view_only_passwd) == (0, 0)


@needs_root
@needs_vncpasswd
def test_a_view_only_password_dropped_at_the_next_start_is_gone(paths: Paths) -> None:
    provision.prepare_dirs(paths)
    provision.write_password("hunter22", paths, RUN_AS, view_only="watcher1")
    provision.write_password("second22", paths, RUN_AS)
    data = paths.vnc_auth.read_bytes()
    assert len(data) == 8, "the old view-only password would still let its holder watch"
    assert _vnc_decrypt(data) == b"second22"
    assert not paths.vnc_view_only_passwd.exists()


@needs_root
@needs_vncpasswd
def test_a_new_password_replaces_both_files(paths: Paths) -> None:
    provision.prepare_dirs(paths)
    provision.write_password("first111", paths, RUN_AS)
    provision.write_password("second22", paths, RUN_AS)
    assert paths.vnc_passwd.read_text() == "second22\n"
    assert _vnc_decrypt(paths.vnc_auth.read_bytes()[:8]) == b"second22"
    assert sorted(os.listdir(paths.run_dir)) == ["vncauth"], "a temporary file was left"


# -- provision(), end to end ------------------------------------------------------------

STEPS = ["prepare_dirs", "clear_stale_x_lock", "ensure_user", "clear_session_leftovers",
         "configure_sudo", "vnc_password", "x_cookie"]


Logged = list[MutableMapping[str, Any]]


def _provisioning(paths: Paths, config: Config, env: dict[str, str] | None = None,
                  ) -> Callable[[], tuple[provision.Account, Logged]]:
    """provision() to run in the sandbox: it returns the account and the log lines
    (captured in the child, where they are logged)."""
    def inside() -> tuple[provision.Account, Logged]:
        os.environ.update(env or {})
        with capture_logs() as captured:
            account = provision.provision(config, paths, DISPLAY)
        return account, captured
    return inside


@needs_vncpasswd
def test_provision_logs_each_step_and_the_generated_password(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    account, lines = sandbox(_provisioning(paths, Config(username=NAME)))
    steps = [line for line in lines if line["event"] == "step"]
    assert [line["step"] for line in steps] == STEPS
    assert all(line["log_level"] == "info" and line["duration_ms"] >= 0 for line in steps)
    ensure = steps[STEPS.index("ensure_user")]
    assert ensure["username"] == NAME
    assert ensure["done"][0] == f"created user {NAME} (uid 1000, gid 1000)"
    assert steps[STEPS.index("configure_sudo")]["result"] == "password-less sudo granted"
    announced = [line for line in lines if line["event"] == "vnc_password"]
    assert announced == [{"event": "vnc_password", "password": account.password,
                          "file": str(paths.vnc_passwd), "log_level": "info",
                          "component": "whaletopd"}]
    assert not any(line["event"] == "vnc_password_truncated" for line in lines)
    assert len(account.password) == 8
    assert paths.vnc_passwd.read_text() == account.password + "\n"
    assert _vnc_decrypt(paths.vnc_auth.read_bytes()[:8]) == account.password.encode()
    assert len(paths.vnc_auth.read_bytes()) == 8, "no view-only password without sign-in"
    assert account.view_only_password is None
    assert not paths.vnc_view_only_passwd.exists()
    assert _owner(paths.vnc_auth) == (1000, 1000)
    # The X display's cookie: the desktop user's alone, named to the children.
    assert (_owner(paths.xauthority), _mode(paths.xauthority)) == ((1000, 1000), 0o600)
    assert (_owner(paths.xauthority.parent), _mode(paths.xauthority.parent)) == (
        (1000, 1000), 0o700)
    assert account.env["XAUTHORITY"] == str(paths.xauthority)
    assert paths.sudoers_file.read_text() == f"{NAME} ALL=(ALL:ALL) NOPASSWD: ALL\n"
    assert account.run_as == RunAs(uid=1000, gid=1000, groups=(), home=str(_home(paths)))


@needs_vncpasswd
@pytest.mark.parametrize("password", ["s3cret", "hunter22"])
def test_a_supplied_password_is_never_logged(
        sandbox: Sandbox[Any], paths: Paths, password: str) -> None:
    account, lines = sandbox(_provisioning(paths, Config(username=NAME, vnc_password=password)))
    assert account.password == password
    assert [line["step"] for line in lines if line["event"] == "step"] == STEPS
    assert not any(line["event"].startswith("vnc_password") for line in lines), lines
    assert password not in repr(lines)
    assert paths.vnc_passwd.read_text() == password + "\n"


@needs_vncpasswd
def test_with_sign_in_a_view_only_password_is_generated_and_never_logged(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    """Viewers get it from the sign-in service, never typed: nobody needs to read it."""
    config = Config(username=NAME, web_password_from_env=True, web_password="correct horse")
    account, lines = sandbox(_provisioning(paths, config))
    view_only = account.view_only_password
    assert view_only is not None
    assert len(view_only) == 8
    assert view_only != account.password
    assert view_only not in repr(lines)
    data = paths.vnc_auth.read_bytes()
    assert len(data) == 16
    assert _vnc_decrypt(data[:8]) == account.password.encode()
    assert _vnc_decrypt(data[8:]) == view_only.encode()
    assert paths.vnc_view_only_passwd.read_text() == view_only + "\n"


@needs_vncpasswd
def test_a_supplied_view_only_password_is_used_and_never_logged(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    config = Config(username=NAME, view_only_password="watcher1")
    account, lines = sandbox(_provisioning(paths, config))
    assert account.view_only_password == "watcher1"
    assert "watcher1" not in repr(lines)
    data = paths.vnc_auth.read_bytes()
    assert len(data) == 16
    assert _vnc_decrypt(data[8:]) == b"watcher1"
    # The generated full password is still announced, as without a view-only one.
    assert [line["password"] for line in lines if line["event"] == "vnc_password"] == [
        account.password]


@needs_vncpasswd
def test_a_long_supplied_password_is_warned_about_not_logged(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    password = "correct-horse-battery"
    account, lines = sandbox(_provisioning(paths, Config(username=NAME, vnc_password=password)))
    warned = [line for line in lines if line["event"] == "vnc_password_truncated"]
    assert warned == [{"event": "vnc_password_truncated", "length": len(password),
                       "reason": "VNC authentication uses only the first 8 characters",
                       "log_level": "warning", "component": "whaletopd"}]
    assert not any(line["event"] == "vnc_password" for line in lines)
    assert password[:8] not in repr(lines)
    assert account.password == password
    assert _vnc_decrypt(paths.vnc_auth.read_bytes()[:8]) == b"correct-"


@needs_vncpasswd
def test_provision_again_after_a_restart_creates_nothing(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    def inside() -> Any:
        first, _ = _provisioning(paths, Config(username=NAME))()
        second, lines = _provisioning(paths, Config(username=NAME))()
        return first, second, lines, _lines_naming("/etc/passwd", NAME)

    first, second, lines, entries = sandbox(inside)
    ensure = next(line for line in lines if line.get("step") == "ensure_user")
    assert ensure["done"] == []
    assert len(entries) == 1
    assert second.run_as == first.run_as
    assert second.password != first.password, "a restart generates a new password"
    assert paths.vnc_passwd.read_text() == second.password + "\n"


@needs_vncpasswd
def test_the_childrens_environment_is_made_for_the_user(
        sandbox: Sandbox[Any], paths: Paths) -> None:
    daemon_env = {"LANG": "de_DE.UTF-8", "VNC_PASSWORD": "hunter22",
                  "PATH": f"/daemon/only/bin:{os.environ['PATH']}"}
    account, _ = sandbox(_provisioning(paths, Config(username=NAME), daemon_env))
    assert account.env == {
        "HOME": str(_home(paths)), "USER": NAME, "LOGNAME": NAME, "SHELL": "/bin/bash",
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/games",
        "LANG": "de_DE.UTF-8",
        "DISPLAY": f":{DISPLAY}",
        "XAUTHORITY": str(paths.xauthority),
        "XDG_RUNTIME_DIR": "/run/user/1000",
        "XDG_DATA_DIRS": f"/usr/local/share:/usr/share:{paths.menu_data_dir}",
        "APPIMAGE_EXTRACT_AND_RUN": "1",
    }
