"""Command line: `whaletopd run [flags]` (what /start.py calls), `status`, `diagram`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from whaletopd import paths as paths_mod

# States a desktop does not leave by itself: the daemon is exiting or has given up.  For
# `status --alive` (a liveness probe), everything else, starting included, is alive.
TERMINAL = frozenset({"UNHEALTHY", "STOPPED", "FAILED"})
# States in which a user can connect now (IDLE: nobody is, and --stop-when-idle's stop
# is coming; the desktop works, and a client that connects keeps it).
SERVING = frozenset({"HEALTHY", "IDLE"})


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    command = args.pop(0) if args and not args[0].startswith("-") else "run"
    if command == "run":
        return _run(args)
    if command == "status":
        return _status(args)
    if command == "diagram":
        from whaletopd import diagram

        return diagram.main(args)
    print(f"whaletopd: unknown command {command!r} (run, status, diagram)", file=sys.stderr)
    return 2


def _run(args: list[str]) -> int:
    # Imported here, not at the top: `status` (Docker's HEALTHCHECK, every few seconds)
    # must not pay for the daemon's modules, and stop signals are held before the heavy
    # imports so a `docker stop` during them still ends STOPPED.
    from whaletopd import signals

    signals.hold()

    from whaletopd import config as config_mod
    from whaletopd import logs, loop

    error: str | None = None
    try:
        config = config_mod.parse(args)
    except config_mod.ConfigError as exc:
        config, error = config_mod.Config(), str(exc)
    logs.configure(os.environ.get("WHALETOP_LOG_FORMAT", config.log_format)
                   if error else config.log_format)
    try:
        return loop.run(config, config_error=error)
    except Exception:
        # A bug, not bad input: still one JSON line, and a code no final state uses.
        logs.get("whaletopd").exception("crash")
        return 1


def _status(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="whaletopd status",
        description="Print the desktop's state; exit 0 only when a user can connect now: "
                    "HEALTHY or IDLE (with --alive: unless the desktop is finished).")
    parser.add_argument("--json", action="store_true", help="print status.json")
    parser.add_argument(
        "--alive", action="store_true",
        help="exit 0 unless the state is terminal (" + ", ".join(sorted(TERMINAL))
        + ") or the daemon is gone; starting counts as alive (for liveness probes)")
    opts = parser.parse_args(args)
    import psutil

    from whaletopd import status

    paths = paths_mod.from_env()
    word, detail = status.read(paths.status, paths.status_json)
    pid = detail.get("pid")
    if word and isinstance(pid, int) and not psutil.pid_exists(pid):
        detail["stale"] = f"whaletopd (pid {pid}) is not running"
    if opts.json:
        print(json.dumps(detail or {"state": word}, indent=2, sort_keys=True))
    else:
        line = word or "UNKNOWN"
        if detail.get("reason"):
            line += f": {detail['reason']}"
        if "stale" in detail:
            line += f" ({detail['stale']})"
        print(line)
    if "stale" in detail:
        return 1
    if opts.alive:
        # With --no-exit-on-failure UNHEALTHY waits to be repaired, files kept: alive.
        waiting = word == "UNHEALTHY" and detail.get("exit_on_failure") is False
        return 1 if word in TERMINAL and not waiting else 0
    return 0 if word in SERVING else 1


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main(sys.argv[1:]))
