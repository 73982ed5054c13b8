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
    """Generalised advantage estimation over the tokens the policy acted on.

    rewards, values, mask: [B, T] float; mask is 1 on action tokens, 0 elsewhere. The value after the last action
    token is 0 (the episode ends there).
    delta_t = r_t + gamma * V_next(t) - V_t;  A_t = delta_t + gamma * lam * A_next(t);  returns = A + V,
    where next(t) is the next action token after t.

    Gaps (mask 0 between action tokens: tool output or a user turn inserted into a multi-turn episode) are not time
    steps: the return and the value pass through them unchanged, so an inserted stretch neither discounts nor
    earns. Why: the policy made no decision there, and the number of inserted tokens (a tool's output length) is
    not something the discount should punish. A single-turn completion (mask a prefix) is the ordinary GAE.
    Returns (advantages, returns), both [B, T] float32, 0 where mask is 0.
    """
    mask = mask.float()
    rewards, values = rewards.float() * mask, values.float() * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])  # A at the next action token
    next_value = torch.zeros_like(last)  # V at the next action token (0 past the last one)
    for t in reversed(range(T)):
        acting = mask[:, t] > 0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = torch.where(acting, delta + gamma * lam * last, last)
        next_value = torch.where(acting, values[:, t], next_value)
        adv[:, t] = last * mask[:, t]
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
    """Monte-Carlo return of each action token when the only reward is the sequence score on the last action token
    (Williams 1992).

    G_t = gamma^(action tokens after t) * R on action tokens, 0 elsewhere. Gaps in the mask (inserted tokens) are not
    time steps: the return passes through them undiscounted, as in `gae`.
    scores: [B]; mask: [B, T]; returns [B, T] float32."""
    mask = mask.float()
    steps_to_end = (mask.flip(-1).cumsum(-1).flip(-1) - 1).clamp(min=0)
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


def last_action_index(mask: Tensor) -> Tensor:
    """[B] long: the column of each row's last action token (0 for a row without one). mask: [B, T]."""
    acting = mask > 0
    last = mask.shape[1] - 1 - acting.flip(-1).float().argmax(-1)
    return torch.where(acting.any(-1), last, torch.zeros_like(last))


def token_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token rewards of RLHF PPO (Ziegler et al. 2019; Ouyang et al. 2022): -kl_coef * KL_t on every action
    token, plus the sequence score on the last action token.

    scores: [B]; kl: [B, T] per-token KL estimate to the reference (zeros for none); mask: [B, T], 1 on action tokens
    (gaps allowed). Returns [B, T] float32, 0 off the mask."""
    mask = mask.float()
    rewards = -kl_coef * kl.float() * mask
    last = last_action_index(mask)
    has_tokens = mask.sum(-1) > 0
    rows = torch.arange(len(scores))
    rewards[rows[has_tokens], last[has_tokens]] += scores.float()[has_tokens]
    return rewards
