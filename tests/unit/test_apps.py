"""Apps under /Apps in the menu: real trees in temp dirs, no mocks (the watch on them is
in test_watch.py)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from whaletopd import apps_scan
from whaletopd.apps import AppMapper, Change, validate

NOBODY = 65534


def entry(name: str = "Thing", exec_: str = "thing", extra: str = "") -> str:
    return f"[Desktop Entry]\nType=Application\nName={name}\nExec={exec_}\n{extra}"


def app(path: Path, name: str = "Thing", exec_: str = "thing") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(entry(name, exec_), encoding="utf-8")
    return path


def kinds(changes: list[Change]) -> set[tuple[str, str]]:
    return {(c.kind, c.name) for c in changes}


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return tmp_path / "usr" / "share" / "applications"


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    return tmp_path / "state" / "apps.json"


@pytest.fixture
def mapper(root: Path, target: Path, manifest: Path) -> AppMapper:
    return AppMapper(root, target, manifest)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temp dir that uid nobody may enter and write (pytest's tmp_path is root's only)."""
    path = Path(tempfile.mkdtemp(prefix="whaletopd-apps-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


def writable(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o777)  # mkdir's mode is cut by the umask
    return path


@pytest.fixture
def fast_tmp(tmp_path: Path) -> Iterator[Path]:
    """tmpfs when there is one: the 3000-file tree measures the mapper, not the disk."""
    if not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="whaletopd-apps-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path)


@contextlib.contextmanager
def unreadable(path: Path) -> Iterator[None]:
    """chmod 000; root reads such files anyway, so root also drops to nobody's euid."""
    mode = stat.S_IMODE(path.stat().st_mode)
    path.chmod(0)
    as_root = os.geteuid() == 0
    if as_root:
        os.seteuid(NOBODY)
    try:
        yield
    finally:
        if as_root:
            os.seteuid(0)
        path.chmod(mode)


# -- mapping --------------------------------------------------------------------------


def test_apps_at_any_depth_are_mapped(mapper: AppMapper, root: Path, target: Path) -> None:
    a = app(root / "top.desktop")
    b = app(root / "Games" / "chess.desktop")
    c = app(root / "One" / "Two" / "Three" / "Four" / "deep.desktop")
    (root / "One" / "notes.txt").write_text("not an app\n")
    changes = mapper.sync()
    assert kinds(changes) == {("added", "top.desktop"), ("added", "chess.desktop"),
                              ("added", "deep.desktop")}
    assert mapper.mapped() == {"chess.desktop": str(b), "deep.desktop": str(c),
                               "top.desktop": str(a)}
    assert sorted(os.listdir(target)) == ["chess.desktop", "deep.desktop", "top.desktop"]


def test_copy_has_same_bytes_and_mode_0644(mapper: AppMapper, root: Path, target: Path) -> None:
    src = root / "Editor" / "editor.desktop"
    src.parent.mkdir()
    content = entry("Éditeur ✓", "editor %F", "Comment[de]=Ein Editor\r\n").encode()
    src.write_bytes(content)
    src.chmod(0o600)
    old_umask = os.umask(0o077)
    try:
        mapper.sync()
    finally:
        os.umask(old_umask)
    copy = target / "editor.desktop"
    assert copy.read_bytes() == content
    assert stat.S_IMODE(copy.stat().st_mode) == 0o644
    assert os.listdir(target) == ["editor.desktop"]  # no temp file left behind


def test_target_and_its_parents_are_created(tmp_path: Path, root: Path) -> None:
    target = tmp_path / "a" / "b" / "applications"
    app(root / "x.desktop")
    AppMapper(root, target, tmp_path / "m.json").sync()
    assert (target / "x.desktop").is_file()


def test_changed_source_updates_the_copy(mapper: AppMapper, root: Path, target: Path) -> None:
    src = app(root / "A" / "a.desktop", name="One")
    mapper.sync()
    src.write_text(entry(name="Two"))  # same size, at once: the stat may not change
    assert mapper.sync() == [Change("updated", "a.desktop", str(src))]
    assert "Name=Two" in (target / "a.desktop").read_text()


def test_deleted_source_removes_the_copy(mapper: AppMapper, root: Path, target: Path,
                                         manifest: Path) -> None:
    src = app(root / "A" / "a.desktop")
    mapper.sync()
    shutil.rmtree(root / "A")
    assert mapper.sync() == [Change("removed", "a.desktop", str(src), "source removed")]
    assert not (target / "a.desktop").exists()
    assert mapper.mapped() == {}
    assert json.loads(manifest.read_text()) == {}


def test_unchanged_tree_gives_no_changes(mapper: AppMapper, root: Path) -> None:
    app(root / "A" / "a.desktop")
    assert mapper.sync() != []
    assert mapper.sync() == []


def test_foreign_files_in_target_are_never_touched(mapper: AppMapper, root: Path,
                                                   target: Path) -> None:
    target.mkdir(parents=True)
    (target / "debian.desktop").write_text(entry("From a package"))
    (target / "broken-but-theirs.desktop").write_text("garbage\n")
    app(root / "A" / "a.desktop")
    mapper.sync()
    shutil.rmtree(root)
    assert kinds(mapper.sync()) == {("removed", "a.desktop")}
    assert sorted(os.listdir(target)) == ["broken-but-theirs.desktop", "debian.desktop"]
    assert (target / "debian.desktop").read_text() == entry("From a package")


def test_source_named_like_a_foreign_file_is_skipped(mapper: AppMapper, root: Path,
                                                     target: Path) -> None:
    target.mkdir(parents=True)
    (target / "firefox.desktop").write_text(entry("Debian's Firefox"))
    src = app(root / "Web" / "firefox.desktop", name="Our Firefox")
    [change] = mapper.sync()
    assert (change.kind, change.name, change.source) == ("skipped", "firefox.desktop", str(src))
    assert "not put there by whaletopd" in change.reason
    assert mapper.mapped() == {}
    src.unlink()
    mapper.sync()
    assert (target / "firefox.desktop").read_text() == entry("Debian's Firefox")


@pytest.mark.parametrize("first", ["A", "B"])
def test_same_name_twice_first_relative_path_wins(tmp_path: Path, first: str) -> None:
    root, target = tmp_path / "Apps", tmp_path / "applications"
    mapper = AppMapper(root, target, tmp_path / "apps.json")
    paths = {"A": root / "A" / "tool.desktop", "B": root / "B" / "tool.desktop"}
    second = "B" if first == "A" else "A"
    app(paths[first], name=f"from {first}")
    mapper.sync()
    app(paths[second], name=f"from {second}")
    changes = mapper.sync()
    assert mapper.mapped() == {"tool.desktop": str(paths["A"])}
    assert "Name=from A" in (target / "tool.desktop").read_text()
    [skip] = [c for c in changes if c.kind == "skipped"]
    assert skip.source == str(paths["B"])
    assert str(paths["A"]) in skip.reason
    assert mapper.skipped() == {str(paths["B"]): skip.reason}


def test_ownership_survives_a_restart(root: Path, target: Path, manifest: Path) -> None:
    src = app(root / "A" / "a.desktop")
    AppMapper(root, target, manifest).sync()
    again = AppMapper(root, target, manifest)
    assert again.sync() == []
    assert again.mapped() == {"a.desktop": str(src)}
    src.unlink()
    assert kinds(again.sync()) == {("removed", "a.desktop")}
    assert not (target / "a.desktop").exists()


def test_copy_changed_in_target_is_left_alone(mapper: AppMapper, root: Path,
                                              target: Path) -> None:
    src = app(root / "a.desktop")
    mapper.sync()
    (target / "a.desktop").write_text(entry("edited by hand in the container"))
    src.unlink()
    [change] = mapper.sync()
    assert change.kind == "removed"
    assert "changed outside whaletopd" in change.reason
    assert (target / "a.desktop").read_text() == entry("edited by hand in the container")
    assert mapper.mapped() == {}


def test_copy_deleted_from_target_is_restored(mapper: AppMapper, root: Path,
                                              target: Path) -> None:
    src = app(root / "a.desktop")
    mapper.sync()
    (target / "a.desktop").unlink()
    assert mapper.sync() == [Change("added", "a.desktop", str(src))]
    assert (target / "a.desktop").read_text() == src.read_text()


def test_copy_made_before_a_crash_is_still_ours(root: Path, target: Path,
                                                manifest: Path) -> None:
    src = app(root / "a.desktop", name="One")
    AppMapper(root, target, manifest).sync()
    src.write_text(entry(name="Two"))
    shutil.copyfile(src, target / "a.desktop")  # copied; the manifest was not saved
    again = AppMapper(root, target, manifest)
    assert again.sync() == [Change("updated", "a.desktop", str(src))]
    src.unlink()
    assert kinds(again.sync()) == {("removed", "a.desktop")}
    assert not (target / "a.desktop").exists()


def test_manifest_never_names_a_path_outside_target(tmp_path: Path, root: Path, target: Path,
                                                    manifest: Path) -> None:
    victim = tmp_path / "usr" / "share" / "victim.desktop"
    victim.parent.mkdir(parents=True)
    victim.write_text(entry())
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"../victim.desktop": {"source": "/x", "sha256": "0"}}))
    assert AppMapper(root, target, manifest).sync() == []
    assert victim.exists()


def test_corrupt_manifest_leaves_old_copies_alone(root: Path, target: Path,
                                                  manifest: Path) -> None:
    src = app(root / "a.desktop")
    AppMapper(root, target, manifest).sync()
    manifest.write_text("{not json")
    [change] = AppMapper(root, target, manifest).sync()
    assert (change.kind, change.source) == ("skipped", str(src))
    assert "not put there by whaletopd" in change.reason
    assert (target / "a.desktop").exists()


# -- what is refused, and why ---------------------------------------------------------


@pytest.mark.parametrize(("content", "reason"), [
    (b"Name=X\nExec=x\n", "no [Desktop Entry] group"),
    (b"[Desktop Action new]\nName=X\nExec=x\n", "no [Desktop Entry] group"),
    (b"[Desktop Entry]\nType=Application\nExec=x\n", "no Name="),
    (b"[Desktop Entry]\nName=\nExec=x\n", "no Name="),
    (b"[Desktop Entry]\nName=X\n", "no Exec="),
    (b"[Desktop Entry]\nName=X\n[Other]\nExec=x\n", "no Exec="),
    (b"[Desktop Entry]\nName=Caf\xe9\nExec=x\n", "not UTF-8"),
    (b"[Desktop Entry]\nType=Link\nName=X\nURL=https://example.org\n",
     "Type=Link is not an application"),
    (b"[Desktop Entry]\nType=Directory\nName=X\n", "Type=Directory is not an application"),
])
def test_invalid_entries_are_skipped_with_reason(mapper: AppMapper, root: Path, target: Path,
                                                 content: bytes, reason: str) -> None:
    src = root / "Bad" / "bad.desktop"
    src.parent.mkdir()
    src.write_bytes(content)
    assert validate(src, root, 1024) == reason
    assert mapper.sync() == [Change("skipped", "bad.desktop", str(src), reason)]
    assert not (target / "bad.desktop").exists()


def test_valid_entry_forms(root: Path) -> None:
    src = root / "ok.desktop"
    src.write_text("# comment\n[Desktop Entry]\nName[de]=Ding\nName = Thing \nExec= thing\n"
                   "[Desktop Action new]\nExec=other\n")  # no Type means Application
    assert validate(src, root, 1024) is None


def test_too_large_is_skipped(root: Path, target: Path, manifest: Path) -> None:
    src = root / "big.desktop"
    src.write_text(entry(extra="Comment=" + "x" * 300 + "\n"))
    assert validate(src, root, 100) == "larger than 100 bytes"
    changes = AppMapper(root, target, manifest, max_bytes=100).sync()
    assert changes == [Change("skipped", "big.desktop", str(src), "larger than 100 bytes")]


def test_unreadable_file_is_skipped(open_tmp: Path) -> None:
    root = open_tmp / "Apps"
    root.mkdir(mode=0o755)
    src = app(root / "locked.desktop")
    mapper = AppMapper(root, writable(open_tmp / "applications"), open_tmp / "apps.json")
    with unreadable(src):
        assert validate(src, root, 1024) == "unreadable: Permission denied"
        changes = mapper.sync()
    assert changes == [Change("skipped", "locked.desktop", str(src),
                              "unreadable: Permission denied")]


def test_unreadable_folder_is_skipped_and_the_rest_mapped(open_tmp: Path) -> None:
    root = open_tmp / "Apps"
    locked = root / "Locked"
    app(locked / "hidden.desktop")
    app(root / "Open" / "shown.desktop")
    for d in (root, locked, root / "Open"):
        d.chmod(0o755)
    mapper = AppMapper(root, writable(open_tmp / "applications"), open_tmp / "apps.json")
    with unreadable(locked):
        changes = mapper.sync()
    assert kinds(changes) == {("skipped", ""), ("added", "shown.desktop")}
    assert Change("skipped", "", str(locked), "unreadable: Permission denied") in changes


def test_fifo_and_folder_named_desktop(mapper: AppMapper, root: Path) -> None:
    fifo = root / "pipe.desktop"
    os.mkfifo(fifo)
    inner = app(root / "odd.desktop" / "inner.desktop")  # a folder is a folder
    assert validate(fifo, root, 1024) == "not a regular file"
    changes = mapper.sync()
    assert set(changes) == {Change("skipped", "pipe.desktop", str(fifo), "not a regular file"),
                            Change("added", "inner.desktop", str(inner))}


def test_symlink_loops_are_skipped(mapper: AppMapper, root: Path) -> None:
    (root / "a.desktop").symlink_to("b.desktop")
    (root / "b.desktop").symlink_to("a.desktop")
    (root / "self.desktop").symlink_to("self.desktop")
    sub = root / "Sub"
    real = app(sub / "real.desktop")
    (sub / "back").symlink_to("..")  # a folder loop: the scan must end
    changes = mapper.sync()
    assert validate(root / "a.desktop", root, 1024) == "symlink loop"
    assert set(changes) == {
        Change("skipped", "a.desktop", str(root / "a.desktop"), "symlink loop"),
        Change("skipped", "b.desktop", str(root / "b.desktop"), "symlink loop"),
        Change("skipped", "self.desktop", str(root / "self.desktop"), "symlink loop"),
        Change("skipped", "", str(sub / "back"), "symlink loop"),
        Change("added", "real.desktop", str(real)),
    }


def test_symlinks_outside_root_are_refused(tmp_path: Path, mapper: AppMapper,
                                           root: Path) -> None:
    outside = app(tmp_path / "elsewhere" / "secret.desktop")
    (root / "secret.desktop").symlink_to(outside)
    (root / "Linked").symlink_to(outside.parent, target_is_directory=True)
    (root / "dangling.desktop").symlink_to(root / "missing.desktop")
    inside = app(root / "Real" / "inside.desktop")
    (root / "alias.desktop").symlink_to(inside)
    (root / "Also").symlink_to(root / "Real", target_is_directory=True)
    refused = f"symlink points outside {root}"
    assert validate(root / "secret.desktop", root, 1024) == refused
    changes = mapper.sync()
    assert set(changes) == {
        Change("skipped", "secret.desktop", str(root / "secret.desktop"), refused),
        Change("skipped", "", str(root / "Linked"), refused),
        Change("skipped", "dangling.desktop", str(root / "dangling.desktop"), "broken symlink"),
        Change("skipped", "", str(root / "Also"), f"same folder as {root / 'Real'}"),
        Change("added", "inside.desktop", str(inside)),
        Change("added", "alias.desktop", str(root / "alias.desktop")),
    }


def test_absent_root_is_no_error_and_removes_what_was_mapped(mapper: AppMapper, root: Path,
                                                             target: Path) -> None:
    shutil.rmtree(root)
    assert mapper.sync() == []
    app(root / "A" / "a.desktop")
    mapper.sync()
    shutil.rmtree(root)
    assert kinds(mapper.sync()) == {("removed", "a.desktop")}
    assert os.listdir(target) == []


class VanishingMapper(AppMapper):
    """Deletes `victim` while listing `trigger`: after the scan saw it, before it reads it."""

    victim: Path
    trigger: Path

    def _listdir(self, path: str) -> list[os.DirEntry[str]]:
        if path == str(self.trigger) and self.victim.exists():
            shutil.rmtree(self.victim)
        return super()._listdir(path)


def test_folder_vanishing_mid_scan_is_skipped(root: Path, target: Path, manifest: Path) -> None:
    app(root / "Zapped" / "gone.desktop")
    kept = app(root / "Kept" / "kept.desktop")
    mapper = VanishingMapper(root, target, manifest)
    mapper.victim, mapper.trigger = root / "Zapped", root / "Kept"  # Kept is read first
    changes = mapper.sync()
    assert set(changes) == {Change("skipped", "", str(root / "Zapped"),
                                   "folder vanished during scan"),
                            Change("added", "kept.desktop", str(kept))}


def test_skips_are_reported_once_and_listed(mapper: AppMapper, root: Path) -> None:
    bad = root / "bad.desktop"
    bad.write_text("[Desktop Entry]\nName=X\n")
    assert kinds(mapper.sync()) == {("skipped", "bad.desktop")}
    assert mapper.sync() == []
    assert mapper.skipped() == {str(bad): "no Exec="}
    bad.write_text(entry())
    assert mapper.sync() == [Change("added", "bad.desktop", str(bad))]
    assert mapper.skipped() == {}


def test_source_turning_invalid_is_removed_with_its_reason(mapper: AppMapper,
                                                           root: Path) -> None:
    src = app(root / "a.desktop")
    mapper.sync()
    src.write_text("[Desktop Entry]\nName=X\n")
    assert mapper.sync() == [Change("removed", "a.desktop", str(src), "no Exec=")]
    assert mapper.sync() == []


def test_max_files_limits_the_scan(root: Path, target: Path, manifest: Path) -> None:
    for i in range(10):
        app(root / f"app{i}.desktop")
    changes = AppMapper(root, target, manifest, max_files=4).sync()
    assert sum(c.kind == "added" for c in changes) == 4
    assert Change("skipped", "", str(root),
                  "more than 4 .desktop files; the rest are ignored") in changes


def test_root_that_is_a_file_is_skipped(tmp_path: Path, target: Path, manifest: Path) -> None:
    root = tmp_path / "Apps"
    root.write_text("not a folder\n")
    assert AppMapper(root, target, manifest).sync() == [
        Change("skipped", "", str(root), "not a folder")]


def test_copy_replaced_by_a_folder_is_left_alone(mapper: AppMapper, root: Path,
                                                 target: Path) -> None:
    src = app(root / "a.desktop")
    mapper.sync()
    (target / "a.desktop").unlink()
    (target / "a.desktop").mkdir()
    assert mapper.sync() == [Change("skipped", "a.desktop", str(src),
                                    f"{target / 'a.desktop'} was changed outside whaletopd; "
                                    "left as it is")]
    assert mapper.mapped() == {}
    assert (target / "a.desktop").is_dir()


def test_copy_edited_while_its_source_changes_is_left_alone(mapper: AppMapper, root: Path,
                                                           target: Path) -> None:
    src = app(root / "a.desktop", name="One")
    mapper.sync()
    (target / "a.desktop").write_text(entry("edited by hand in the container"))
    src.write_text(entry(name="Two"))
    [change] = mapper.sync()
    assert (change.kind, change.source) == ("skipped", str(src))
    assert "changed outside whaletopd" in change.reason
    assert (target / "a.desktop").read_text() == entry("edited by hand in the container")
    assert mapper.mapped() == {}


def test_copy_and_source_both_deleted(mapper: AppMapper, root: Path, target: Path) -> None:
    src = app(root / "a.desktop")
    mapper.sync()
    (target / "a.desktop").unlink()
    src.unlink()
    assert mapper.sync() == [Change("removed", "a.desktop", str(src), "source removed")]
    assert mapper.mapped() == {}


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """chmod 555; root writes anyway, so root also drops to nobody's euid."""
    mode = stat.S_IMODE(path.stat().st_mode)
    path.chmod(0o555)
    as_root = os.geteuid() == 0
    if as_root:
        os.seteuid(NOBODY)
    try:
        yield
    finally:
        if as_root:
            os.seteuid(0)
        path.chmod(mode)


def test_target_that_cannot_be_written_is_a_skip_then_caught_up(open_tmp: Path) -> None:
    root = open_tmp / "Apps"
    old = app(root / "old.desktop")
    target = writable(open_tmp / "applications")
    mapper = AppMapper(root, target, open_tmp / "apps.json")
    mapper.sync()
    old.unlink()
    new = app(root / "new.desktop")
    with read_only(target):
        changes = mapper.sync()
    assert changes == [
        Change("skipped", "new.desktop", str(new),
               f"cannot write {target / 'new.desktop'}: Permission denied"),
        Change("skipped", "old.desktop", str(old),
               f"cannot remove {target / 'old.desktop'}: Permission denied"),
    ]
    assert mapper.mapped() == {"old.desktop": str(old)}
    assert kinds(mapper.sync()) == {("added", "new.desktop"), ("removed", "old.desktop")}
    assert sorted(os.listdir(target)) == ["new.desktop"]


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The sources the mapper reads, in order."""
    seen: list[str] = []
    real = apps_scan._read

    def counting(path: str, *args: Any) -> bytes:
        seen.append(path)
        return real(path, *args)

    monkeypatch.setattr(apps_scan, "_read", counting)
    return seen


def test_an_unchanged_source_is_not_read_again(mapper: AppMapper, root: Path, target: Path,
                                               reads: list[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apps_scan, "RACY_NS", 0)  # as if every file were old
    a, b = app(root / "a.desktop"), app(root / "b.desktop")
    mapper.sync()
    assert sorted(reads) == [str(a), str(b)]
    reads.clear()
    assert mapper.sync() == []
    assert reads == []  # their stat vouches for what was validated
    (target / "a.desktop").unlink()
    assert mapper.sync() == [Change("added", "a.desktop", str(a))]
    assert reads == [str(a)]  # read to be copied, not to be validated
    reads.clear()
    a.write_text(entry(name="A longer name"))
    assert mapper.sync() == [Change("updated", "a.desktop", str(a))]
    assert reads == [str(a)]


def test_a_source_changed_just_now_is_read_again(mapper: AppMapper, root: Path,
                                                 reads: list[str]) -> None:
    a = app(root / "a.desktop")
    mapper.sync()
    reads.clear()
    assert mapper.sync() == []
    assert reads == [str(a)]  # its stat may not change at its next write: not trusted


def test_thousands_of_files_then_nothing_to_do(fast_tmp: Path) -> None:
    root, target = fast_tmp / "Apps", fast_tmp / "applications"
    mapper = AppMapper(root, target, fast_tmp / "apps.json")
    for d in range(30):
        folder = root / f"Suite{d:02}" / "apps"
        folder.mkdir(parents=True)
        for i in range(100):
            (folder / f"s{d}-{i}.desktop").write_text(entry(f"App {d}-{i}"))
    assert len(mapper.sync()) == 3000
    assert len(os.listdir(target)) == 3000
    assert mapper.sync() == []

