"""Policy losses and KL estimators: pure tensor functions shared by every trainer."""

from __future__ import annotations

import torch
from torch import Tensor

LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "seq-mean-token-sum")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence", "sequence-token")
# |log ratio| beyond this is clamped before exp(): exp(20) ~ 4.9e8 is finite in float32 (exp overflows past ~88.7), so
# a token with zero advantage and an extreme ratio contributes 0 instead of inf * 0 = NaN. No ratio in a healthy run
# comes near it, and a clamped token has no gradient through the ratio.
MAX_LOG_RATIO = 20.0


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
    seq-mean-token-sum: each sequence's token sum, mean over sequences (= the sum over every token / the sequence
    count). A long sequence weighs in proportion to its length and nothing is divided by a token count; unlike a bare
    sum, the scale does not grow with the batch size.
    `num_seqs` overrides the sequence count of the seq-mean forms, for the same reason.
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
    if agg == "seq-mean-token-sum":
        return (per_token * mask).sum(-1).sum() / n_seq
    raise ValueError(f"loss aggregation {agg!r} is not one of {', '.join(LOSS_AGGREGATIONS)}")


def _ratio(log_ratio: Tensor) -> Tensor:
    """exp(log_ratio) with |log_ratio| clamped at MAX_LOG_RATIO (identical to exp(log_ratio) inside the clamp)."""
    return torch.exp(log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))


def _metrics(log_ratio: Tensor, ratio: Tensor, is_clipped: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """The metrics every policy loss reports, detached means over masked tokens: clipfrac (share of tokens whose
    ratio or weight a clip changed), approx_kl = 0.5 * (logprobs - old_logprobs)^2, ratio_mean."""
    with torch.no_grad():
        return {
            "clipfrac": masked_mean(is_clipped.float(), mask),
            "approx_kl": masked_mean(0.5 * log_ratio.square(), mask),
            "ratio_mean": masked_mean(ratio, mask),
        }


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
    *,
    clip_ratio_c: float | None = None,
    importance_sampling_level: str = "token",
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017), with DAPO's separate low/high clip (arXiv:2503.14476).

    ratio = exp(clamp(logprobs - old_logprobs, -MAX_LOG_RATIO, MAX_LOG_RATIO))
    per-token loss = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)
    logprobs, old_logprobs, advantages, mask: [B, T] (broadcast a sequence advantage to its tokens yourself).
    Returns (scalar loss, {"clipfrac", "approx_kl", "ratio_mean"} detached scalars over masked tokens).

    clip_ratio_c: dual-clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL",
        arXiv:1912.09729). For A < 0 the per-token loss is also bounded above by -c * A:
        loss = min(max(-ratio * A, -clip(ratio) * A), -c * A); tokens at the bound get no gradient. Must be > 1
        (3.0 is usual); None (default) turns it off. Adds the metric "dualclip_frac" (share of masked tokens at
        the bound).
    importance_sampling_level: GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv:2507.18071).
        "token" (default): the ratio above, per token.
        "sequence": every token of sequence i uses s_i = exp(mean over its masked tokens of (logprobs -
            old_logprobs)), clipped per sequence. GSPO uses a much smaller clip range (clip_low=3e-4,
            clip_high=4e-4) and agg="seq-mean-token-mean", which with a per-sequence advantage gives the paper's
            objective -(1/G) sum_i min(s_i A_i, clip(s_i) A_i).
        "sequence-token" (GSPO-token): s_i,t = sg[s_i] * pi(y_t) / sg[pi(y_t)], whose value is s_i (so the loss
            equals "sequence"'s) while d s_i,t / d logprob_t = s_i: each token's gradient carries its own advantage.
            With an advantage constant over a sequence and seq-mean-token-mean it has the same gradient as
            "sequence".
    """
    log_ratio = logprobs - old_logprobs
    if importance_sampling_level == "token":
        log_is = log_ratio
    elif importance_sampling_level in ("sequence", "sequence-token"):
        m = mask.to(log_ratio.dtype)
        seq_log_ratio = (log_ratio * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1.0)
        if importance_sampling_level == "sequence":
            log_is = seq_log_ratio.expand_as(log_ratio)
        else:
            log_is = seq_log_ratio.detach() + (logprobs - logprobs.detach())
    else:
        raise ValueError(
            f"importance_sampling_level {importance_sampling_level!r} is not one of "
            f"{', '.join(IMPORTANCE_SAMPLING_LEVELS)}"
        )
    ratio = _ratio(log_is)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    dual = None
    if clip_ratio_c is not None:
        if not clip_ratio_c > 1.0:
            raise ValueError(f"clip_ratio_c must be > 1 (the dual-clip bound on the ratio), got {clip_ratio_c}")
        negative = advantages < 0
        bound = -clip_ratio_c * advantages
        dual = negative & (per_token > bound)
        per_token = torch.where(negative, torch.minimum(per_token, bound), per_token)
    loss = aggregate(per_token, mask, agg, num_tokens, max_len, num_seqs)
    metrics = _metrics(log_ratio, ratio, clipped < unclipped, mask)
    if dual is not None:
        metrics["dualclip_frac"] = masked_mean(dual.float(), mask).detach()
    return loss, metrics


def cispo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float | None = None,
    clip_high: float = 0.28,
    agg: str = "token-mean",
    num_tokens: float | None = None,
    max_len: int | None = None,
    num_seqs: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO (MiniMax-M1, arXiv:2506.13585): clip the importance weight, not the update.

    w = sg(clip(ratio, 1 - clip_low, 1 + clip_high)),  per-token loss = -w * A * logprobs.
    The gradient of every token is the REINFORCE one, -A * grad logprob, scaled by w: no token is dropped (PPO's clip
    zeroes the gradient of a token outside the range); a token far off-policy keeps its gradient, with its weight
    held at the bound. The loss value itself (with the log-prob in it) is not comparable with the clipped
    surrogate's.

    clip_low: None (default) = no lower bound on w, as in MiniMax-M1 (which tunes only the upper bound).
    clip_high: upper bound 1 + clip_high on w; 0.28 is DAPO's clip-higher value, a common starting point.
    logprobs, old_logprobs, advantages, mask: [B, T].
    Returns (scalar loss, {"clipfrac" (share of masked tokens whose weight was clipped), "approx_kl", "ratio_mean"}).
    """
    log_ratio = logprobs - old_logprobs
    ratio = _ratio(log_ratio)
    weight = torch.clamp(ratio, None if clip_low is None else 1.0 - clip_low, 1.0 + clip_high).detach()
    per_token = -weight * advantages * logprobs
    loss = aggregate(per_token, mask, agg, num_tokens, max_len, num_seqs)
    return loss, _metrics(log_ratio, ratio, weight != ratio, mask)


def sapo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    agg: str = "token-mean",
    num_tokens: float | None = None,
    max_len: int | None = None,
    num_seqs: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SAPO (Gao et al. 2025, "Soft Adaptive Policy Optimization", arXiv:2511.20347): a sigmoid gate instead of the
    hard clip.

    per-token loss = -f(ratio) * A,  f(r) = sigma(tau * (r - 1)) * 4 / tau,  tau = tau_pos if A > 0 else tau_neg.
    d loss / d logprob = -w * ratio * A with w = 4 * sigma * (1 - sigma): w = 1 on-policy (ratio 1, the plain
    policy gradient) and decays smoothly as the ratio leaves 1, faster for larger tau. The paper's defaults are
    tau_pos = 1.0, tau_neg = 1.05 (negative advantages decay faster). logprobs, old_logprobs, advantages, mask: [B, T].
    Returns (scalar loss, {"clipfrac" (always 0: nothing is hard-clipped), "approx_kl", "ratio_mean",
    "gate_weight_mean" (mean w over masked tokens)}).
    """
    log_ratio = logprobs - old_logprobs
    ratio = _ratio(log_ratio)
    tau = torch.full_like(ratio, tau_neg).masked_fill(advantages > 0, tau_pos)
    sig = torch.sigmoid(tau * (ratio - 1.0))
    per_token = -(sig * (4.0 / tau)) * advantages
    loss = aggregate(per_token, mask, agg, num_tokens, max_len, num_seqs)
    metrics = _metrics(log_ratio, ratio, torch.zeros_like(ratio), mask)
    metrics["gate_weight_mean"] = masked_mean(4.0 * sig * (1.0 - sig), mask).detach()
    return loss, metrics


def entropy_bonus(
    entropy: Tensor,
    mask: Tensor,
    agg: str = "token-mean",
    num_tokens: float | None = None,
    max_len: int | None = None,
    num_seqs: float | None = None,
) -> Tensor:
    """The policy's entropy [B, T] aggregated like the policy loss (a scalar that keeps its gradient); the total
    loss subtracts coef * it to reward exploration (the entropy term of PPO, Schulman et al. 2017)."""
    return aggregate(entropy, mask, agg, num_tokens, max_len, num_seqs)


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


def gspo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    clip_ratio_c: float | None = None,
    agg: str = "token-mean",
    num_tokens: float | None = None,
    max_len: int | None = None,
    num_seqs: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO (Zheng et al. 2025, arXiv:2507.18071): the clipped surrogate with one importance ratio per sequence, the
    geometric mean of its token ratios, clipped with GSPO's own, much smaller range (the paper: 3e-4 / 4e-4)."""
    return clipped_pg_loss(
        logprobs, old_logprobs, advantages, mask, clip_low, clip_high, agg, num_tokens, max_len, num_seqs,
        clip_ratio_c=clip_ratio_c, importance_sampling_level="sequence",
    )  # fmt: skip


def gspo_token_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    clip_ratio_c: float | None = None,
    agg: str = "token-mean",
    num_tokens: float | None = None,
    max_len: int | None = None,
    num_seqs: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO-token (arXiv:2507.18071): the sequence ratio's value with each token's own gradient, so per-token
    advantages (e.g. multi-turn credit) can still differ within a sequence."""
    return clipped_pg_loss(
        logprobs, old_logprobs, advantages, mask, clip_low, clip_high, agg, num_tokens, max_len, num_seqs,
        clip_ratio_c=clip_ratio_c, importance_sampling_level="sequence-token",
    )  # fmt: skip
