"""Train several recipes for the same wall-clock budget, one after another, and print held-out accuracy side by side.

    .venv/bin/python scripts/compare_algorithms.py --minutes 6 \\
        recipes/grpo_arithmetic_smollm2.yaml recipes/rloo_arithmetic_smollm2.yaml \\
        recipes/ppo_arithmetic_smollm2.yaml recipes/trpo_arithmetic_smollm2.yaml [-- key.sub=value ...]

Each recipe runs in its own process with `train.max_minutes` set (the step-0 and final evaluations are not counted),
a constant learning rate (a cosine schedule would decay over max_steps, which a time budget never reaches) and the
shared overrides after `--`. Writes `<out>/comparison.json` and prints a Markdown table. Run it on a quiet machine:
the budget is wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_one(recipe: Path, minutes: float, out: Path, extra: list[str]) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "rlhf.train",
        str(recipe),
        f"output_dir={out}",
        f"train.max_minutes={minutes}",
        "train.overwrite=true",  # a comparison is rerun into the same folders
        "train.max_steps=100000",
        "optim.schedule=constant",
        "eval.every=100000",
        "logging.progress_bar=false",
        "logging.samples_every=0",
        *extra,
    ]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/accuracy" in r]
    train = [r for r in rows if "time/step" in r]
    return {
        "recipe": recipe.name,
        "steps": len(train),
        "train_minutes": sum(r["time/step"] for r in train) / 60,
        "seconds_per_step": sum(r["time/step"] for r in train) / max(len(train), 1),
        "accuracy_start": evals[0]["eval/accuracy"],
        "accuracy_end": evals[-1]["eval/accuracy"],
        "reward_last10": sum(r["reward/mean"] for r in train[-10:]) / max(len(train[-10:]), 1),
        "wall_minutes_incl_load_and_eval": wall / 60,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipes", nargs="+", type=Path)
    ap.add_argument("--minutes", type=float, default=6.0, help="training budget per recipe")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "compare")
    args = ap.parse_args(argv)
    results = [run_one(r, args.minutes, args.out / r.stem, extra) for r in args.recipes]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.json").write_text(json.dumps(results, indent=2))
    print(f"\n{args.minutes:g} minutes of training each (held-out greedy accuracy, step 0 -> end)\n")
    print("| recipe | steps | s/step | accuracy start | accuracy end | train reward (last 10 steps) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['recipe']} | {r['steps']} | {r['seconds_per_step']:.1f} | {r['accuracy_start']:.1%} | "
            f"{r['accuracy_end']:.1%} | {r['reward_last10']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
