"""Step 5 of the loop: advantages from a rollout's scores, with plain arguments (no model, no config).

Every estimator has one signature, `estimator(inputs, stats, **knobs) -> Advantages`: `inputs` holds the step's
tensors (read from the collector's `StepRecord`) and the run's state as it was before the step, `stats` takes
statistics over every rank's rows (a prompt's group is whole on one rank, but batch means and whitening span all
ranks), and the knobs are the `algorithm.*` settings the algorithm table says it reads (bound once, `bind_knobs`).
The formulas themselves are the pure functions of `rlhf.advantages`.

Estimators change nothing: what a step observed for the run's state (the KL for the adaptive coefficient, the
rewards for the running moments) comes back in `Advantages.observed`, and the trainer applies it (`Observed.apply`).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rlhf.advantages import (
    batch_std_advantages,
    discounted_returns,
    gae,
    group_advantages,
    rloo_advantages,
    token_rewards,
    whiten,
)
from rlhf.kl_control import KLController, RunningMoments
from rlhf.losses import explained_variance, kl_penalty
from rlhf.offpolicy import distillation_advantages


def _local_sum(x: Tensor | float) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64).clone()


@dataclass
class BatchStats:
    """Statistics over the rows of every rank. `total(x)` sums a scalar or tensor over ranks (float64), `gather(x)`
    concatenates a [n] tensor from every rank; the defaults are those of a single process."""

    total: Callable[[Tensor | float], Tensor] = _local_sum
    gather: Callable[[Tensor], Tensor] = lambda x: x

    def moments(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and unbiased variance of x over the masked entries of every rank (float32 scalars)."""
        m = mask.float()
        n = self.total(m.sum()).clamp(min=1.0)
        mean = (self.total((x * m).sum()) / n).float()
        var = self.total(((x - mean) ** 2 * m).sum()) / (n - 1).clamp(min=1.0)
        return mean, var.float()

    def whiten(self, x: Tensor, mask: Tensor) -> Tensor:
        mean, var = self.moments(x, mask)
        return whiten(x, mask.float(), mean=mean, std=var.sqrt())


@dataclass
class AdvantageInputs:
    """One step's tensors. B = episodes on this rank, C = episode columns."""

    scores: Tensor  # [B] float32 weighted reward of each episode
    action_mask: Tensor  # [B, C] 1 on tokens the policy sampled
    loss_mask: Tensor  # [B, C] action tokens that train (truncated rows removed when rollout.mask_truncated)
    group_size: int  # G, a prompt's episodes consecutive
    truncated: Tensor | None = None  # [B] bool
    old_logprobs: Tensor | None = None  # [B, C] before the update (value-model algorithms)
    ref_logprobs: Tensor | None = None  # [B, C] under the reference (beta > 0)
    old_values: Tensor | None = None  # [B, C] V(s_t) at rollout time (value-model algorithms)
    kl_coef: float = 0.0  # beta of the KL reward penalty this step (the adaptive controller's value)
    behaviour_logprobs: Tensor | None = None  # [B, C] the sampler's log-probs of the sampled tokens
    teacher_logprobs: Tensor | None = None  # [B, C] a teacher's log-probs of the same tokens (distillation)
    reward_stats: RunningMoments = field(default_factory=RunningMoments)  # running reward moments before the step
    extra: dict[str, Tensor] = field(default_factory=dict)  # {name: [B] or [B, C]} inputs a row adds (`inputs`)


@dataclass(frozen=True)
class Observed:
    """What a step observed for the run's state, applied by the trainer after the estimator returns."""

    kl: tuple[float, int] | None = None  # (mean per-sequence KL to the reference, sequences): the KL controller
    rewards: tuple[float, float, float] | None = None  # (sum, sum of squares, count) of the step's scores

    def apply(self, kl_ctl: KLController, reward_stats: RunningMoments) -> None:
        if self.rewards is not None:
            reward_stats.update(*self.rewards)
        if self.kl is not None:
            kl_ctl.update(*self.kl)


@dataclass
class Advantages:
    advantages: Tensor  # [B, C] float32 per-token advantages, 0 off the loss mask
    returns: Tensor | None = None  # [B, C] value targets (value-model algorithms)
    metrics: dict[str, float] = field(default_factory=dict)
    observed: Observed = field(default_factory=Observed)


Estimator = Callable[..., Advantages]  # (AdvantageInputs, BatchStats, **knobs) -> Advantages


def bind_knobs(estimator: Estimator, knobs: dict) -> Callable[[AdvantageInputs, BatchStats], Advantages]:
    """The estimator with its `algorithm.*` knobs bound, once at build time."""
    return functools.partial(estimator, **knobs)


def _per_token(seq: Tensor, mask: Tensor) -> Advantages:
    return Advantages(seq[:, None] * mask.float())


def grpo(inp: AdvantageInputs, stats: BatchStats, scale_by_std: bool = True, std_level: str = "group") -> Advantages:
    """Group-normalised (DeepSeekMath, arXiv:2402.03300): (r - group mean) / (group std + eps), the std over the
    group or over the whole batch; without the std, Dr. GRPO (arXiv:2503.20783)."""
    if std_level == "batch" and scale_by_std:
        seq = batch_std_advantages(inp.scores, inp.group_size, std=stats.gather(inp.scores).std())
    else:
        seq = group_advantages(inp.scores, inp.group_size, scale_by_std=scale_by_std)
    return _per_token(seq, inp.loss_mask)


def rloo(inp: AdvantageInputs, stats: BatchStats) -> Advantages:
    """Leave-one-out baseline (Ahmadian et al. 2024, arXiv:2402.14740)."""
    return _per_token(rloo_advantages(inp.scores, inp.group_size), inp.loss_mask)


def reinforce(inp: AdvantageInputs, stats: BatchStats, gamma: float = 1.0) -> Advantages:
    """Monte-Carlo return, no baseline (Williams 1992)."""
    return Advantages(discounted_returns(inp.scores, inp.loss_mask, gamma))


def reinforce_baseline(inp: AdvantageInputs, stats: BatchStats, gamma: float = 1.0) -> Advantages:
    """Monte-Carlo return of the reward minus the batch-mean reward (over every rank)."""
    return Advantages(discounted_returns(inp.scores - stats.gather(inp.scores).mean(), inp.loss_mask, gamma))


def reinforce_pp(inp: AdvantageInputs, stats: BatchStats, gamma: float = 1.0) -> Advantages:
    """REINFORCE++ (arXiv:2501.03262): returns whitened over every token of the global batch."""
    return Advantages(stats.whiten(discounted_returns(inp.scores, inp.loss_mask, gamma), inp.loss_mask))


def normalised_scores(
    scores: Tensor, stats: BatchStats, reward_norm: str, running: RunningMoments
) -> tuple[Tensor, tuple[float, float, float] | None]:
    """Scores over this step's batch ('batch') or by running moments over all steps including this one ('running',
    `running` itself unchanged); 'none' as is. Returns (scores, the step's (sum, sum of squares, count) for the
    running moments, or None)."""
    if reward_norm == "none":
        return scores, None
    everyone = stats.gather(scores)
    observed = None
    if reward_norm == "running":
        observed = (everyone.sum().item(), everyone.square().sum().item(), everyone.numel())
        running = copy.deepcopy(running)
        running.update(*observed)
        mean, std = running.mean, running.std
    else:
        mean, std = everyone.mean().item(), everyone.std().item() if everyone.numel() > 1 else 1.0
    return (scores - mean) / (std + 1e-8), observed


def gae_with_kl_reward(
    inp: AdvantageInputs,
    stats: BatchStats,
    gamma: float = 1.0,
    lam: float = 0.95,
    kl_estimator: str | None = None,
    missing_eos_penalty: float = 0.0,
    reward_norm: str = "none",
    whiten_advantages: bool = True,
) -> Advantages:
    """RLHF PPO's advantages (Ziegler et al. 2019): the episode score on its last action token minus beta * KL on
    every action token, then GAE (arXiv:1506.02438) on the rollout-time values; beta adapts towards kl_target when
    the controller has one. Needs old_logprobs and old_values; ref_logprobs when beta > 0. Returns the step's
    KL (and rewards, for running normalisation) in `observed`."""
    mask = inp.action_mask.float()
    scores = inp.scores.float().clone()
    if missing_eos_penalty:
        scores[inp.truncated] -= missing_eos_penalty
    scores, seen_rewards = normalised_scores(scores, stats, reward_norm, inp.reward_stats)
    kl = torch.zeros_like(mask)
    if inp.ref_logprobs is not None:
        kl = kl_penalty(inp.old_logprobs, inp.ref_logprobs, kl_estimator or "k1") * mask
    beta = inp.kl_coef
    rewards = token_rewards(scores, kl, mask, beta)
    adv, returns = gae(rewards, inp.old_values, mask, gamma, lam)
    if whiten_advantages:
        adv = stats.whiten(adv, inp.loss_mask)
    seq_kl = stats.gather(kl.sum(-1))
    v_mean, _ = stats.moments(inp.old_values, mask)
    r_mean, _ = stats.moments(returns, mask)
    metrics = {
        "policy/kl_coef": beta,
        "policy/ref_kl": seq_kl.mean().item(),
        "value/mean": v_mean.item(),
        "value/return_mean": r_mean.item(),
        # by the values the advantages were computed with
        "value/explained_var": explained_variance(inp.old_values, returns, mask, moments=stats.moments),
    }
    return Advantages(adv, returns, metrics, Observed((seq_kl.mean().item(), seq_kl.numel()), seen_rewards))


def distillation(inp: AdvantageInputs, stats: BatchStats) -> Advantages:
    """On-policy distillation (Agarwal et al. 2024, GKD, arXiv:2306.13649; the Tinker cookbook; Qwen3): the student
    samples, a teacher scores the same tokens, and each token's advantage is the negative reverse KL estimate
    log pi_teacher - log pi_student, so the policy gradient lowers KL(student || teacher) token by token. The student's
    log-probs are the sampler's (the policy before this step's update)."""
    adv = distillation_advantages(inp.behaviour_logprobs, inp.teacher_logprobs, inp.loss_mask)
    reverse_kl = -(adv * inp.loss_mask).sum()
    n = stats.total(inp.loss_mask.sum()).clamp(min=1.0)
    return Advantages(adv, metrics={"distill/reverse_kl": (stats.total(reverse_kl) / n).item()})
