"""What the children get from provisioning: their whole environment, made once."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from whaletopd import provision
from whaletopd.children import RunAs
from whaletopd.config import Config
from whaletopd.paths import Paths

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="runtime_dir() creates and chowns /run/user/UID: needs root")


def _free_uid() -> int:
    """A uid with no runtime folder yet (so the folder is the test's own to remove),
    different for test runs that share the machine."""
    uid = 40000 + os.getpid() % 10000
    while Path(f"/run/user/{uid}").exists():
        uid += 1
    return uid


@pytest.fixture
def run_as(tmp_path: Path) -> Iterator[RunAs]:
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    uid = _free_uid()
    yield RunAs(uid=uid, gid=uid + 1, groups=(), home=str(home))
    shutil.rmtree(f"/run/user/{uid}", ignore_errors=True)


def _env(config: Config, run_as: RunAs, display: int = 1) -> dict[str, str]:
    return provision.child_env(config, run_as, display, Paths(), "/run/user/RUNTIME")


def test_child_env_is_the_whole_environment(run_as: RunAs,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VNC_PASSWORD", "hunter22")
    monkeypatch.setenv("TLS_KEY_PASSWORD", "s3cret")
    monkeypatch.setenv("WHALETOP_USERNAME", "alice")
    monkeypatch.setenv("PATH", "/daemon/only/bin:/usr/bin")
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    env = _env(Config(username="alice"), run_as)
    assert env == {
        "HOME": run_as.home, "USER": "alice", "LOGNAME": "alice", "SHELL": "/bin/bash",
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/games",
        "LANG": "de_DE.UTF-8",
        "DISPLAY": ":1",
        # The X display's cookie (xauth.py): the image's XAUTHORITY names it too.
        "XAUTHORITY": "/run/whaletop/x/Xauthority",
        "XDG_RUNTIME_DIR": "/run/user/RUNTIME",
        # /Apps entries, after the system's: a Debian entry of the same name wins.
        "XDG_DATA_DIRS": "/usr/local/share:/usr/share:/run/whaletop/menu",
        "APPIMAGE_EXTRACT_AND_RUN": "1",
    }
    leaked = {"hunter22", "s3cret", "/daemon/only/bin:/usr/bin"} & set(env.values())
    assert not leaked, f"the daemon's environment leaked: {leaked}"


def test_lang_defaults_to_c_utf8(run_as: RunAs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LANG", raising=False)
    assert _env(Config(), run_as)["LANG"] == "C.UTF-8"


def test_display_follows_the_display_number(run_as: RunAs) -> None:
    assert _env(Config(), run_as, 7)["DISPLAY"] == ":7"


@needs_root
def test_the_runtime_folder_is_made_private_to_the_user(run_as: RunAs) -> None:
    path = Path(provision.runtime_dir(run_as, Paths()))
    st = path.stat()
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert (st.st_uid, st.st_gid) == (run_as.uid, run_as.gid)


@needs_root
def test_a_runtime_folder_left_open_is_closed_again(run_as: RunAs) -> None:
    path = Path(f"/run/user/{run_as.uid}")
    path.mkdir(parents=True)
    path.chmod(0o777)
    (path / "kept").write_text("x")  # a restarted container's: kept, not re-created
    provision.runtime_dir(run_as, Paths())
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert (st.st_uid, st.st_gid) == (run_as.uid, run_as.gid)
    assert (path / "kept").read_text() == "x"
