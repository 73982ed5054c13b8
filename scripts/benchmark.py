"""Thin entry point: `python scripts/benchmark.py RECIPE [--steps 5] [--json] [key=value ...]` (see rlhf.benchmark)."""

from rlhf.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())
