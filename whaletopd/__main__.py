import sys

from whaletopd.cli import main

sys.exit(main(sys.argv[1:]))
