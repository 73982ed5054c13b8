"""Advantage estimators: pure tensor functions, shapes in the docstrings.

GRPO (DeepSeekMath, arXiv:2402.03300) normalises each prompt's rewards within its group of G completions;
Dr. GRPO (arXiv:2503.20783) drops the division by the std. GAE (Schulman et al. 2016, arXiv:1506.02438) is the
estimator for PPO with a value model.
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_advantages(scores: Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-4) -> Tensor:
    """(r - mean_group) / (std_group + eps), or r - mean_group when scale_by_std is False.

    scores: [N] float, N = prompts * group_size, a prompt's completions consecutive. std is the unbiased one
    (divides by G - 1), as in the GRPO reference implementations. Returns [N] float32.
    """
    if scores.dim() != 1 or scores.numel() % group_size:
        raise ValueError(f"scores must be [N] with N a multiple of group_size={group_size}, got {tuple(scores.shape)}")
    grouped = scores.float().view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def batch_std_advantages(
    scores: Tensor, group_size: int, std: Tensor | float | None = None, eps: float = 1e-4
) -> Tensor:
    """Group-mean baseline divided by the std of the whole batch (unbiased) instead of each group's, so near-ties in
    one group are not inflated to unit scale. `std` overrides the batch std (e.g. the std over all ranks).

    scores: [N] float; returns [N] float32."""
    grouped = scores.float().view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    scale = scores.float().std() if std is None else torch.as_tensor(std, dtype=torch.float32)
    return (centred / (scale + eps)).reshape(-1)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over completion tokens.

    rewards, values, mask: [B, T] float; mask is 1 on completion tokens, 0 on padding (padding may only follow the
    completion). The value after the last valid token is 0 (the episode ends there).
    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1};  returns = A + V.
    Returns (advantages, returns), both [B, T] float32, 0 where mask is 0.
    """
    mask = mask.float()
    rewards, values = rewards.float() * mask, values.float() * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


def rloo_advantages(scores: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, arXiv:2402.14740).

    Each completion's baseline is the mean reward of the other G - 1 completions of its prompt:
    A_i = r_i - (sum_j r_j - r_i) / (G - 1) = G / (G - 1) * (r_i - mean). scores: [N]; returns [N] float32."""
    if group_size < 2:
        raise ValueError("RLOO needs at least 2 completions per prompt (rollout.num_generations >= 2)")
    grouped = scores.float().view(-1, group_size)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(-1)


def discounted_returns(scores: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Monte-Carlo return of each token when the only reward is the sequence score on the last token (Williams 1992).

    G_t = gamma^(L - 1 - t) * R for t < L (L = the sequence's length), 0 on padding.
    scores: [B]; mask: [B, T] with the completion as a prefix; returns [B, T] float32."""
    mask = mask.float()
    lengths = mask.sum(-1, keepdim=True)
    t = torch.arange(mask.shape[1], dtype=torch.float32)[None, :]
    steps_to_end = (lengths - 1 - t).clamp(min=0)
    return scores.float()[:, None] * torch.pow(torch.tensor(gamma, dtype=torch.float32), steps_to_end) * mask


def whiten(
    values: Tensor,
    mask: Tensor,
    mean: Tensor | float | None = None,
    std: Tensor | float | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """(x - mean) / (std + eps) over the masked entries; mean and std may be given (e.g. computed over all ranks).

    The global-batch normalisation of REINFORCE++ (Hu et al. 2025, arXiv:2501.03262). Returns 0 where mask is 0."""
    mask = mask.float()
    n = mask.sum().clamp(min=1.0)
    if mean is None:
        mean = (values * mask).sum() / n
    if std is None:
        std = (((values - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1.0)).sqrt()
    return (values - mean) / (std + eps) * mask


def token_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token rewards of RLHF PPO (Ziegler et al. 2019; Ouyang et al. 2022): -kl_coef * KL_t on every completion
    token, plus the sequence score on its last token.

    scores: [B]; kl: [B, T] per-token KL estimate to the reference (zeros for none); mask: [B, T] with the completion
    as a prefix. Returns [B, T] float32, 0 on padding."""
    mask = mask.float()
    rewards = -kl_coef * kl.float() * mask
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    has_tokens = mask.sum(-1) > 0
    rows = torch.arange(len(scores))
    rewards[rows[has_tokens], last[has_tokens]] += scores.float()[has_tokens]
    return rewards
