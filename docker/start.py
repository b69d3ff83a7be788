#!/bin/sh
# The original project's entry point, kept so `docker run IMAGE /start.py --flags` works.
# Stop signals are held pending from the first instant until whaletopd has handlers for
# them, so even a `docker stop` during the interpreter's start-up ends in a clean STOPPED.
exec /usr/bin/env --block-signal=TERM,INT,HUP /usr/bin/python3 -m whaletopd run "$@"
