"""Held-out evaluation: greedy completions scored by the reward functions (used during training and standalone)."""

from __future__ import annotations

import time

import torch
from torch import nn

from rlhf.data import PromptSet, left_pad
from rlhf.distributed import all_sum
from rlhf.rewards import RewardFunction, score_rollout
from rlhf.rollout import SamplingParams, generate_batched


@torch.no_grad()
def greedy_eval(
    model: nn.Module,
    tokenizer,
    prompts: PromptSet,
    reward_fns: list[RewardFunction],
    max_new_tokens: int,
    batch_size: int = 64,
    success_threshold: float = 1.0,
    accelerator=None,
) -> tuple[dict[str, float], list[dict]]:
    """Accuracy = fraction of prompts whose greedy completion's weighted reward >= success_threshold.

    With an accelerator, each rank scores its own shard and the counts are summed. Returns (metrics, per-sample rows
    of this rank)."""
    start = time.perf_counter()
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    idx = list(range(rank, len(prompts), world))
    shard = prompts.select(idx)
    params = SamplingParams(max_new_tokens=max_new_tokens, greedy=True)
    correct, reward_sum, rows = 0.0, 0.0, []
    for s in range(0, len(shard), batch_size):
        part = shard.select(list(range(s, min(s + batch_size, len(shard)))))
        ids, mask = left_pad(part.prompt_ids, tokenizer.pad_token_id)
        out = generate_batched(model, tokenizer, ids, mask, 1, params)
        total, _, _ = score_rollout(reward_fns, part.texts, part.columns, out, 1)
        ok = total >= success_threshold - 1e-6
        correct += ok.sum().item()
        reward_sum += total.sum().item()
        for i, text in enumerate(out.texts):
            rows.append(
                {"prompt": part.texts[i], "completion": text, "reward": total[i].item(), "correct": bool(ok[i])}
            )
    n = len(prompts)
    if accelerator is not None:
        correct, reward_sum = all_sum(accelerator, correct).item(), all_sum(accelerator, reward_sum).item()
    metrics = {
        "eval/accuracy": correct / max(n, 1),
        "eval/reward_mean": reward_sum / max(n, 1),
        "eval/num_samples": n,
        "time/eval": time.perf_counter() - start,
    }
    return metrics, rows
