"""Shared fixtures for the fast unit tests: real temp dirs, real processes, no Docker."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from whaletopd.children import RunAs
from whaletopd.paths import Paths


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    """Every path whaletopd touches, inside the test's temp dir; the state dir exists."""
    p = Paths(
        state_dir=tmp_path / "state",
        run_dir=tmp_path / "run",
        tmpfs_dir=tmp_path / "shm",
        x11_socket_dir=tmp_path / "x11",
        x_lock_dir=tmp_path / "xlock",
        home_root=tmp_path / "home",
        sudoers_file=tmp_path / "sudoers.d" / "whaletop",
        novnc_dir=tmp_path / "novnc",
        apps_root=tmp_path / "Apps",
        applications_dir=tmp_path / "applications",
    )
    p.state_dir.mkdir()
    p.x_lock_dir.mkdir()
    p.tmpfs_dir.mkdir()
    return p


@pytest.fixture
def run_as(tmp_path: Path) -> RunAs:
    """Run children as whoever runs the tests, in a temp home."""
    home = tmp_path / "child-home"
    home.mkdir()
    return RunAs(uid=os.getuid(), gid=os.getgid(), groups=(), home=str(home))


@pytest.fixture
def restore_signals() -> Iterator[None]:
    """loop.run installs SIGTERM/SIGINT/SIGHUP handlers and changes the signal mask: put
    pytest's back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT,
                                                    signal.SIGHUP)}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where `whaletopd status` looks for the status files ($WHALETOP_STATE_DIR)."""
    monkeypatch.setenv("WHALETOP_STATE_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty /Apps, for the menu mapper and the watcher."""
    path = tmp_path / "Apps"
    path.mkdir()
    return path
