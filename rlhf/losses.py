"""Policy losses and KL estimators: pure tensor functions shared by every trainer."""

from __future__ import annotations

import torch
from torch import Tensor

LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi (Schulman 2020, 'Approximating KL').

    With log r = ref_logprobs - logprobs:  k1 = -log r (unbiased, can be negative);  k2 = (log r)^2 / 2;
    k3 = (r - 1) - log r (unbiased, always >= 0). Inputs [B, T]; output [B, T] float32.
    """
    log_ratio = ref_logprobs.float() - logprobs.float()
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "k3":
        # clamp keeps exp() finite on tokens where the two policies disagree wildly
        log_ratio = log_ratio.clamp(-20.0, 20.0)
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"kl estimator {kind!r} is not one of k1, k2, k3")


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    mask = mask.float()
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    agg: str = "token-mean",
    num_tokens: float | None = None,
    max_len: int | None = None,
    num_seqs: float | None = None,
) -> Tensor:
    """Reduce a [B, T] per-token loss to a scalar.

    token-mean: sum over all tokens / number of tokens (`num_tokens` overrides the count, so a micro-batch can be
    divided by the global count over ranks and accumulation steps).
    seq-mean-token-mean: mean over sequences of each sequence's token mean.
    seq-mean-token-sum-norm: sum over tokens / max_len, mean over sequences (Dr. GRPO; max_len is a constant).
    `num_seqs` overrides the sequence count of the two seq-mean forms, for the same reason.
    """
    mask = mask.float()
    if agg == "token-mean":
        denom = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=torch.float32)
        return (per_token * mask).sum() / denom.clamp(min=1.0)
    n_seq = per_token.shape[0] if num_seqs is None else num_seqs
    if agg == "seq-mean-token-mean":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / n_seq
    if agg == "seq-mean-token-sum-norm":
        if not max_len:
            raise ValueError("seq-mean-token-sum-norm needs max_len (the constant to divide each sequence's sum by)")
        return ((per_token * mask).sum(-1) / max_len).sum() / n_seq
    raise ValueError(f"loss aggregation {agg!r} is not one of {', '.join(LOSS_AGGREGATIONS)}")


def clipped_pg_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    agg: str = "token-mean",
    num_tokens: float | None = None,
    max_len: int | None = None,
    num_seqs: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017), with DAPO's separate low/high clip (arXiv:2503.14476).

    ratio = exp(logprobs - old_logprobs)
    per-token loss = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)
    logprobs, old_logprobs, advantages, mask: [B, T] (broadcast a sequence advantage to its tokens yourself).
    Returns (scalar loss, {"clipfrac", "approx_kl", "ratio_mean"} detached scalars over masked tokens).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    loss = aggregate(per_token, mask, agg, num_tokens, max_len, num_seqs)
    with torch.no_grad():
        is_clipped = (clipped < unclipped).float()
        metrics = {
            "clipfrac": masked_mean(is_clipped, mask),
            "approx_kl": masked_mean(0.5 * log_ratio.square(), mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, metrics


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float = 0.2,
    agg: str = "token-mean",
    num_tokens: float | None = None,
    max_len: int | None = None,
    num_seqs: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO2's value loss: 0.5 * max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clamp(V - V_old, -clip, clip).

    The clip keeps one update from moving a value estimate far from the one the advantages were computed with;
    clip = 0 gives the plain 0.5 * (V - R)^2. values, old_values, returns, mask: [B, T] float.
    Returns (scalar loss aggregated like the policy loss, {"clipfrac"} over masked tokens).
    """
    values, old_values, returns = values.float(), old_values.float(), returns.float()
    unclipped = (values - returns).square()
    if clip > 0:
        v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        clipped = (v_clipped - returns).square()
        per_token = 0.5 * torch.maximum(unclipped, clipped)
        frac = masked_mean((clipped > unclipped).float(), mask).detach()
    else:
        per_token = 0.5 * unclipped
        frac = torch.zeros(())
    return aggregate(per_token, mask, agg, num_tokens, max_len, num_seqs), {"clipfrac": frac}


def masked_moments(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased variance of x over the masked entries (float32 scalars)."""
    m = mask.float()
    n = m.sum().clamp(min=1.0)
    mean = (x.float() * m).sum() / n
    var = ((x.float() - mean) ** 2 * m).sum() / (n - 1).clamp(min=1.0)
    return mean, var


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor, moments=masked_moments) -> float:
    """1 - Var(R - V) / Var(R) over masked tokens: 1 = V predicts the returns, 0 = no better than their mean,
    negative = worse. NaN when the returns do not vary. `moments(x, mask) -> (mean, var)` may take them over every
    rank."""
    _, r_var = moments(returns, mask)
    if not r_var > 0:
        return float("nan")
    _, err_var = moments(returns - values, mask)
    return (1.0 - err_var / r_var).item()
