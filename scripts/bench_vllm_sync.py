"""Time the vLLM engine's two weight-sync modes on the real model: seconds per sync and per rollout.

    .venv-vllm/bin/python scripts/bench_vllm_sync.py [--model smollm2-135m-instruct] [--repeats 3]

For each mode (`merged`: the full merged state dict reloaded in process; `lora`: the adapter alone through vLLM's LoRA
path) it builds the engine on the policy (LoRA r16, all linear layers, bf16), then `--repeats` times: changes the
adapter, syncs, and generates 4 prompts x 8 completions of up to 64 tokens. Prints one JSON line per mode.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from rlhf.models import load_policy, load_tokenizer
    from rlhf.rollout import SamplingParams
    from rlhf.rollout.vllm import VLLMEngine

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", nargs="+", default=["merged", "lora"])
    args = p.parse_args(argv)

    tok = load_tokenizer(args.model)
    questions = [f"Compute {a} + {b}. Reply with only the number." for a, b in [(12, 30), (47, 38), (91, 19), (55, 66)]]
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
        for q in questions
    ]
    prompts = [list(x["input_ids"]) if hasattr(x, "keys") else list(x) for x in prompts]
    params = SamplingParams(max_new_tokens=64, temperature=1.0)
    for mode in args.modes:
        model = load_policy(args.model, "bfloat16", 16, 32.0, 0.0, "all-linear")
        engine = VLLMEngine(model, tok, sync=mode)
        engine.generate(prompts, 8, params)  # warm-up
        syncs, rollouts, tokens = [], [], 0
        for _ in range(args.repeats):
            with torch.no_grad():
                for name, w in model.named_parameters():
                    if "lora_B" in name:
                        w.add_(torch.randn_like(w) * 1e-3)
            t0 = time.perf_counter()
            engine.weights_updated()
            syncs.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            roll = engine.generate(prompts, 8, params)
            rollouts.append(time.perf_counter() - t0)
            tokens += int(roll.completion_mask.sum())
        engine.close()
        row = {
            "mode": mode,
            "sync_s_median": statistics.median(syncs),
            "sync_s": syncs,
            "rollout_s_median": statistics.median(rollouts),
            "rollout_s": rollouts,
            "tokens_per_s": tokens / sum(rollouts),
        }
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
