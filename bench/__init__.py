"""whaletop benchmarks: how fast and how light the desktop is, measured on real containers.

    python -m bench            # full: 5 runs of each figure, writes bench/results.*
    python -m bench --quick    # each figure once, shorter idle window, writes to a temp dir

Every container is `docker run -d --network host -v STATE:/opt/whaletop IMAGE /start.py
--web-port=8280 ...`, named whaletop-bench-*, run one at a time and removed afterwards;
the web port (nginx) is the desktop's only TCP listener and the runner talks only to
127.0.0.1.  It needs the Docker CLI and root (the containers write root- and
uid-1000-owned files into the mounted folders), the standard library, and Pillow for
the timeline picture (skipped with a warning without it).  The browser figures need
Debian's Chromium and an interpreter with Playwright (page_load.py runs in it; without
one they are skipped, with a note).

Benchmarks are not tests: the exit status says whether every figure could be measured,
never whether a target was met.  The pure parts (statistics, log parsing, rendering,
results) and the in-container scripts are tested in tests/unit/test_bench.py.

Nothing here imports whaletopd: the runner measures the image, not the checkout.  The
modules under in_container/ and certgen.py run inside the container with the image's
python3 (certgen and the VNC sessions need cryptography, which the image has and the host
may lack), so the host side reads their source and never imports them; page_load.py runs
with the interpreter that has Playwright.
"""
