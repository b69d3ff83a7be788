"""Wait for a .desktop file to be mapped into the menu, timed from inside the container.

argv[1] is the file's name.  Prints READY once the user's LXDE menu cache exists (the
runner writes the file only then), then {"t_app", "t_menu"}: when the file appeared in
whaletop's menu folder /run/whaletop/menu/applications and when the menu cache listed it
(None: not within the limit).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

APPLICATIONS = Path("/run/whaletop/menu/applications")
MENUS = "~user/.cache/menus"  # the desktop user's; expanded in the container


def _head(path: Path, size: int = -1) -> bytes:
    with path.open("rb") as f:
        return f.read(size)


def cache_files(menus: Path) -> list[Path]:
    """What glob(3) lists: hidden files are left out."""
    return [f for f in menus.glob("*") if not f.name.startswith(".")]


def _is_menu_cache(path: Path) -> bool:
    try:
        return b"lxde-applications.menu" in _head(path, 200)
    except OSError:  # menu-cached writes a temporary file and renames it: gone meanwhile
        return False


def wait_menu_cache(menus: Path, limit: float = 30.0) -> bool:
    """The menu cache exists once lxpanel asked for it; before that nothing is listed.
    False when it did not appear within `limit`."""
    deadline = time.time() + limit
    while time.time() < deadline:
        if any(_is_menu_cache(f) for f in cache_files(menus)):
            return True
        time.sleep(0.01)
    return False


def watch(name: str, applications: Path, menus: Path, limit: float = 30.0,
          out: TextIO = sys.stdout) -> dict[str, Any]:
    wait_menu_cache(menus, limit)
    print("READY", file=out, flush=True)
    target = applications / name
    needle = ("\n-" + name + "\n").encode()
    t_app: float | None = None
    t_menu: float | None = None
    seen: dict[Path, tuple[int, int, int]] = {}
    deadline = time.time() + limit
    while (t_app is None or t_menu is None) and time.time() < deadline:
        if t_app is None and target.exists():
            t_app = time.time()
        if t_menu is None:
            for f in cache_files(menus):
                try:
                    st = f.stat()
                    key = (st.st_ino, st.st_mtime_ns, st.st_size)
                    if seen.get(f) != key:  # read a cache file again only when it changed
                        seen[f] = key
                        if needle in _head(f):
                            t_menu = time.time()
                            break
                except OSError:
                    pass
        time.sleep(0.001)
    return {"t_app": t_app, "t_menu": t_menu}


if __name__ == "__main__":
    result = watch(sys.argv[1], APPLICATIONS, Path(os.path.expanduser(MENUS)))
    print(json.dumps(result), flush=True)
