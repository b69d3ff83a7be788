"""The X display's cookie: a file xauth and a real Xvnc read, the desktop user's alone,
new at every start."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from whaletopd import xauth
from whaletopd.paths import Paths

from .. import tools

ROOT = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid")
OWNER = (54321, 54322)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _owner(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid


@pytest.fixture
def cookie(tmp_path: Path) -> Path:
    return tmp_path / "x" / "Xauthority"


def test_xauth_reads_one_wild_entry_for_the_display(cookie: Path) -> None:
    xauth.write(cookie, 7, None)
    out = subprocess.run([tools.XAUTH.require(), "-f", str(cookie), "nlist"], capture_output=True,
                         text=True, check=True).stdout
    # family ffff (any host), no address, display "7", the protocol, 16 bytes.
    assert re.fullmatch(r"ffff 0000  0001 37 0012 4d49542d4d414749432d434f4f4b49452d31 "
                        r"0010 [0-9a-f]{32}\n", out), out


def test_each_start_has_a_new_cookie(cookie: Path) -> None:
    xauth.write(cookie, 1, None)
    first = cookie.read_bytes()
    xauth.write(cookie, 1, None)
    assert cookie.read_bytes() != first
    assert cookie.read_bytes()[-16:] != first[-16:]
    assert sorted(os.listdir(cookie.parent)) == ["Xauthority"], "a temporary file was left"


def test_the_folder_and_the_file_are_private(cookie: Path) -> None:
    xauth.write(cookie, 1, None)
    assert (_mode(cookie.parent), _mode(cookie)) == (0o700, 0o600)


@needs_root
def test_as_root_both_are_the_desktop_user_s(cookie: Path) -> None:
    cookie.parent.mkdir(mode=0o755)  # a folder left open by an earlier start
    xauth.write(cookie, 1, OWNER)
    assert (_owner(cookie.parent), _mode(cookie.parent)) == (OWNER, 0o700)
    assert (_owner(cookie), _mode(cookie)) == (OWNER, 0o600)


@needs_root
def test_as_root_a_link_in_the_folder_s_place_is_replaced_never_followed(
        cookie: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    cookie.parent.symlink_to(elsewhere)
    xauth.write(cookie, 1, OWNER)
    assert stat.S_ISDIR(cookie.parent.lstat().st_mode)
    assert list(elsewhere.iterdir()) == []
    assert (_owner(elsewhere), _mode(elsewhere)) == ((os.geteuid(), os.getegid()), 0o755)


@needs_root
def test_without_root_another_uid_s_folder_is_refused(cookie: Path) -> None:
    """In a run folder open to every uid (the image's, without --tmpfs), another uid
    could have made the folder first and would then replace the cookie."""
    cookie.parent.mkdir()
    os.chown(cookie.parent, *OWNER)
    with pytest.raises(xauth.XauthError, match=r"belongs to uid 54321, not to uid 0 .*: "
                                               r"remove it"):
        xauth.write(cookie, 1, None)
    assert not cookie.exists()


def test_without_root_a_file_in_the_folder_s_place_is_refused(cookie: Path) -> None:
    cookie.parent.write_text("not a folder")
    with pytest.raises(xauth.XauthError, match=r"is not a folder: remove it"):
        xauth.write(cookie, 1, None)


def test_the_image_names_the_same_file() -> None:
    """`docker exec -u user -e DISPLAY=:1 ...` finds the cookie through the image."""
    env = re.findall(r"^ENV XAUTHORITY=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert env == [str(Paths().xauthority)]


# -- a real Xvnc -------------------------------------------------------------------------

@pytest.fixture
def xvnc(cookie: Path) -> Iterator[str]:
    """Xvnc with the cookie, on a display it picks itself (tests share the machine)."""
    tools.XVNC.require()
    tools.XDPYINFO.require()
    xauth.write(cookie, 0, None)
    read, write = os.pipe()
    proc = subprocess.Popen(
        # VNC on a UNIX socket only: TigerVNC 1.15 (Debian 13's) refuses to start with
        # no way in at all.
        ["Xvnc", "-displayfd", str(write), "-auth", str(cookie), "-rfbport", "-1",
         "-rfbunixpath", str(cookie.parent / "vnc.sock"),
         "-SecurityTypes", "None", "-nolisten", "tcp", "-nolisten", "local"],
        pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    os.close(write)
    try:
        with os.fdopen(read) as f:
            display = f.readline().strip()
        assert display.isdigit(), "Xvnc did not start"
        # The entry names display 0: rewritten for the one Xvnc chose (it re-reads the
        # file only at a reset, so its cookie stays the first one): the same bytes.
        data = cookie.read_bytes()
        cookie.write_bytes(xauth.entry(int(display), data[-xauth.COOKIE_BYTES:]))
        yield f":{display}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _xdpyinfo(display: str, authority: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["xdpyinfo"], env={"DISPLAY": display, "XAUTHORITY": str(authority),
                                            "PATH": os.environ["PATH"]},
                          capture_output=True, text=True, timeout=30, check=False)


def test_xvnc_lets_in_a_client_with_the_cookie_and_no_other(xvnc: str, cookie: Path,
                                                             tmp_path: Path) -> None:
    assert _xdpyinfo(xvnc, cookie).returncode == 0
    refused = _xdpyinfo(xvnc, tmp_path / "none")
    assert refused.returncode != 0
    assert "Authorization required" in refused.stderr
    wrong = tmp_path / "wrong"
    xauth.write(wrong, int(xvnc[1:]), None)  # another start's cookie
    assert _xdpyinfo(xvnc, wrong).returncode != 0
