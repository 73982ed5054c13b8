"""What steps 1-4 of a training step produce, in one record built once by the collector (`rlhf.collector`).

B = this rank's episodes (prompts x G, a prompt's G episodes consecutive), C = episode columns (sampled tokens and,
in multi-turn episodes, the tokens an environment inserted; `rollout.action_mask` marks the sampled ones). Every
per-token tensor is [B, C] float32 and 0 off the action mask.

The estimator reads the record (`advantage_inputs`); the update reads the record with the advantages joined
(`batch`, a `StepBatch`). An estimator that needs another input adds a field here and the collector fills it, or a
row names it in `Algorithm.inputs` and it arrives in `extra`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from rlhf.batch import StepBatch
from rlhf.estimators import AdvantageInputs, Advantages
from rlhf.kl_control import RunningMoments
from rlhf.rollout.types import Rollout


@dataclass(frozen=True)
class StepRecord:
    """One step's episodes, scored, with everything the estimator and the update read."""

    rollout: Rollout  # B episodes: ids, attention and action masks, the sampler's log-probs, group size, temperature
    rewards: Tensor  # [B] float32 weighted reward of each episode
    per_fn: dict[str, Tensor]  # {reward function name: [B]} (and "env" for an environment's reward)
    prompts: list[str]  # [B] the prompt text of each episode
    loss_mask: Tensor  # [B, C] action tokens that train (minus truncated rows, minus dynamic sampling's filler)
    old_logprobs: Tensor | None = None  # [B, C] the policy before the update (None: the update is on-policy)
    ref_logprobs: Tensor | None = None  # [B, C] the reference (None when beta == 0)
    old_values: Tensor | None = None  # [B, C] V(s_t) at rollout time (value-model rows)
    teacher_logprobs: Tensor | None = None  # [B, C] a frozen teacher's log-probs of the sampled tokens (distill)
    extra: dict[str, Tensor] = field(default_factory=dict)  # {name: [B] or [B, C]}: the row's `inputs`
    episode_stats: dict[str, Tensor] | None = None  # {key: [B]} numbers of multi-turn episodes
    metrics: dict[str, float] = field(
        default_factory=dict
    )  # time/rollout, time/reward, time/ref, throughput, dynamic/*
    prompt_ids: tuple[int, ...] = ()  # global indices of the prompts drawn for this step (every rank's)

    def advantage_inputs(self, kl_coef: float, reward_stats: RunningMoments) -> AdvantageInputs:
        """The estimator's view, with the run's state as it is before this step (read, not changed)."""
        r = self.rollout
        return AdvantageInputs(
            scores=self.rewards,
            action_mask=r.action_mask,
            loss_mask=self.loss_mask,
            group_size=r.group_size,
            truncated=r.truncated,
            old_logprobs=self.old_logprobs,
            ref_logprobs=self.ref_logprobs,
            old_values=self.old_values,
            kl_coef=kl_coef,
            behaviour_logprobs=r.logprobs,
            teacher_logprobs=self.teacher_logprobs,
            reward_stats=reward_stats,
            extra=self.extra,
        )

    def batch(self, est: Advantages) -> StepBatch:
        """What the update reads: the record's tensors and the estimator's [B, C] advantages (and returns)."""
        return StepBatch(
            self.rollout,
            est.advantages,
            self.loss_mask,
            old_logprobs=self.old_logprobs,
            ref_logprobs=self.ref_logprobs,
            old_values=self.old_values,
            returns=est.returns,
            teacher_logprobs=self.teacher_logprobs,
        )
