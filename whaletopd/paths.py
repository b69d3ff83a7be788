"""Where whaletopd reads and writes; one place, so tests can point it elsewhere."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The default files of a new home (Debian's), copied into one that lacks them.
SKEL = Path("/etc/skel")


@dataclass(frozen=True)
class Paths:
    state_dir: Path = Path("/opt/whaletop")
    run_dir: Path = Path("/run/whaletop")
    # A tmpfs in every container (/run is not one): nginx's decrypted key is kept here.
    tmpfs_dir: Path = Path("/dev/shm")
    x11_socket_dir: Path = Path("/tmp/.X11-unix")
    x_lock_dir: Path = Path("/tmp")
    home_root: Path = Path("/home")
    sudoers_file: Path = Path("/etc/sudoers.d/whaletop")
    novnc_dir: Path = Path("/usr/share/novnc")
    apps_root: Path = Path("/Apps")
    # /Apps reaches LXDE's menu through a folder on XDG_DATA_DIRS: nothing of the image
    # is written at runtime (it may be read-only).
    applications_dir: Path = Path("/run/whaletop/menu/applications")

    @property
    def menu_data_dir(self) -> Path:
        """The XDG data folder whose applications/ holds the mapped /Apps entries."""
        return self.applications_dir.parent

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
    def vnc_view_only_passwd(self) -> Path:
        return self.state_dir / "vnc_view_only_passwd"

    @property
    def vnc_auth(self) -> Path:
        return self.run_dir / "vncauth"

    @property
    def xauthority(self) -> Path:
        """The X display's cookie (xauth.py), in a folder of the desktop user's own.  The
        image's XAUTHORITY names it too: `docker exec -u user` finds it."""
        return self.run_dir / "x" / "Xauthority"

    # The desktop user's sockets: Xvnc's RFB and websockify's, for nginx.
    @property
    def desktop_dir(self) -> Path:
        return self.run_dir / "desktop"

    @property
    def vnc_socket(self) -> Path:
        return self.desktop_dir / "vnc.sock"

    @property
    def websockify_socket(self) -> Path:
        return self.desktop_dir / "websockify.sock"

    @property
    def relay_settings(self) -> Path:
        """The desktop's relay's settings (vncrelay.py): the VNC passwords, 0600."""
        return self.desktop_dir / "relay.json"

    @property
    def grants_file(self) -> Path:
        """With sign-in: what may stay connected, written by the sign-in service, read
        by the relay (its folder: the web account's, the desktop user's group)."""
        return self.run_dir / "grants" / "grants.json"

    @property
    def sound_socket(self) -> Path:
        """The sound bridge's WebSocket (whaletopd/sound.py), for nginx."""
        return self.desktop_dir / "sound.sock"

    # The web front's: nginx's configuration and files, the sign-in service's.
    @property
    def nginx_dir(self) -> Path:
        return self.run_dir / "nginx"

    @property
    def nginx_conf(self) -> Path:
        return self.nginx_dir / "nginx.conf"

    @property
    def probe_dir(self) -> Path:
        """whaletopd's alone (0700): nginx's listener for the health checks is in it."""
        return self.nginx_dir / "probe"

    @property
    def probe_socket(self) -> Path:
        """nginx's second listener, for whaletopd's health checks only (nginx_conf.py)."""
        return self.probe_dir / "probe.sock"

    @property
    def web_dir(self) -> Path:
        return self.run_dir / "web"

    @property
    def auth_socket(self) -> Path:
        return self.web_dir / "auth.sock"

    @property
    def metrics_file(self) -> Path:
        """The Prometheus text nginx serves at /metrics (metrics.py writes it whole)."""
        return self.run_dir / "metrics" / "metrics.prom"

    @property
    def keyboard_file(self) -> Path:
        """The session's layout as JSON, served at /whaletop/keyboard (kbswitch.py)."""
        return self.run_dir / "keyboard" / "keyboard.json"

    @property
    def requests_dir(self) -> Path:
        """Where nginx's WebDAV PUT leaves the page's requests (the web account's)."""
        return self.run_dir / "requests"

    @property
    def tls_pem(self) -> Path:
        """nginx's certificate and decrypted key, in a private folder on the tmpfs
        (web.WebFront.pem says where it is when that folder cannot be used)."""
        return self.tmpfs_dir / "whaletop-tls" / "tls.pem"


def from_env() -> Paths:
    """Paths, with the state directory overridable for `whaletopd status` in tests."""
    state_dir = os.environ.get("WHALETOP_STATE_DIR")
    return Paths(state_dir=Path(state_dir)) if state_dir else Paths()
