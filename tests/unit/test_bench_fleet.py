"""The fleet group's arithmetic, its figures and its picture (bench/fleet.py); the group's
containers themselves run in `python3 -m bench --only fleet`."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import figures, fleet
from bench.containers import BenchError
from bench.report import write_outputs

MEMINFO = """MemTotal:       24599000 kB
MemFree:         1000000 kB
MemAvailable:   20000000 kB
Buffers:           10000 kB
"""


def _run(n: int, healthy: float, mem: float, cpu: float) -> fleet.FleetRun:
    run = fleet.FleetRun(n)
    run.healthy_s = [healthy - 0.1 * i for i in range(n)]
    run.mem = [mem * fleet.MIB + i * fleet.MIB for i in range(n)]
    run.anon = [(mem - 60) * fleet.MIB] * n
    run.cpu = [cpu] * n
    run.host_mem_drop = n * (mem - 40) * fleet.MIB
    return run


def test_mem_available_is_read_in_bytes() -> None:
    assert fleet.mem_available(MEMINFO) == 20_000_000 * 1024


def test_mem_available_missing_is_an_error_not_zero() -> None:
    with pytest.raises(BenchError):
        fleet.mem_available("MemTotal: 1 kB\n")


def test_every_size_has_its_four_figures_in_the_group() -> None:
    for n in fleet.SIZES:
        for key in fleet.fleet_keys(n):
            assert key in figures.BY_KEY
            assert key in figures.GROUPS["fleet"]
    assert set(fleet.QUICK_SIZES) <= set(fleet.SIZES)


def test_targets_are_the_issues() -> None:
    assert figures.format_target(figures.BY_KEY["fleet_healthy_8"]) == "≤ 5 s"
    assert figures.BY_KEY["fleet_healthy_16"].target is None
    for n in fleet.SIZES:
        assert figures.format_target(figures.BY_KEY[f"fleet_mem_{n}"]) == "≤ 120 MiB"


def test_larger_fleets_may_take_longer_to_be_healthy() -> None:
    waits = [fleet.timeout_for(n) for n in fleet.SIZES]
    assert waits == sorted(waits)
    assert waits[0] >= 30


def test_summary_takes_the_last_healthy_and_divides_the_host_memory() -> None:
    s = _run(4, 3.0, 150.0, 0.2).summary()
    assert s["all_healthy_s"] == 3.0
    assert s["mem_mib"] == {"median": 151.5, "min": 150.0, "max": 153.0, "n": 4}
    assert s["host_mem_per_desktop_mib"] == 110.0
    assert s["anon_mib"]["median"] == 90.0
    assert s["cpu_s_per_min"]["median"] == 0.2


def test_ports_in_use_are_refused_before_anything_starts() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(BenchError, match=str(port)):
            fleet.ports_free([port])


def test_picture_is_written_with_the_results(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    runs = [_run(n, 1.0 + n / 4, 150.0 - n, 0.3).summary() for n in (1, 2, 4, 8)]
    runs.append({"n": 16, "error": "3 of 16 desktops not HEALTHY within 190 s"})
    doc = {"figures": [], "detail": {"fleet": {"runs": runs}}, "machine": {"cores": 2}}
    written = write_outputs(doc, tmp_path)
    assert "fleet.png" in written
    from PIL import Image

    with Image.open(tmp_path / "fleet.png") as img:
        assert img.size == (1500, 520)
        # something was drawn in each panel's plot area besides the white background
        for p in range(3):
            box = (20 + p * 486 + 60, 110, 20 + (p + 1) * 486 - 30, 450)
            assert len(img.crop(box).getcolors(10_000) or []) > 2


def test_no_picture_without_fleet_runs(tmp_path: Path) -> None:
    written = write_outputs({"figures": [], "detail": {}, "machine": {}}, tmp_path)
    assert "fleet.png" not in written
