"""Comparisons of two policies' log-probs on the same sampled tokens: the sampler against the trainer (truncated
importance sampling and mismatch metrics) and a student against a teacher (on-policy distillation advantages).

Pure tensor functions: every input is [B, T] with mask 1 on the tokens that count (action tokens; may have gaps).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlhf.losses import MAX_LOG_RATIO, kl_penalty, masked_mean


def tis_weights(
    old_logprobs: Tensor,
    behaviour_logprobs: Tensor,
    mask: Tensor,
    cap: float,
    seq_mask_threshold: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Truncated importance sampling between the sampler and the trainer (Yao et al. 2025, "Your Efficient RL
    Framework Secretly Brings You Off-Policy RL Training").

    The sampling engine (behaviour_logprobs) and the trainer's recomputation with the same weights (old_logprobs)
    disagree on the same tokens (different kernels, precision, batching). Each token's policy-gradient term is
    multiplied by weight = min(exp(old - behaviour), cap): the correction towards the trainer's distribution,
    truncated at `cap` (the paper uses 2) so a rare token cannot blow up the update. weight = 0 off the mask.

    seq_mask_threshold (None = off): a sequence whose mean over its masked tokens of the k3 estimate of
    KL(behaviour || old), (r - 1) - log r with log r = old - behaviour, exceeds the threshold gets weight 0 on every
    token (the whole sequence is dropped rather than re-weighted). It is the per-sequence form of
    "rollout/mismatch_kl" from rollout_mismatch(), so the threshold can be set from that metric's logged values.

    old_logprobs, behaviour_logprobs, mask: [B, T]. Returns (weights [B, T] float32, detached, and
    {"tis/weight_mean" (over masked tokens, after truncation and sequence masking), "tis/capped_frac" (share of
    masked tokens at the cap), "tis/seq_masked_frac" (share of sequences with a masked token that were dropped)}).
    """
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    with torch.no_grad():
        m = mask.float()
        log_ratio = old_logprobs.float() - behaviour_logprobs.float()
        ratio = torch.exp(log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
        capped = ratio > cap
        weights = torch.where(m > 0, ratio.clamp(max=cap), 0.0)
        has_tokens = m.sum(-1) > 0
        dropped = torch.zeros_like(has_tokens)
        if seq_mask_threshold is not None:
            seq_kl = masked_mean(kl_penalty(behaviour_logprobs, old_logprobs, "k3"), m, dim=-1)
            dropped = has_tokens & (seq_kl > seq_mask_threshold)
            weights = torch.where(dropped.unsqueeze(-1), 0.0, weights)
        metrics = {
            "tis/weight_mean": masked_mean(weights, m),
            "tis/capped_frac": masked_mean(capped.float(), m),
            "tis/seq_masked_frac": dropped.float().sum() / has_tokens.float().sum().clamp(min=1.0),
        }
    return weights, metrics


def rollout_mismatch(old_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """How far the sampler's log-probs are from the trainer's on the same tokens (Yao et al. 2025, "Your Efficient
    RL Framework Secretly Brings You Off-Policy RL Training"). Inputs [B, T]; detached float32 scalars:
    "rollout/mismatch_abs_mean" / "rollout/mismatch_abs_max": mean / max over masked tokens of |old - behaviour|
    (0 with no masked token); "rollout/mismatch_kl": mean over masked tokens of the k3 estimate of
    KL(behaviour || old), (r - 1) - log r with log r = old - behaviour (unbiased, >= 0, since the tokens were
    sampled from the behaviour policy)."""
    with torch.no_grad():
        m = mask.float()
        gap = (old_logprobs.float() - behaviour_logprobs.float()).abs()
        on_mask = m > 0
        abs_max = gap[on_mask].max() if on_mask.any() else gap.new_zeros(())
        return {
            "rollout/mismatch_abs_mean": masked_mean(gap, m),
            "rollout/mismatch_abs_max": abs_max,
            "rollout/mismatch_kl": masked_mean(kl_penalty(behaviour_logprobs, old_logprobs, "k3"), m),
        }


def distillation_advantages(student_logprobs: Tensor, teacher_logprobs: Tensor, mask: Tensor) -> Tensor:
    """Per-token advantage of on-policy distillation: -(student - teacher) on masked tokens, 0 elsewhere.

    student - teacher is the single-sample estimate of the reverse KL(student || teacher) at each token the student
    sampled, so a policy-gradient step with these advantages lowers the reverse KL to the teacher (Agarwal et al.
    2024, GKD, arXiv:2306.13649; the on-policy distillation of Qwen3, arXiv:2505.09388, and the Tinker cookbook).
    Inputs [B, T]; output [B, T] float32, detached (an advantage, not a loss).
    """
    with torch.no_grad():
        return torch.where(mask > 0, teacher_logprobs.float() - student_logprobs.float(), 0.0)
