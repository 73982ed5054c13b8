"""Adapter + base -> a standalone model directory. See `python -m rlhf.merge --help`."""

import sys

from rlhf.merge import main

if __name__ == "__main__":
    sys.exit(main())
