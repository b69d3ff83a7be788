"""The app menu part: /Apps (here a temp folder) mapped into the menu's folder, one log
line per change, the watch that posts AppsChanged, and a broken manifest that must not
stop the desktop."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from whaletopd.events import AppsChanged, EventQueue
from whaletopd.menu import SETTLE_CHECKS, AppMenu
from whaletopd.paths import Paths

from .helpers import WAIT, FakeClock

GOOD = "[Desktop Entry]\nType=Application\nName={name}\nExec={name}\n"
NO_EXEC = "[Desktop Entry]\nType=Application\nName=Broken\n"


@pytest.fixture
def menu_paths(tmp_path: Path) -> Paths:
    state = tmp_path / "state"
    state.mkdir()
    apps = tmp_path / "Apps"
    apps.mkdir()
    return Paths(state_dir=state, apps_root=apps, applications_dir=tmp_path / "applications")


@pytest.fixture
def q() -> EventQueue:
    return EventQueue()


def _stop(menu: AppMenu) -> None:
    """stop(), or a failure if it hangs (rather than a hung test run)."""
    stopper = threading.Thread(target=menu.stop, name="test-stop", daemon=True)
    stopper.start()
    stopper.join(WAIT)
    if stopper.is_alive():
        pytest.fail("AppMenu.stop() hung")


@pytest.fixture
def menus() -> Iterator[list[AppMenu]]:
    made: list[AppMenu] = []
    yield made
    for menu in made:
        _stop(menu)


def _menu(paths: Paths, q: EventQueue, menus: list[AppMenu],
          clock: Callable[[], float] | None = None) -> AppMenu:
    menu = AppMenu(paths, q) if clock is None else AppMenu(paths, q, clock=clock)
    menus.append(menu)
    return menu


def _app(paths: Paths, rel: str, content: str | None = None) -> Path:
    path = paths.apps_root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if content is not None else GOOD.format(name=path.stem))
    return path


def _lines(logs: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(e["event"], e["name"], e["source"], e.get("reason"), e["log_level"])
            for e in logs if str(e["event"]).startswith("app_")]


def test_start_maps_what_is_there(menu_paths: Paths, q: EventQueue,
                                  menus: list[AppMenu]) -> None:
    foo = _app(menu_paths, "office/foo.desktop")
    bar = _app(menu_paths, "bar.desktop")
    bad = _app(menu_paths, "bad.desktop", NO_EXEC)
    (menu_paths.apps_root / "README.txt").write_text("not an app\n")
    menu = _menu(menu_paths, q, menus)
    with capture_logs() as logs:
        assert menu.start() == {"mapped": 2, "changes": 3}
    target = menu_paths.applications_dir
    assert sorted(p.name for p in target.iterdir()) == ["bar.desktop", "foo.desktop"]
    assert (target / "foo.desktop").read_text() == foo.read_text()
    assert sorted(_lines(logs)) == [
        ("app_added", "bar.desktop", str(bar), None, "info"),
        ("app_added", "foo.desktop", str(foo), None, "info"),
        ("app_skipped", "bad.desktop", str(bad), "no Exec=", "warning"),
    ]
    assert menu.describe() == {
        "apps": {"bar.desktop": str(bar), "foo.desktop": str(foo)},
        "apps_skipped": {str(bad): "no Exec="},
    }
    assert menu_paths.apps_manifest.is_file(), "the manifest of what is ours was not kept"


def test_start_with_an_empty_apps_folder(menu_paths: Paths, q: EventQueue,
                                         menus: list[AppMenu]) -> None:
    menu = _menu(menu_paths, q, menus)
    with capture_logs() as logs:
        assert menu.start() == {"mapped": 0, "changes": 0}
    assert _lines(logs) == []
    assert menu.describe() == {"apps": {}, "apps_skipped": {}}


def test_sync_logs_each_change_once(menu_paths: Paths, q: EventQueue,
                                    menus: list[AppMenu]) -> None:
    old = _app(menu_paths, "old.desktop")
    menu = _menu(menu_paths, q, menus)
    menu.start()
    new = _app(menu_paths, "new.desktop")
    old.unlink()
    with capture_logs() as logs:
        assert menu.sync() == 2
    assert sorted(_lines(logs)) == [
        ("app_added", "new.desktop", str(new), None, "info"),
        ("app_removed", "old.desktop", str(old), "source removed", "info"),
    ]
    assert sorted(p.name for p in menu_paths.applications_dir.iterdir()) == ["new.desktop"]
    with capture_logs() as logs:
        assert menu.sync() == 0, "an unchanged tree counted changes"
    assert _lines(logs) == []


def test_sync_logs_an_update(menu_paths: Paths, q: EventQueue,
                             menus: list[AppMenu]) -> None:
    app = _app(menu_paths, "tool.desktop")
    menu = _menu(menu_paths, q, menus)
    menu.start()
    app.write_text(GOOD.format(name="tool") + "Comment=now with a comment\n")
    with capture_logs() as logs:
        assert menu.sync() == 1
    assert _lines(logs) == [("app_updated", "tool.desktop", str(app), None, "info")]
    assert (menu_paths.applications_dir / "tool.desktop").read_text() == app.read_text()


def test_a_skip_is_logged_when_new_not_at_every_sync(menu_paths: Paths, q: EventQueue,
                                                     menus: list[AppMenu]) -> None:
    menu = _menu(menu_paths, q, menus)
    menu.start()
    bad = _app(menu_paths, "bad.desktop", NO_EXEC)
    with capture_logs() as logs:
        assert menu.sync() == 1
        assert menu.sync() == 0
    assert _lines(logs) == [("app_skipped", "bad.desktop", str(bad), "no Exec=", "warning")]
    assert menu.describe()["apps_skipped"] == {str(bad): "no Exec="}


def test_a_change_under_apps_posts_apps_changed(menu_paths: Paths, q: EventQueue,
                                                menus: list[AppMenu]) -> None:
    menu = _menu(menu_paths, q, menus)
    menu.start()
    _app(menu_paths, "later/new.desktop")
    assert q.get(timeout=WAIT) == AppsChanged()


def test_a_manifest_that_cannot_be_written_is_logged_not_raised(
        tmp_path: Path, q: EventQueue, menus: list[AppMenu]) -> None:
    state = tmp_path / "state"
    state.write_text("a file where the state folder should be\n")
    paths = Paths(state_dir=state, apps_root=tmp_path / "Apps",
                  applications_dir=tmp_path / "applications")
    _app(paths, "foo.desktop")
    menu = _menu(paths, q, menus)
    with capture_logs() as logs:
        assert menu.start() == {"mapped": 0, "changes": 0}
        assert menu.sync() == 0
    failed = [e for e in logs if e["event"] == "apps_sync_failed"]
    assert len(failed) == 2
    assert all(e["log_level"] == "error" and str(state) in str(e["reason"]) for e in failed)
    assert _lines(logs) == []


def test_before_start(menu_paths: Paths, q: EventQueue, menus: list[AppMenu]) -> None:
    _app(menu_paths, "foo.desktop")
    menu = _menu(menu_paths, q, menus)
    assert menu.describe() == {"apps": {}, "apps_skipped": {}}
    assert menu.sync() == 0
    assert not menu_paths.applications_dir.exists(), "sync() before start() mapped"
    menu.stop()


def test_stop_ends_the_watch(menu_paths: Paths, q: EventQueue, menus: list[AppMenu]) -> None:
    before = set(threading.enumerate())
    menu = _menu(menu_paths, q, menus)
    menu.start()
    assert set(threading.enumerate()) - before, "no watcher thread was started"
    _stop(menu)
    assert set(threading.enumerate()) - before == set(), "a watcher thread is still running"


# -- menu-cached's start: settle() -----------------------------------------------------

T0 = 1_700_000_000.0  # the session's start, on the wall clock files are dated by


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def _cache(home: Path, mtime: float) -> None:
    folder = home / ".cache" / "menus"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cache-file"
    path.write_text("menu\n")
    os.utime(path, (mtime, mtime))


def _settled_menu(paths: Paths, q: EventQueue, menus: list[AppMenu],
                  clock: FakeClock) -> AppMenu:
    menu = _menu(paths, q, menus, clock)
    menu.start()
    return menu


def test_settle_without_a_session_has_nothing_to_wait_for(menu_paths: Paths, q: EventQueue,
                                                          menus: list[AppMenu]) -> None:
    assert _menu(menu_paths, q, menus).settle()


def test_settle_waits_for_a_cache_written_since_the_session_started(
        menu_paths: Paths, q: EventQueue, menus: list[AppMenu], clock: FakeClock,
        home: Path, tmp_path: Path) -> None:
    menu = _settled_menu(menu_paths, q, menus, clock)
    _cache(home, T0 - 3600)  # last session's cache
    menu.session_started(home, str(tmp_path / "runtime"))
    assert not menu.settle()
    assert not menu.settle(), "an old cache taken for menu-cached's"
    _cache(home, T0 + 0.5)
    assert not menu.settle(), "settled on the look that first saw the cache"
    assert menu.settle(), "a look after the cache appeared did not settle"
    assert menu.settle(), "the session is forgotten once settled"


def test_settle_waits_for_the_socket_to_be_there_a_while(
        menu_paths: Paths, q: EventQueue, menus: list[AppMenu], clock: FakeClock,
        home: Path, tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    menu = _settled_menu(menu_paths, q, menus, clock)
    menu.session_started(home, str(runtime))
    assert not menu.settle()
    (runtime / "menu-cached-:1").write_text("")
    clock.t += 5
    assert not menu.settle(), "settled the moment the socket appeared"
    clock.t += 0.5
    assert not menu.settle()
    clock.t += 0.5
    assert menu.settle()


def test_apps_mapped_while_menu_cached_started_refresh_the_menu(
        menu_paths: Paths, q: EventQueue, menus: list[AppMenu], clock: FakeClock,
        home: Path) -> None:
    menu = _settled_menu(menu_paths, q, menus, clock)
    menu.session_started(home, None)
    _app(menu_paths, "late.desktop")
    assert menu.sync() == 1
    target = menu_paths.applications_dir
    os.utime(target, (1.0, 1.0))
    _cache(home, T0 + 0.1)
    with capture_logs() as logs:
        assert not menu.settle()
        assert menu.settle()
    assert target.stat().st_mtime > 1.0, "the menu's folder was not touched"
    assert [e["event"] for e in logs] == ["menu_refreshed"]


def test_no_refresh_when_nothing_was_mapped_meanwhile(
        menu_paths: Paths, q: EventQueue, menus: list[AppMenu], clock: FakeClock,
        home: Path) -> None:
    _app(menu_paths, "early.desktop")
    menu = _settled_menu(menu_paths, q, menus, clock)  # mapped before the session
    menu.session_started(home, None)
    assert menu.sync() == 0
    target = menu_paths.applications_dir
    os.utime(target, (1.0, 1.0))
    _cache(home, T0 + 0.1)
    with capture_logs() as logs:
        assert not menu.settle()
        assert menu.settle()
    assert target.stat().st_mtime == 1.0, "the menu's folder was touched for nothing"
    assert logs == []


def test_settle_gives_up_when_menu_cached_never_starts(
        menu_paths: Paths, q: EventQueue, menus: list[AppMenu], clock: FakeClock,
        home: Path) -> None:
    menu = _settled_menu(menu_paths, q, menus, clock)
    menu.session_started(home, None)
    with capture_logs() as logs:
        looks = [menu.settle() for _ in range(SETTLE_CHECKS)]
    assert looks == [False] * (SETTLE_CHECKS - 1) + [True]
    assert [e["event"] for e in logs] == ["menu_cache_not_seen"]
    assert logs[0]["checks"] == SETTLE_CHECKS
