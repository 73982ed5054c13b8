"""The loss of one micro-batch, every term in one place: the row's policy loss (with truncated importance sampling
weighting the advantages), the entropy bonus, beta * KL to the reference and the clipped value loss.

`micro_batch_loss` is pure: scores and a batch in, a scalar and its terms out. The update's loops (`rlhf.update`)
only slice, call it, backward, step and account; TRPO (`rlhf.trpo`) has its own surrogate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from rlhf.batch import StepBatch
from rlhf.losses import aggregate, clipped_value_loss, entropy_bonus, kl_penalty
from rlhf.offpolicy import tis_weights
from rlhf.policy import Scores


class PolicyLoss(Protocol):
    """The signature every policy loss has (`rlhf.losses`): per-token tensors [B, C], aggregated by `agg` over the
    global counts; metrics hold at least `clipfrac` and `approx_kl` (scalar tensors)."""

    def __call__(
        self,
        logprobs: Tensor,
        old_logprobs: Tensor,
        advantages: Tensor,
        mask: Tensor,
        *,
        agg: str,
        num_tokens: float | None,
        max_len: int | None,
        num_seqs: int | None,
        **knobs,
    ) -> tuple[Tensor, dict[str, Tensor]]: ...


@dataclass(frozen=True)
class UpdateSettings:
    """What the update reads, as plain values (built once from the recipe and the algorithm's row)."""

    policy_loss: Callable  # a PolicyLoss: the row's loss
    loss_knobs: dict = field(default_factory=dict)
    num_iterations: int = 1  # mu
    num_minibatches: int = 1
    micro_batch_size: int = 32
    loss_agg: str = "token-mean"
    max_len: int = 64  # the constant of seq-mean-token-sum-norm (rollout.max_new_tokens)
    beta: float = 0.0  # KL-to-reference coefficient of the loss term (kl_in_loss)
    kl_in_loss: bool = True
    kl_estimator: str = "k3"
    target_kl: float | None = None
    value_coef: float = 0.0  # > 0 or uses_value: the value loss joins the total
    value_clip: float = 0.0
    uses_value: bool = False
    max_grad_norm: float = 1.0
    entropy_coef: float = 0.0  # entropy bonus: the loss subtracts coef * the aggregated entropy of action tokens
    tis_cap: float | None = None  # truncated importance sampling between sampler and trainer (rlhf.offpolicy)
    tis_seq_threshold: float | None = None


@dataclass(frozen=True)
class Minibatch:
    """What a micro-batch's loss divides by and whether the policy term counts: the whole minibatch's counts over
    every rank (so every micro-batch and rank divides by the same number)."""

    num_tokens: float  # loss-mask tokens of the minibatch, all ranks
    num_seqs: int  # sequences of the minibatch, all ranks
    warmup: bool = False  # value warm-up: the policy term is multiplied by 0 (kept in the graph)


@dataclass
class LossTerms:
    """The terms of one micro-batch's loss (scalar tensors, attached to the graph where they train)."""

    policy: Tensor  # the row's policy loss, before the entropy bonus
    policy_metrics: dict[str, Tensor]  # the loss's own: clipfrac, approx_kl, ...
    old_logprobs: Tensor  # [B, C] the ratio's denominator (detached current log-probs when on-policy)
    kl: Tensor  # beta's term (0 when KL is not a loss term)
    value: Tensor  # the clipped value loss (0 without a value model)
    value_clipfrac: Tensor | None = None
    tis: dict[str, Tensor] | None = None  # truncated importance sampling metrics (tis_cap set)


def micro_batch_loss(scores: Scores, batch: StepBatch, s: UpdateSettings, mb: Minibatch) -> tuple[Tensor, LossTerms]:
    """total = policy loss (advantages x TIS weights) - entropy_coef * entropy (x 0 in warm-up) + beta * KL
    + value_coef * value loss. `scores` are the policy's on `batch` (trimmed alike); returns (total, its terms)."""
    lp, mask = scores.logprobs, batch.loss_mask
    old = lp.detach() if batch.old_logprobs is None else batch.old_logprobs
    agg = dict(agg=s.loss_agg, num_tokens=mb.num_tokens, max_len=s.max_len, num_seqs=mb.num_seqs)
    adv, tis = batch.advantages, None
    if s.tis_cap is not None:  # weight = min(exp(old - behaviour), cap): >= 0, so it scales A
        w, tis = tis_weights(old, batch.rollout.logprobs, mask, s.tis_cap, s.tis_seq_threshold)
        adv = adv * w
    loss, pg = s.policy_loss(lp, old, adv, mask, **agg, **s.loss_knobs)
    with_bonus = loss - s.entropy_coef * entropy_bonus(scores.entropy, mask, **agg) if s.entropy_coef else loss
    total = with_bonus * 0.0 if mb.warmup else with_bonus
    terms = LossTerms(loss, pg, old, kl=torch.zeros(()), value=torch.zeros(()), tis=tis)
    if batch.ref_logprobs is not None and s.kl_in_loss:
        terms.kl = aggregate(kl_penalty(lp, batch.ref_logprobs, s.kl_estimator), mask, **agg)
        total = total + s.beta * terms.kl
    if s.uses_value:
        terms.value, vm = clipped_value_loss(
            scores.values, batch.old_values, batch.returns, mask, s.value_clip, num_tokens=mb.num_tokens
        )
        terms.value_clipfrac = vm["clipfrac"]
        total = total + s.value_coef * terms.value
    return total, terms
