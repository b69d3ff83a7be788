"""The /Apps issue as a user meets it: apps from an extending image, apps mounted while
the desktop runs, appearing in and leaving LXDE's menu; broken files never fatal."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Container, docker, wait_until

pytestmark = pytest.mark.e2e

ENTRY = "[Desktop Entry]\nType=Application\nName={name}\nExec={exec}\nTerminal=false\n"


def _in_menu_cache(c: Container, name: str) -> bool:
    """LXDE's menu (lxpanel, via menu-cached) reads ~/.cache/menus/: is the entry there?"""
    out = c.exec("sh", "-c", "cat /home/user/.cache/menus/* 2>/dev/null", check=False).stdout
    return name in out


def _write(path: Path, text: str) -> None:
    """As package managers and editors do: a temporary name, then a rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _mapped(c: Container, filename: str) -> bool:
    path = f"/run/whaletop/menu/applications/{filename}"
    return c.exec("test", "-f", path, check=False).returncode == 0


@pytest.fixture(scope="module")
def extended_image(image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image built FROM ours that adds an app, as the README tells people to."""
    ctx = tmp_path_factory.mktemp("extended")
    (ctx / "example.desktop").write_text(ENTRY.format(name="Example App",
                                                      exec="/usr/bin/lxterminal"))
    (ctx / "Dockerfile").write_text(f"FROM {image}\nCOPY example.desktop /Apps/Example/\n")
    tag = "whaletop-test-extended:latest"
    subprocess.run(["docker", "build", "-q", "-t", tag, str(ctx)], check=True,
                   capture_output=True, timeout=300)
    yield tag
    docker("rmi", "-f", tag, check=False)


def test_app_from_an_extending_image_is_in_the_first_menu(desktop, extended_image):
    c = desktop(image=extended_image)
    c.wait_status("HEALTHY")
    assert _mapped(c, "example.desktop")  # mapped before the session started
    wait_until(lambda: _in_menu_cache(c, "Example App"), "Example App in LXDE's menu")
    assert c.status_json()["apps"] == {"example.desktop": "/Apps/Example/example.desktop"}
    added = [e for e in c.log_lines() if e.get("event") == "app_added"]
    assert [e["name"] for e in added] == ["example.desktop"]


def test_live_mount_add_change_remove_read_only(desktop, tmp_path: Path):
    live = tmp_path / "Live"
    (live / "deep" / "er").mkdir(parents=True)
    c = desktop(volumes=(f"{live}:/Apps/Live:ro",))
    c.wait_status("HEALTHY")
    assert not _mapped(c, "notes.desktop")
    # A user adds apps to a desktop in use: once its menu exists (menu-cached started).
    wait_until(lambda: _in_menu_cache(c, "LXTerminal"), "LXDE's menu is up")

    entry = live / "deep" / "er" / "notes.desktop"
    _write(entry, ENTRY.format(name="Live Notes", exec="/usr/bin/lxterminal"))
    wait_until(lambda: _mapped(c, "notes.desktop"), "notes.desktop mapped")
    wait_until(lambda: _in_menu_cache(c, "Live Notes"), "Live Notes in LXDE's menu")

    _write(entry, ENTRY.format(name="Live Notes Renamed", exec="/usr/bin/lxterminal"))
    wait_until(lambda: _in_menu_cache(c, "Live Notes Renamed"), "the changed name in the menu")

    entry.unlink()
    wait_until(lambda: not _mapped(c, "notes.desktop"), "notes.desktop removed")
    wait_until(lambda: not _in_menu_cache(c, "Live Notes"), "Live Notes gone from the menu")
    events = [e["event"] for e in c.log_lines() if e.get("event", "").startswith("app_")]
    assert events == ["app_added", "app_updated", "app_removed"]
    # Debian's own entries were never touched (whaletop maps into its own folder).
    assert c.exec("test", "-f", "/usr/share/applications/lxterminal.desktop",
                  check=False).returncode == 0
    assert c.status() == "HEALTHY\n"


def test_folder_mounted_later_and_broken_files_are_skipped_not_fatal(desktop, tmp_path: Path):
    apps = tmp_path / "Apps"
    apps.mkdir()
    c = desktop(volumes=(f"{apps}:/Apps",))
    c.wait_status("HEALTHY")
    later = apps / "Later"
    later.mkdir()
    (later / "ok.desktop").write_text(ENTRY.format(name="Later OK", exec="/bin/true"))
    (later / "noexec.desktop").write_text("[Desktop Entry]\nType=Application\nName=X\n")
    (later / "latin1.desktop").write_bytes(b"[Desktop Entry]\nName=Caf\xe9\nExec=/bin/true\n")
    (later / "nothing.desktop").write_text("just text\n")
    wait_until(lambda: _mapped(c, "ok.desktop"), "ok.desktop mapped from a folder made later")

    def skipped() -> dict[str, str]:
        return {e["source"].rsplit("/", 1)[-1]: e["reason"] for e in c.log_lines()
                if e.get("event") == "app_skipped"}

    wait_until(lambda: len(skipped()) == 3, "three broken files skipped")
    assert skipped() == {"noexec.desktop": "no Exec=", "latin1.desktop": "not UTF-8",
                         "nothing.desktop": "line 1 is not a key=value, [group] or # comment"}
    assert all(e["level"] == "warning" for e in c.log_lines()
               if e.get("event") == "app_skipped")
    for name in ("noexec.desktop", "latin1.desktop", "nothing.desktop"):
        assert not _mapped(c, name)
    assert c.status() == "HEALTHY\n"
    assert c.running()


def test_appimage_workaround_is_in_the_session(desktop):
    c = desktop()
    c.wait_status("HEALTHY")
    pid = c.status_json()["children"]["session"]["pid"]
    env = c.exec("cat", f"/proc/{pid}/environ", user="user").stdout.split("\0")
    assert "APPIMAGE_EXTRACT_AND_RUN=1" in env


def test_an_app_mapped_while_the_menu_starts_reaches_it_without_another_change(
        desktop, tmp_path: Path):
    """LXDE's menu-cached reads the folder, writes its cache, then starts watching: a file
    mapped in between used to be missing until the next change under /Apps.  An app
    written as the session starts reaches the menu by itself: whaletopd waits until
    menu-cached watches, then makes it read the folder again (`menu_refreshed`)."""
    apps = tmp_path / "Apps"
    apps.mkdir()
    c = desktop(volumes=(f"{apps}:/Apps",))
    wait_until(lambda: c.status() in ("STARTED\n", "HEALTHY\n"), "the session launched")
    _write(apps / "early.desktop", ENTRY.format(name="Early Bird", exec="/bin/true"))
    wait_until(lambda: _mapped(c, "early.desktop"), "early.desktop mapped")
    wait_until(lambda: _in_menu_cache(c, "Early Bird"), "Early Bird in LXDE's menu")
    wait_until(lambda: any(e.get("event") == "menu_refreshed" for e in c.log_lines()),
               "the menu read again once menu-cached watched")
    assert c.status() == "HEALTHY\n"
