"""Held-out accuracy, the library side of evaluation: greedy pass@1 (what the trainer logs as `eval/accuracy`), and
from n samples per prompt pass@k (the unbiased estimator of Chen et al. 2021, arXiv:2107.03374) and maj@k (majority
vote over the final answers, "self-consistency", Wang et al. 2022, arXiv:2203.11171). Generation goes through a rollout
engine; `python -m rlhf.evaluate` (rlhf/evaluate.py) is the command around it.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable

import torch

from rlhf.data import PromptSet
from rlhf.distributed import all_sum
from rlhf.rewards import RewardFunction, score_rollout
from rlhf.rollout import Engine, SamplingParams
from rlhf.rollout.episodes import EpisodeRunner


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn without replacement from n, c of them correct, is correct).

    1 - C(n-c, k) / C(n, k), written as a product so large n never overflows (Chen et al. 2021, Codex paper)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def maj_at_k(answers: list[str | None], correct: list[bool], k: int) -> bool:
    """Is the most common final answer among the first k samples correct? Samples with no answer do not vote; ties
    go to the answer seen first; the verdict is the reward's on the first sample giving the majority answer."""
    counts = Counter(a for a in answers[:k] if a is not None)
    if not counts:
        return False
    best = max(counts, key=lambda a: (counts[a], -answers.index(a)))  # index(): the first occurrence
    return bool(correct[answers.index(best)])


def k_values(n: int) -> list[int]:
    """1, the powers of two below n, and n: the k of pass@k and maj@k."""
    return sorted({1, n} | {2**i for i in range(1, n.bit_length()) if 2**i < n})


@torch.no_grad()
def greedy_eval(
    engine: Engine,
    prompts: PromptSet,
    reward_fns: list[RewardFunction],
    max_new_tokens: int,
    batch_size: int = 64,
    success_threshold: float = 1.0,
    accelerator=None,
    episodes: EpisodeRunner | None = None,
    stop: list[str] | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Accuracy = fraction of prompts whose greedy completion's weighted reward >= success_threshold.

    With an accelerator, each rank scores its own shard and the counts are summed. The shard is generated in one
    engine call (decoded `batch_size` prompts at a time), so the engine merges or gathers weights once. With
    `episodes` (a recipe with an environment) each prompt runs one greedy multi-turn episode instead (one engine call
    per turn, in lockstep over ranks), scored like training episodes (the last turn, plus the environment's reward),
    and the metrics add `eval/env/<key>` (e.g. the fraction of episodes that called a tool). Returns (metrics,
    per-sample rows of this rank). `stop`: strings that end a completion, as in training (`rollout.stop`)."""
    start = time.perf_counter()
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    idx = list(range(rank, len(prompts), world))
    shard = prompts.select(idx)
    params = SamplingParams(max_new_tokens=max_new_tokens, greedy=True, stop=list(stop or []))
    out, scoring, env_stats, ep = None, {}, {}, None
    if episodes is not None and (len(shard) or world > 1):  # an empty shard still keeps the ranks in lockstep
        ep = episodes.run(engine, shard, 1, params, batch_size=batch_size)
        out = ep.rollout if len(shard) else None
        scoring = ep.scoring(episodes.reward_weight)
        env_stats = {k: v.sum().item() for k, v in ep.stats.items()}
    elif len(shard):
        out = engine.generate(shard.prompt_ids, 1, params, batch_size=batch_size)
    correct, reward_sum, rows = 0.0, 0.0, []
    if out is not None:
        total, _, _ = score_rollout(
            reward_fns, shard.texts, shard.columns, out, 1, prompt_messages=shard.prompt_messages, **scoring
        )
        ok = total >= success_threshold - 1e-6
        correct, reward_sum = ok.sum().item(), total.sum().item()
        for i, text in enumerate(out.texts):
            rows.append(
                {"prompt": shard.texts[i], "completion": text, "reward": total[i].item(), "correct": bool(ok[i])}
            )
    if ep is not None:
        ep.close()  # after the rewards, which may read the environments
    n = len(prompts)
    if accelerator is not None:
        correct, reward_sum = all_sum(accelerator, correct).item(), all_sum(accelerator, reward_sum).item()
    if accelerator is not None:
        env_stats = {k: all_sum(accelerator, v).item() for k, v in sorted(env_stats.items())}
    metrics = {f"eval/{k}" if "/" in k else f"eval/env/{k}": v / max(n, 1) for k, v in env_stats.items()}
    metrics |= {
        "eval/accuracy": correct / max(n, 1),
        "eval/reward_mean": reward_sum / max(n, 1),
        "eval/num_samples": n,
        "time/eval": time.perf_counter() - start,
    }
    return metrics, rows


@torch.no_grad()
def sampled_eval(
    engine: Engine,
    prompts: PromptSet,
    reward_fns: list[RewardFunction],
    n: int,
    params: SamplingParams,
    extract: Callable[[str], str | None],
    batch_size: int = 64,
    success_threshold: float = 1.0,
    accelerator=None,
) -> tuple[dict[str, float], list[dict]]:
    """n samples per prompt -> pass@k and maj@k averaged over prompts. Each rank scores prompts rank, rank + world, ...
    and the sums are reduced over ranks. Returns (metrics, per-prompt rows of this rank)."""
    start = time.perf_counter()
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    idx = list(range(rank, len(prompts), world))
    shard = prompts.select(idx)
    ks = k_values(n)
    sums = torch.zeros(2 * len(ks) + 2, dtype=torch.float64)  # pass@k..., maj@k..., reward sum, correct samples
    rows: list[dict] = []
    # one engine call for the shard (decoded batch_size sequences at a time): weights merged or gathered once
    out = engine.generate(shard.prompt_ids, n, params, batch_size=batch_size) if len(shard) else None
    if out is not None:
        total, _, _ = score_rollout(
            reward_fns, shard.texts, shard.columns, out, n, prompt_messages=shard.prompt_messages
        )
        ok = (total >= success_threshold - 1e-6).tolist()
        for j in range(len(shard)):
            texts, correct = out.texts[j * n : (j + 1) * n], ok[j * n : (j + 1) * n]
            answers = [extract(t) for t in texts]
            c = sum(correct)
            for i, k in enumerate(ks):
                sums[i] += pass_at_k(n, c, k)
                sums[len(ks) + i] += float(maj_at_k(answers, correct, k))
            gold, rewards = shard.columns.get("answer", [None] * len(shard))[j], total[j * n : (j + 1) * n].tolist()
            rows.append(dict(index=idx[j], prompt=shard.texts[j], answer=gold, completions=texts, extracted=answers))
            rows[-1].update(rewards=rewards, correct=correct, num_correct=c)
        sums[-2] += total.double().sum()
        sums[-1] += sum(ok)
    if accelerator is not None:
        sums = all_sum(accelerator, sums)
    N = max(len(prompts), 1)
    metrics: dict[str, float] = {f"pass@{k}": sums[i].item() / N for i, k in enumerate(ks)}
    metrics.update({f"maj@{k}": sums[len(ks) + i].item() / N for i, k in enumerate(ks)})
    metrics.update({"reward_mean": sums[-2].item() / (N * n), "sample_accuracy": sums[-1].item() / (N * n)})
    metrics.update({"num_prompts": len(prompts), "samples_per_prompt": n, "time/eval": time.perf_counter() - start})
    return metrics, rows
