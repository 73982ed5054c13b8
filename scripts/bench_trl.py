"""The TRL side of the benchmark: TRL's GRPOTrainer on the same model, LoRA, prompts, reward and batch shape.

Why a separate script: TRL is a benchmark extra, not a dependency of the project (`pip install trl`), and its run is
timed from the outside with a TrainerCallback, which sees whole optimizer steps (generation, reward, forward and
backward all happen inside one `training_step` in TRL's GRPO).

    HF_HUB_OFFLINE=1 python scripts/bench_trl.py --max-completion-length 64 --warmup 2 --steps 5 --json

Prints one line per step and, with --json, a final JSON object {"step_s": ..., "step_times": [...], ...} that
`python -m rlhf.benchmark ... --compare-trl` reads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"


def arithmetic_dataset(recipe: str):
    """The recipe's training prompts as chat messages plus the `answer` column, in the recipe's seeded order, so
    both frameworks see the same questions (TRL shuffles them with its own sampler)."""
    from datasets import Dataset

    from rlhf.build import arithmetic_rows
    from rlhf.config import load_config

    cfg = load_config(recipe)
    a = cfg.data.arithmetic
    train, _ = arithmetic_rows(a, cfg.seed)
    rows = []
    for r in train:
        messages = [{"role": "user", "content": r["prompt"]}]
        if cfg.data.system_prompt:
            messages.insert(0, {"role": "system", "content": cfg.data.system_prompt})
        rows.append({"prompt": messages, "answer": r["answer"]})
    return Dataset.from_list(rows)


def numeric_reward(prompts: list, completions: list, answer: list, **_) -> list[float]:
    """reward_models.numeric:numeric_answer_reward on TRL's conversational completions (lists of messages)."""
    from reward_models.numeric import numeric_answer_reward

    text = lambda c: c[-1]["content"] if isinstance(c, list) else str(c)
    return numeric_answer_reward([text(p) for p in prompts], [text(c) for c in completions], answer)


def step_timer():
    """A TrainerCallback recording the wall time of each optimizer step (rollout + reward + update in TRL)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._t0)
            print(f"trl step {len(self.times)}: {self.times[-1]:.2f} s", file=sys.stderr, flush=True)

    return StepTimer()


def run(
    recipe: str,
    max_completion_length: int,
    warmup: int,
    steps: int,
    prompts_per_step: int = 4,
    num_generations: int = 8,
    bf16: bool = True,
) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rlhf.models import resolve_model_path

    path = resolve_model_path("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Base weights in bfloat16 like our recipe; TRL/peft keep the LoRA weights as created (float32 unless cast).
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if bf16 else torch.float32)
    seqs = prompts_per_step * num_generations
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as out:
        args = GRPOConfig(
            output_dir=out,
            use_cpu=True,
            bf16=bf16,
            learning_rate=2e-4,
            beta=0.0,
            num_generations=num_generations,
            # one optimizer step = prompts_per_step prompts x num_generations completions, one generation per step
            per_device_train_batch_size=seqs,
            gradient_accumulation_steps=1,
            generation_batch_size=seqs,
            max_completion_length=max_completion_length,
            temperature=1.0,
            gradient_checkpointing=False,  # TRL's default is on; our recipe runs without it
            max_steps=warmup + steps,
            lr_scheduler_type="constant",
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            seed=0,
        )
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        timer = step_timer()
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=numeric_reward,
            args=args,
            train_dataset=arithmetic_dataset(recipe),
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[timer],
        )
        trainer.train()
        logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    kept = timer.times[warmup:]
    lengths = [h["completions/mean_length"] for h in logs[warmup:]]
    return {
        "framework": "trl",
        "trl_version": __import__("trl").__version__,
        "bf16": bf16,
        "max_completion_length": max_completion_length,
        "prompts_per_step": prompts_per_step,
        "num_generations": num_generations,
        "warmup": warmup,
        "steps": len(kept),
        "step_s": statistics.mean(kept) if kept else float("nan"),
        "step_times": kept,
        "completion_mean_len": statistics.mean(lengths) if lengths else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="recipe whose arithmetic prompts to use")
    p.add_argument("--max-completion-length", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--fp32", action="store_true", help="float32 base weights and no bf16 autocast")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    a = p.parse_args(argv)
    result = run(
        a.recipe, a.max_completion_length, a.warmup, a.steps, a.prompts_per_step, a.num_generations, not a.fp32
    )
    if a.json:
        print(json.dumps(result))
    else:
        print(f"TRL {result['trl_version']}: {result['step_s']:.2f} s/step over {result['steps']} steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
