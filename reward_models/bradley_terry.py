"""The Bradley–Terry pairwise loss for reward models, as pure tensor functions.

A reward model r(x, y) is trained so that P(y_c preferred over y_r | x) = sigmoid(r(x, y_c) - r(x, y_r)) (Bradley &
Terry 1952) by minimising the negative log-likelihood of the human (or synthetic) choices: Ouyang et al. 2022
(InstructGPT, arXiv:2203.02155), eq. 1. Llama 2 (Touvron et al. 2023, arXiv:2307.09288, eq. 2) subtracts a margin
m(r) from the difference so that pairs rated far apart must be separated by more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bradley_terry_loss(
    chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | float | None = None
) -> Tensor:
    """-log sigmoid(r_c - r_r - margin), averaged over pairs.

    chosen_rewards, rejected_rewards: [B] float (one scalar reward per sequence; a trailing dim of 1 is squeezed).
    margin: None (no margin, InstructGPT), a float for every pair, or a [B] tensor per pair (Llama 2).
    Returns a scalar. `logsigmoid` keeps it finite for any difference (no log(0) as with log(sigmoid(.)))."""
    chosen = _flat(chosen_rewards)
    rejected = _flat(rejected_rewards)
    if chosen.shape != rejected.shape:
        raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} rewards differ in shape")
    diff = chosen.float() - rejected.float()
    if margin is not None:
        diff = diff - torch.as_tensor(margin, dtype=diff.dtype, device=diff.device)
    return -F.logsigmoid(diff).mean()


def pairwise_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Fraction of pairs whose chosen reward is strictly above the rejected one (a tie counts as wrong, so a constant
    model scores 0, not 0.5). chosen_rewards, rejected_rewards: [B]. Returns a float scalar."""
    chosen = _flat(chosen_rewards)
    rejected = _flat(rejected_rewards)
    return (chosen > rejected).float().mean()


def _flat(x: Tensor) -> Tensor:
    return x.squeeze(-1) if x.dim() == 2 and x.shape[-1] == 1 else x
