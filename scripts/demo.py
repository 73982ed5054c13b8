"""The demo: GRPO-train SmolLM2-135M-Instruct + LoRA on two-digit addition, offline on CPU, and show it learned.

The recipe is recipes/demo_arithmetic_smollm2.yaml (GRPO with dynamic sampling).

    make demo                      # or: .venv/bin/python scripts/demo.py [key.sub=value ...]

Prints held-out greedy accuracy before and after training, and the same problems worded differently (the adapter
must not have memorised one phrasing).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "demo_arithmetic_smollm2.yaml"
REWORDED = {
    "+": "What is the sum of {a} and {b}? Give just the number.",
    "any": "What is {a} {op} {b}? Answer with just the number.",
}


def main(overrides: list[str]) -> int:
    sys.path.insert(0, str(REPO))
    from rlhf.accuracy import greedy_eval
    from rlhf.build import arithmetic_rows
    from rlhf.config import load_config
    from rlhf.data import build_prompt_set
    from rlhf.models import reference_policy
    from rlhf.rollout import BuiltinEngine
    from rlhf.train import setup_logging
    from rlhf.trainer import Trainer

    setup_logging()
    start = time.perf_counter()
    # the demo is meant to be run again: each run starts runs/demo afresh
    cfg = load_config(RECIPE, [f"output_dir={REPO / 'runs' / 'demo'}", "train.overwrite=true", *overrides])
    trainer = Trainer(cfg)
    trainer.train()
    train_time = time.perf_counter() - start

    rows = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]

    a = cfg.data.arithmetic
    template = REWORDED["+"] if a.operators == ["+"] else REWORDED["any"]
    _, reworded_rows = arithmetic_rows(a, cfg.seed, template)
    reworded = build_prompt_set(reworded_rows, trainer.tokenizer)
    trained = BuiltinEngine(trainer.peft_model, trainer.tokenizer)  # the adapter folded in while generating

    def accuracy(engine) -> float:
        metrics, _ = greedy_eval(
            engine,
            reworded,
            trainer.reward_fns,
            cfg.rollout.max_new_tokens,
            batch_size=cfg.eval.batch_size,
            stop=cfg.rollout.stop,
        )
        return metrics["eval/accuracy"]

    with reference_policy(trainer.peft_model):  # the base model, as before training
        reworded_before = accuracy(BuiltinEngine(trainer.peft_model, trainer.tokenizer, merge_adapter=False))
    reworded_after = accuracy(trained)

    total = time.perf_counter() - start
    print()
    print("=" * 72)
    algo = cfg.algorithm.name.upper() + (" + dynamic sampling" if cfg.algorithm.dynamic_sampling else "")
    print(
        f"{algo} on two-digit addition, SmolLM2-135M-Instruct + LoRA r={cfg.model.lora.r}, {cfg.train.max_steps} steps"
        f", {cfg.model.dtype}"
    )
    print(f"held-out accuracy (greedy, {len(reworded)} problems never trained on):")
    print(f"  step {evals[0][0]:>3}: {evals[0][1]:6.1%}   (before training)")
    for step, acc in evals[1:]:
        print(f"  step {step:>3}: {acc:6.1%}")
    print(f"the same problems worded differently ({template!r}):")
    print(f"  before: {reworded_before:6.1%}   after: {reworded_after:6.1%}")
    print(f"wall time: {train_time / 60:.1f} min training (with evaluations), {total / 60:.1f} min in all")
    print(f"adapter: {Path(cfg.output_dir) / 'adapter'}   metrics: {Path(cfg.output_dir) / 'metrics.jsonl'}")
    print("=" * 72)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
