"""Evaluate a model or a trained adapter (greedy accuracy, pass@k, maj@k). See `python -m rlhf.evaluate --help`."""

import sys

from rlhf.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
