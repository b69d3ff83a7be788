"""`python -m bench`: the options, the groups in order, and the outputs."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import bench
from bench import original
from bench.browser import find_browser
from bench.containers import BenchError, Launcher, docker
from bench.cpu import QUIET_BUSY
from bench.figures import GROUPS
from bench.host import ROOT, git_commit, machine_info
from bench.log import log
from bench.measure import Bench
from bench.report import print_report, write_outputs

HERE = Path(__file__).resolve().parent  # a full run's results are kept next to the code


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench",
                                description=(bench.__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="each figure once, 10 s idle window: proves the runner works")
    p.add_argument("--runs", type=int, help="runs per figure (default 5, quick 1)")
    p.add_argument("--image", default=os.environ.get("WHALETOP_IMAGE", "whaletop:test"),
                   help="image to measure (default $WHALETOP_IMAGE or whaletop:test, "
                        "the e2e suite's; built with scripts/build when missing)")
    p.add_argument("--out", type=Path,
                   help="where results.json/.md and timeline.png go (default bench/; "
                        "--quick: a temporary folder)")
    p.add_argument("--only", default=",".join(GROUPS),
                   help=f"comma-separated groups (default all): {','.join(GROUPS)}")
    p.add_argument("--home-files", type=int, default=100_000,
                   help="files in the big mounted home (default 100000)")
    p.add_argument("--quiet-wait", type=float,
                   help="seconds to wait before each container for the host to be idle "
                        f"(< {QUIET_BUSY * 100:.0f}%% CPU for 2 s; default 60, quick 10, 0: never)")
    p.add_argument("--web-port", type=int, default=8280,
                   help="the desktop's only TCP port (nginx), on 127.0.0.1 (default 8280)")
    p.add_argument("--playwright-python", metavar="PYTHON",
                   help="an interpreter with Playwright for the browser figures (default: "
                        "this one if it has Playwright, else .tox/e2e/bin/python; without "
                        "one they are skipped)")
    p.add_argument("--chromium", default="/usr/bin/chromium",
                   help="the browser Playwright drives (default Debian's /usr/bin/chromium; "
                        "none is ever downloaded)")
    p.add_argument("--original", type=Path, metavar="SOURCE",
                   help="side by side with the original project: build its image from "
                        "SOURCE, a checkout of mbainrot/whaletop, and measure both images "
                        "(results.json's \"original\" section and original.md)")
    p.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                   help="only re-render results.md and timeline.png from a results.json")
    return p


def render(results_json: Path, out: Path | None) -> int:
    doc = json.loads(results_json.read_text())
    out = out or results_json.parent
    written = write_outputs(doc, out)
    print_report(doc)
    log(f"wrote {', '.join(str(out / name) for name in written)}")
    return 0


def compare_original(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """--original: the side-by-side comparison (bench/original.py) instead of the groups."""
    try:
        original.check_source(args.original)
    except BenchError as exc:
        p.error(str(exc))
    if docker("image", "inspect", args.image, check=False).returncode != 0:
        log(f"building {args.image} with scripts/build")
        subprocess.run(["bash", str(ROOT / "scripts" / "build"), args.image], check=True)
    out = args.out or (Path(tempfile.mkdtemp(prefix="whaletop-bench-out-")) if args.quick
                       else HERE)
    quiet_wait = args.quiet_wait if args.quiet_wait is not None else (10 if args.quick else 60)

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # the same clean-up as Ctrl-C: no container left behind
    signal.signal(signal.SIGTERM, on_signal)
    try:
        return original.main(args.original, args.image, out, args.runs or (1 if args.quick
                                                                             else 5),
                             args.quick, args.web_port, quiet_wait)
    except KeyboardInterrupt:
        log("interrupted: containers removed")
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.render:
        return render(args.render, args.out)
    if args.original is not None:
        return compare_original(p, args)
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        p.error(f"unknown group(s) {unknown}; choose from {list(GROUPS)}")
    runs = args.runs or (1 if args.quick else 5)
    if docker("image", "inspect", args.image, check=False).returncode != 0:
        log(f"building {args.image} with scripts/build")
        subprocess.run(["bash", str(ROOT / "scripts" / "build"), args.image], check=True)
    image_id = docker("image", "inspect", "-f", "{{.Id}}", args.image).stdout.strip()
    commit = git_commit()  # now: the tree may move on while the benchmark runs
    out = args.out or (Path(tempfile.mkdtemp(prefix="whaletop-bench-out-")) if args.quick
                       else HERE)
    workdir = Path(tempfile.mkdtemp(prefix="whaletop-bench-"))
    quiet_wait = args.quiet_wait if args.quiet_wait is not None else (10 if args.quick else 60)
    launcher = Launcher(args.image, args.web_port, workdir, quiet_wait)
    browser = (find_browser(args.playwright_python, args.chromium)
               if {"browser", "interactive", "sound"} & set(groups) else None)
    if browser is not None:
        log(f"browser figures: skipped ({browser.missing})" if browser.missing else
            f"browser figures: {browser.version or browser.chromium}, Playwright of "
            f"{browser.python}")
        if browser.missing and os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            # scripts/test installs the browser: in CI its absence is a defect, not a skip.
            log("CI=true: the browser figures may not be skipped")
            return 1
    runner = Bench(launcher, runs, args.quick, browser=browser)

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # the same clean-up as Ctrl-C: no container left behind
    signal.signal(signal.SIGTERM, on_signal)
    t_begin = time.monotonic()
    try:
        skipped = ({"browser", "interactive"} if browser is not None and browser.missing
                   else set())
        needs_container = [g for g in groups if g != "image" and g not in skipped]
        if needs_container:
            try:
                runner.warm_up()
            except (BenchError, OSError, ValueError, subprocess.SubprocessError) as exc:
                log(f"warm-up: ERROR {exc}")
                for g in needs_container:
                    runner.results.fail(GROUPS[g], f"warm-up failed: {exc}")
                groups = [g for g in groups if g == "image" or g in skipped]
        for group in groups:
            log(f"--- {group}")
            runner.run_group(group, args.home_files)
    except KeyboardInterrupt:
        log("interrupted: removing containers")
        return 130
    finally:
        launcher.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    keys = [k for g in args.only.split(",") if g.strip() in GROUPS for k in GROUPS[g.strip()]]
    doc = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if args.quick else "full", "runs": runs,
        "duration_s": round(time.monotonic() - t_begin, 1),
        "machine": machine_info(), "commit": commit,
        "image": {"tag": args.image, "id": image_id},
        **runner.results.doc(keys, args.home_files, launcher.host),
    }
    written = write_outputs(doc, out)
    print_report(doc)
    log(f"wrote {', '.join(str(out / name) for name in written)}")
    return 1 if runner.results.errors else 0
