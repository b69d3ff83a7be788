"""watch.py: the debounce timing on made-up clocks, then real inotify on temp dirs.

No test sleeps to let something happen: it waits, with a deadline, for what it can
observe.  To know that every event up to a point has reached the watcher, Probe.flush()
makes one event the watcher ignores, in the same inotify stream, and waits for it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
)

from tests.unit.helpers import WAIT, FakeClock, wait_for
from whaletopd.apps import AppMapper
from whaletopd.watch import Burst, Debouncer, Watcher, in_tree

# watchdog 7 warns, harmlessly, when a folder created with its parent gets its inotify
# watch twice (from its own scan and from the event); -W error would kill its thread.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Callback with id .* already exists:RuntimeWarning")

QUIET = 0.05
MAX_DELAY = 0.5
FLUSH = ".flush"


def entry(name: str = "Thing") -> str:
    return f"[Desktop Entry]\nType=Application\nName={name}\nExec=thing\n"


def app(path: Path, name: str = "Thing") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(entry(name), encoding="utf-8")
    return path


class Recorder:
    """on_change for tests: counts calls (with the clock's time), syncs a mapper if given."""

    def __init__(self, mapper: AppMapper | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.mapper = mapper
        self.clock = clock
        self.times: list[float] = []
        self.called = threading.Event()

    @property
    def calls(self) -> int:
        return len(self.times)

    def __call__(self) -> None:
        if self.mapper is not None:
            self.mapper.sync()
        self.times.append(self.clock() if self.clock else 0.0)
        self.called.set()


# -- Burst: the timing, pure ---------------------------------------------------------------


def test_nothing_poked_is_never_due() -> None:
    burst = Burst(QUIET, MAX_DELAY)
    assert burst.due() is None
    assert not burst.take(1e9)


def test_due_a_quiet_period_after_the_last_poke() -> None:
    burst = Burst(QUIET, MAX_DELAY)
    burst.poke(10.0)
    burst.poke(10.03)
    assert burst.due() == pytest.approx(10.08)
    assert not burst.take(10.079)
    assert burst.take(10.08)
    assert burst.due() is None  # taken: the next poke begins a new burst
    burst.poke(11.0)
    assert burst.due() == pytest.approx(11.05)


def test_two_hundred_pokes_within_the_quiet_period_are_one_call() -> None:
    burst = Burst(QUIET, MAX_DELAY)
    taken = []
    for i in range(200):
        now = i * 0.001  # 200 files written in 0.2 s, never 0.05 s apart
        burst.poke(now)
        taken.append(burst.take(now))
    assert not any(taken)
    assert burst.take(0.199 + QUIET)
    assert burst.due() is None


def test_a_stream_that_never_pauses_is_acted_on_every_max_delay() -> None:
    burst = Burst(QUIET, MAX_DELAY)
    calls: list[float] = []
    for i in range(61):  # a poke every 20 ms for 1.2 s: never quiet for 50 ms
        now = i * 0.02
        if burst.take(now):
            calls.append(now)
        burst.poke(now)
    assert len(calls) == 2
    assert calls[0] == pytest.approx(MAX_DELAY)
    assert calls[1] - calls[0] <= MAX_DELAY + 0.02


# -- Debouncer: the thread, on a made-up clock -----------------------------------------------


@contextlib.contextmanager
def debouncing(action: Callable[[], None], clock: FakeClock) -> Iterator[Debouncer]:
    debouncer = Debouncer(action, quiet=QUIET, max_delay=MAX_DELAY, clock=clock)
    debouncer.start()
    try:
        yield debouncer
    finally:
        debouncer.stop()


def test_debouncer_acts_once_per_burst_when_the_clock_says_so() -> None:
    clock = FakeClock()
    rec = Recorder(clock=clock)
    with debouncing(rec, clock) as debouncer:
        for _ in range(5):
            debouncer.poke()
        assert not debouncer.idle(0)  # pending: the clock has not moved
        clock.advance(QUIET)
        assert debouncer.idle(WAIT)
        assert rec.times == [QUIET]
        debouncer.poke()
        clock.advance(QUIET)
        assert debouncer.idle(WAIT)
    assert rec.calls == 2


def test_debouncer_pokes_during_the_action_call_it_again() -> None:
    clock = FakeClock()
    inside, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def action() -> None:
        calls.append(len(calls))
        inside.set()
        release.wait(WAIT)

    with debouncing(action, clock) as debouncer:
        debouncer.poke()
        clock.advance(QUIET)
        assert inside.wait(WAIT)
        debouncer.poke()  # while the first call runs: a change it may have missed
        clock.advance(QUIET)
        release.set()
        assert debouncer.idle(WAIT)
    assert calls == [0, 1]


def test_debouncer_survives_a_failing_action() -> None:
    clock = FakeClock()
    calls: list[int] = []

    def action() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")

    with capture_logs() as logs, debouncing(action, clock) as debouncer:
        debouncer.poke()
        clock.advance(QUIET)
        assert debouncer.idle(WAIT)
        debouncer.poke()
        clock.advance(QUIET)
        assert debouncer.idle(WAIT)
    assert len(calls) == 2
    assert [e["event"] for e in logs] == ["watch_callback_failed"]


def test_debouncer_stop_waits_for_the_running_action() -> None:
    clock = FakeClock()
    inside, release = threading.Event(), threading.Event()
    order: list[str] = []

    def action() -> None:
        inside.set()
        release.wait(WAIT)
        order.append("action returned")

    debouncer = Debouncer(action, quiet=QUIET, max_delay=MAX_DELAY, clock=clock)
    debouncer.start()
    debouncer.poke()
    clock.advance(QUIET)
    assert inside.wait(WAIT)
    def stop() -> None:
        debouncer.stop()
        order.append("stopped")

    stopper = threading.Thread(target=stop)
    stopper.start()
    stopper.join(0.2)  # a correct stop() is still waiting whatever this wait's length
    release.set()
    stopper.join(WAIT)
    assert order == ["action returned", "stopped"]


def test_debouncer_stop_from_its_own_action_returns() -> None:
    clock = FakeClock()
    done = threading.Event()
    debouncer: Debouncer

    def action() -> None:
        debouncer.stop()
        done.set()

    debouncer = Debouncer(action, quiet=QUIET, max_delay=MAX_DELAY, clock=clock)
    debouncer.start()
    debouncer.poke()
    clock.advance(QUIET)
    assert done.wait(WAIT)
    debouncer.stop()
    Debouncer(action, quiet=QUIET, max_delay=MAX_DELAY).stop()  # never started


# -- Watcher: which events matter for a tree -------------------------------------------------

ROOT, REAL, ANCHOR = "/mnt/Apps", "/data/apps", "/mnt"


@pytest.mark.parametrize(("event", "matters"), [
    (FileCreatedEvent("/mnt/Apps/a.desktop"), True),
    (FileModifiedEvent("/mnt/Apps/Sub/a.desktop"), True),
    (FileClosedEvent("/mnt/Apps/a.desktop"), True),
    (FileDeletedEvent("/mnt/Apps/a.desktop"), True),
    (FileMovedEvent("/mnt/Apps/a.desktop", "/mnt/Apps/b.txt"), True),
    (FileMovedEvent("/mnt/Apps/a.txt", "/mnt/Apps/b.desktop"), True),
    (DirCreatedEvent("/mnt/Apps/Sub"), True),
    (DirModifiedEvent("/mnt/Apps/Sub"), True),
    (FileCreatedEvent("/data/apps/a.desktop"), True),  # named from a symlinked root's target
    (FileModifiedEvent("/mnt/Apps/notes.txt"), False),
    (FileCreatedEvent("/data/other/a.desktop"), False),
    (FileOpenedEvent("/mnt/Apps/a.desktop"), False),
    (FileClosedNoWriteEvent("/mnt/Apps/a.desktop"), False),
    # above the root: itself, or a parent, coming, going or replaced; not its siblings
    (DirCreatedEvent("/mnt/Apps"), True),
    (DirDeletedEvent("/mnt/Apps"), True),
    (DirMovedEvent("/mnt/Apps", "/mnt/Old"), True),
    (FileMovedEvent("/mnt/.Apps.tmp", "/mnt/Apps"), True),  # a symlinked root re-pointed
    (DirDeletedEvent("/mnt"), True),
    (DirCreatedEvent("/mnt/Other"), False),
    (FileCreatedEvent("/mnt/notes.txt"), False),
    (DirModifiedEvent("/mnt"), False),
])
def test_which_events_matter_for_a_tree(event: FileSystemEvent, matters: bool) -> None:
    assert in_tree(event, ROOT, REAL, ANCHOR) is matters


# -- Watcher: real inotify -----------------------------------------------------------------------


class Probe(Watcher):
    """A watcher that records the events it is handed, on a made-up clock if given."""

    def __init__(self, path: Path, on_change: Callable[[], None], *, tree: bool,
                 clock: FakeClock | None = None) -> None:
        self.clock = clock
        self.events: list[tuple[str, str]] = []  # (event type, path), as handed
        self._seen = threading.Condition()
        self._flush_fd: int | None = None
        self._flushes = 0
        super().__init__(path, on_change, tree=tree)

    def _now(self) -> float:
        return self.clock() if self.clock else super()._now()

    def _event(self, event: FileSystemEvent) -> None:
        super()._event(event)
        with self._seen:
            self.events.append((event.event_type, os.fsdecode(event.src_path)))
            self._seen.notify_all()

    def start(self) -> None:
        # Opened before the watch exists: opening (and closing, at stop) make no event
        # the test sees; each flush's write is one IN_MODIFY, which a tree ignores.
        if os.path.isdir(self.path):
            self._flush_fd = os.open(os.path.join(self.path, FLUSH), os.O_WRONLY | os.O_CREAT)
        super().start()

    def stop(self) -> None:
        super().stop()
        if self._flush_fd is not None:
            os.close(self._flush_fd)
            self._flush_fd = None

    def flush(self) -> None:
        """Returns once every event made before the call has reached the watcher (and
        poked it if it matters): events of one inotify watch arrive in order, so it
        makes one on each watch and waits for them."""
        assert self._flush_fd is not None, "flush() needs the watched folder at start()"
        self._flushes += 1
        marks = [os.path.realpath(os.path.join(self.path, FLUSH))]
        with self._seen:
            count = self.events.count(("modified", marks[0]))
        os.write(self._flush_fd, b".")
        if self._anchor is not None:  # a file created next to the root: a sibling
            marks.append(os.path.join(self._anchor.path, f".flush-{self._flushes}"))
            Path(marks[1]).touch()
        with self._seen:
            assert self._seen.wait_for(
                lambda: self.events.count(("modified", marks[0])) > count
                and all(("created", m) in self.events for m in marks[1:]), WAIT)

    def seen(self) -> set[tuple[str, str]]:
        """The events handed so far, the flushes' own left out."""
        with self._seen:
            return {(kind, path) for kind, path in self.events
                    if not os.path.basename(path).startswith(FLUSH)}


@contextlib.contextmanager
def watching(path: Path, on_change: Callable[[], None], *, tree: bool = True,
             clock: FakeClock | None = None) -> Iterator[Probe]:
    watcher = Probe(path, on_change, tree=tree, clock=clock)
    watcher.start()
    try:
        yield watcher
    finally:
        watcher.stop()


@pytest.fixture
def mapper(tmp_path: Path, root: Path) -> AppMapper:
    return AppMapper(root, tmp_path / "applications", tmp_path / "state" / "apps.json")


@pytest.mark.parametrize("tree", [True, False])
def test_a_change_right_after_start_is_seen(root: Path, tree: bool) -> None:
    rec = Recorder()
    with watching(root, rec, tree=tree):
        app(root / "a.desktop")  # no wait for anything: start() returned armed
        assert rec.called.wait(WAIT)


def test_a_chmod_is_seen(root: Path) -> None:
    src = app(root / "a.desktop")  # made unreadable: it must leave the menu
    rec = Recorder()
    with watching(root, rec):
        src.chmod(0o000)
        assert rec.called.wait(WAIT)


def test_a_burst_of_two_hundred_files_is_one_call(root: Path) -> None:
    (root / "Suite").mkdir()
    clock = FakeClock()
    rec = Recorder(clock=clock)
    with watching(root, rec, clock=clock) as watcher:
        for i in range(200):
            app(root / "Suite" / f"app{i}.desktop")
        watcher.flush()
        assert rec.calls == 0  # all within one quiet period: nothing due yet
        clock.advance(QUIET)
        assert watcher.idle(WAIT)
    assert rec.times == [QUIET]


def test_a_continuous_stream_still_calls_within_max_delay(root: Path) -> None:
    clock = FakeClock()
    rec = Recorder(clock=clock)
    with watching(root, rec, clock=clock) as watcher:
        for i in range(30):  # a file every 20 ms: never quiet for 50 ms
            app(root / f"s{i}.desktop")
            watcher.flush()
            clock.advance(0.02)
        # The stream's last write was 20 ms ago: only the upper bound makes a call due.
        assert rec.called.wait(WAIT)
    assert MAX_DELAY <= rec.times[0] <= 0.6 + 1e-9


def test_reads_make_no_event_and_no_call(root: Path, mapper: AppMapper) -> None:
    app(root / "A" / "a.desktop")
    mapper.sync()  # its target and manifest folders exist before the watch
    clock = FakeClock()
    rec = Recorder(clock=clock)
    with watching(root, rec, clock=clock) as watcher:
        for _ in range(3):
            mapper.sync()
            (root / "A" / "a.desktop").read_bytes()
            os.listdir(root.parent)
        watcher.flush()
        assert watcher.seen() == set()
        clock.advance(MAX_DELAY)
        assert watcher.idle(WAIT)
    assert rec.calls == 0


def test_app_in_a_new_subfolder_is_seen_and_deletion_too(mapper: AppMapper,
                                                         root: Path) -> None:
    rec = Recorder(mapper)
    with watching(root, rec) as watcher:
        (root / "New" / "Deeper").mkdir(parents=True)
        watcher.flush()
        assert watcher.idle(WAIT)  # the folders' own burst is over...
        assert rec.calls >= 1
        assert mapper.mapped() == {}
        src = app(root / "New" / "Deeper" / "x.desktop")  # ...so only this file's event
        wait_for(lambda: "x.desktop" in mapper.mapped(), "the new app mapped")
        src.unlink()
        wait_for(lambda: mapper.mapped() == {}, "the deleted app unmapped")


def test_root_created_removed_and_created_again(tmp_path: Path) -> None:
    root = tmp_path / "mnt" / "Apps"  # its parent is missing too
    mapper = AppMapper(root, tmp_path / "applications", tmp_path / "apps.json")
    rec = Recorder(mapper)
    with watching(root, rec):
        app(root / "Mounted" / "m.desktop")
        wait_for(lambda: "m.desktop" in mapper.mapped(), "app in a root created later")
        shutil.rmtree(root)
        wait_for(lambda: mapper.mapped() == {}, "the root's removal")
        app(root / "Again" / "n.desktop")
        wait_for(lambda: "n.desktop" in mapper.mapped(), "app in the re-created root")


def test_symlinked_root_is_followed_and_re_pointed(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    app(second / "b.desktop")
    root = tmp_path / "Apps"
    root.symlink_to(first, target_is_directory=True)
    mapper = AppMapper(root, tmp_path / "applications", tmp_path / "apps.json")
    rec = Recorder(mapper)
    with watching(root, rec):
        app(first / "Sub" / "a.desktop")  # written through the target's own path
        wait_for(lambda: "a.desktop" in mapper.mapped(), "app in the symlink's target")
        tmp = tmp_path / ".Apps.tmp"
        tmp.symlink_to(second, target_is_directory=True)
        tmp.rename(root)  # `ln -sfn`, atomically
        wait_for(lambda: set(mapper.mapped()) == {"b.desktop"}, "the new target mapped")
        app(second / "c.desktop")
        wait_for(lambda: "c.desktop" in mapper.mapped(), "app in the new target")


def test_root_that_is_a_file_is_not_watched_until_it_is_a_folder(tmp_path: Path) -> None:
    root = tmp_path / "Apps"
    root.write_text("not a folder\n")
    mapper = AppMapper(root, tmp_path / "applications", tmp_path / "apps.json")
    rec = Recorder(mapper)
    with watching(root, rec):
        root.unlink()
        app(root / "a.desktop")
        wait_for(lambda: "a.desktop" in mapper.mapped(), "app in the folder that replaced it")


def test_stop_leaves_no_thread_behind(root: Path) -> None:
    before = set(threading.enumerate())
    rec = Recorder()
    with watching(root, rec):
        app(root / "a.desktop")
        assert rec.called.wait(WAIT)
        app(root / "b.desktop")  # pending, perhaps, when stop() is called
    assert not set(threading.enumerate()) - before
    Watcher(root, rec, tree=True).stop()  # never started: nothing to stop


def test_failing_callback_is_logged_and_watching_goes_on(root: Path) -> None:
    calls: list[int] = []

    def on_change() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    with capture_logs() as logs, watching(root, on_change):
        app(root / "a.desktop")
        wait_for(lambda: len(calls) == 1, "the first call")
        app(root / "b.desktop")
        wait_for(lambda: len(calls) == 2, "a call after the failed one")
    assert {e["event"] for e in logs} == {"watch_callback_failed"}
    assert logs[0]["path"] == str(root)


# -- Watcher: one folder (a certificate's) -------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "tls"
    path.mkdir()
    (path / "tls.pem").write_bytes(b"one")
    return path


def test_folder_symlink_swap_alone_is_seen(folder: Path) -> None:
    """The kubelet's atomic step: `..data_tmp` renamed over `..data`, nothing else."""
    for version in ("..v1", "..v2"):
        (folder / version).mkdir()
    (folder / "..data").symlink_to("..v1")
    (folder / "..data_tmp").symlink_to("..v2")
    rec = Recorder()
    with watching(folder, rec, tree=False):
        (folder / "..data_tmp").rename(folder / "..data")
        assert rec.called.wait(WAIT)


@pytest.mark.parametrize("change", ["write", "create", "delete", "rename"])
def test_folder_changes_are_seen(folder: Path, change: str) -> None:
    rec = Recorder()
    with watching(folder, rec, tree=False):
        if change == "write":
            (folder / "tls.pem").write_bytes(b"two")
        elif change == "create":
            (folder / "new.pem").write_bytes(b"x")
        elif change == "delete":
            (folder / "tls.pem").unlink()
        else:
            (folder / "tls.pem").rename(folder / "old.pem")
        assert rec.called.wait(WAIT)


def test_folder_reads_and_subfolders_make_no_event(folder: Path) -> None:
    (folder / "sub").mkdir()
    clock = FakeClock()
    rec = Recorder(clock=clock)
    with watching(folder, rec, tree=False, clock=clock) as watcher:
        (folder / "tls.pem").read_bytes()
        os.listdir(folder)
        (folder / "sub" / "x.pem").write_bytes(b"x")  # one folder, not a tree
        watcher.flush()
        assert watcher.seen() == set()


def test_missing_folder_cannot_be_watched(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    watcher = Watcher(tmp_path / "missing", Recorder(), tree=False)
    with pytest.raises(OSError):  # noqa: PT011 -- which OSError is watchdog's business
        watcher.start()
    watcher.stop()
    assert not set(threading.enumerate()) - before
