"""Dynamic sampling (DAPO, Yu et al. 2025, arXiv:2503.14476): groups whose rewards are all equal carry no
group-relative signal, so they are dropped and more prompts are drawn until the step has its batch.

Lockstep across ranks: every rank draws the same number of times (generation may be a collective, e.g. under ZeRO-3),
and the loop goes on while any rank is short, up to `max_refills` extra draws. A prompt's group stays whole on the rank
that generated it. A rank still short after the last draw fills its batch with dropped groups whose loss mask is then
zero, so every rank trains on the same number of rows (same micro-batch count) and the short ones contribute nothing;
a warning says so. The sampler's position and the RNG advance with every draw, so a resumed run draws the same prompts.

`DynamicSampling` wraps a collector's `draw` (`rlhf.collector.Collector.collect` calls it with its own draw);
`collect_informative` is the loop itself, over any `draw() -> Draw`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rlhf.rollout import Rollout, concat_rollouts
from rlhf.sampling_filters import informative_groups

log = logging.getLogger("rlhf")


@dataclass
class Draw:
    """One rank's episodes of one draw, scored. B = prompts x G."""

    rollout: Rollout
    rewards: Tensor  # [B] weighted reward
    per_fn: dict[str, Tensor]  # {reward name: [B]}
    prompts: list[str]  # [B] the prompt of each episode
    time_rollout: float = 0.0
    time_reward: float = 0.0
    trainable: Tensor | None = None  # [B] bool: rows that train (False on filler groups); None = all
    episode_stats: dict[str, Tensor] | None = None  # {key: [B]} per-episode numbers of multi-turn episodes
    prompt_ids: list[int] = field(default_factory=list)  # global indices of the prompts drawn (every rank's)


def select_rows(draws: list[Draw], rows: list[int], trainable: list[bool], pad_id: int) -> Draw:
    """The episodes at `rows` of the draws joined end to end (rows of whole groups, in order)."""
    roll = concat_rollouts([d.rollout for d in draws], pad_id)
    idx = torch.tensor(rows, dtype=torch.long)
    names = draws[0].per_fn.keys()
    prompts = [p for d in draws for p in d.prompts]
    return Draw(
        rollout=roll.rows(idx),
        rewards=torch.cat([d.rewards for d in draws])[idx],
        per_fn={n: torch.cat([d.per_fn[n] for d in draws])[idx] for n in names},
        prompts=[prompts[i] for i in rows],
        time_rollout=sum(d.time_rollout for d in draws),
        time_reward=sum(d.time_reward for d in draws),
        trainable=torch.tensor(trainable, dtype=torch.bool),
        episode_stats=None
        if draws[0].episode_stats is None
        else {k: torch.cat([d.episode_stats[k] for d in draws])[idx] for k in draws[0].episode_stats},
        prompt_ids=[i for d in draws for i in d.prompt_ids],
    )


@dataclass(frozen=True)
class DynamicSampling:
    """The settings of dynamic sampling, bound once: each draw takes `draw_prompts` prompts (over all ranks), the
    step needs `groups_needed` informative groups on this rank, at most `max_refills` extra draws. any_rank(flag) is
    True when the flag is True on any rank; total(x) sums a number over ranks."""

    draw_prompts: int
    groups_needed: int
    max_refills: int
    any_rank: Callable[[bool], bool]
    total: Callable[[float], float]
    pad_id: int

    def __call__(self, draw: Callable[[int], Draw]) -> tuple[Draw, dict[str, float]]:
        """A step's episodes from `draw(prompts)` (a collector's draw), with `trainable` set, and the dynamic/*
        metrics."""
        return collect_informative(
            lambda: draw(self.draw_prompts),
            self.groups_needed,
            self.max_refills,
            self.any_rank,
            self.total,
            self.pad_id,
        )


def collect_informative(
    draw: Callable[[], Draw],
    groups_needed: int,
    max_refills: int,
    any_rank: Callable[[bool], bool],
    total: Callable[[float], float],
    pad_id: int,
    tol: float = 1e-6,
) -> tuple[Draw, dict[str, float]]:
    """Draw until this rank (and every other) holds `groups_needed` informative groups, or `max_refills` extra draws
    are spent. any_rank(flag) is True when the flag is True on any rank; total(x) sums a number over ranks.
    Returns (the step's episodes with `trainable` set, metrics)."""
    draws: list[Draw] = []
    kept: list[int] = []  # global row offset of each kept group's first row
    dropped: list[int] = []
    offset, drawn_groups, refills = 0, 0, -1
    while True:
        d = draw()
        refills += 1
        G = d.rollout.group_size
        keep = informative_groups(d.rewards, G, tol).tolist()
        for g, ok in enumerate(keep):
            (kept if ok else dropped).append(offset + g * G)
        draws.append(d)
        offset += len(d.rewards)
        drawn_groups += len(keep)
        short = len(kept) < groups_needed
        if not any_rank(short) or refills >= max_refills:
            break
    filler = max(groups_needed - len(kept), 0)
    starts = kept[:groups_needed] + dropped[:filler]
    trainable = [True] * min(len(kept), groups_needed) + [False] * filler
    rows = [s + j for s in starts for j in range(G)]
    flags = [t for t in trainable for _ in range(G)]
    out = select_rows(draws, rows, flags, pad_id)
    filler_total = total(filler)
    if filler_total > 0:
        log.warning(
            "dynamic sampling: %d groups had equal rewards after %d extra draws (algorithm.max_refills); training on "
            "the informative ones, the rest fill the batch with no loss",
            int(filler_total),
            refills,
        )
    metrics = {
        "dynamic/kept_frac": total(len(kept)) / max(total(drawn_groups), 1.0),
        "dynamic/extra_prompts": total(drawn_groups - groups_needed),  # beyond the step's batch
        "dynamic/refills": float(refills),
        "dynamic/filler_groups": filler_total,
    }
    return out, metrics
