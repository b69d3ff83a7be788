"""Where whaletopd reads and writes; one place, so tests can point it elsewhere."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    state_dir: Path = Path("/opt/whaletop")
    run_dir: Path = Path("/run/whaletop")
    x11_socket_dir: Path = Path("/tmp/.X11-unix")
    x_lock_dir: Path = Path("/tmp")
    home_root: Path = Path("/home")
    sudoers_file: Path = Path("/etc/sudoers.d/whaletop")
    novnc_dir: Path = Path("/usr/share/novnc")
    apps_root: Path = Path("/Apps")
    applications_dir: Path = Path("/usr/share/applications")

    @property
    def status(self) -> Path:
        return self.state_dir / "status"

    @property
    def status_json(self) -> Path:
        return self.state_dir / "status.json"

    @property
    def vnc_passwd(self) -> Path:
        return self.state_dir / "vnc_passwd"

    @property
    def apps_manifest(self) -> Path:
        return self.state_dir / "apps.json"

    @property
    def vnc_auth(self) -> Path:
        return self.run_dir / "vncauth"


def from_env() -> Paths:
    """Paths, with the state directory overridable for `whaletopd status` in tests."""
    state_dir = os.environ.get("WHALETOP_STATE_DIR")
    return Paths(state_dir=Path(state_dir)) if state_dir else Paths()
