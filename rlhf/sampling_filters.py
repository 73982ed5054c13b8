"""Filters over groups of sampled completions, applied before the advantages are computed."""

from __future__ import annotations

import torch
from torch import Tensor


def informative_groups(scores: Tensor, group_size: int, tol: float = 1e-6) -> Tensor:
    """Which groups carry a learning signal: DAPO's dynamic sampling (Yu et al. 2025, arXiv:2503.14476) keeps only
    the prompts whose completions did not all get the same reward, since a group-relative advantage is 0 for all of
    them otherwise.

    scores: [N] rewards, N = groups * group_size, a group's completions consecutive. Returns a BoolTensor
    [N // group_size], True = keep.

    A group is uninformative (False) when every reward equals the group's first reward r_0 within
    |r - r_0| <= tol * max(1, |r_0|) (absolute below 1, relative above). The rewards are compared with each other,
    never through the mean or a floating-point std, which rounding can leave non-zero for equal rewards or zero for
    different ones. tol = 0 asks for exact equality.

    Non-finite rewards: a group holding a NaN or +-inf reward is False (not kept). Its group mean, and so every
    member's group-relative advantage, would be NaN (or NaN / inf), so it carries no usable signal and would poison
    the update. (The project's scoring already rejects non-finite rewards, so such a value means a bug upstream;
    callers that want to see it count `~torch.isfinite(scores)` separately.)
    A group of one completion is always False.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if scores.dim() != 1 or scores.numel() % group_size:
        raise ValueError(f"scores must be [N] with N a multiple of group_size={group_size}, got {tuple(scores.shape)}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    grouped = scores.view(-1, group_size)
    if not grouped.is_floating_point():
        grouped = grouped.double()
    first = grouped[:, :1]
    allowed = tol * first.abs().clamp(min=1.0)
    all_equal = ((grouped - first).abs() <= allowed).all(dim=1)
    finite = torch.isfinite(grouped).all(dim=1)
    return finite & ~all_equal
