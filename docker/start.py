#!/usr/bin/python3
"""The original project's entry point, kept so `docker run IMAGE /start.py --flags` works."""
import sys

from whaletopd.cli import main

sys.exit(main(["run", *sys.argv[1:]]))
