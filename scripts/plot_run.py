"""Charts of a run: `python scripts/plot_run.py OUTPUT_DIR` writes PNGs from OUTPUT_DIR/metrics.jsonl to
OUTPUT_DIR/plots/ (reward, eval accuracy, KL, loss, completion length, step time, and an overview)."""

import sys

from rlhf.plots import main

if __name__ == "__main__":
    sys.exit(main())
