"""Per-token log-probabilities of completions, without ever holding a [B, T, V] float32 tensor.

The output head runs only on completion positions, in float32, a chunk of tokens at a time; with gradients on, each
chunk is recomputed in the backward pass (activation checkpointing), so peak memory is one chunk of logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def _chunk_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float) -> Tensor:
    logits = F.linear(hidden.float(), weight.float()) / temperature  # [n, V] float32
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


@torch.no_grad()
def _chunk_entropy(hidden: Tensor, weight: Tensor, temperature: float) -> Tensor:
    logits = F.linear(hidden.float(), weight.float()) / temperature
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """log softmax(hidden @ weight.T / temperature)[target] per token.

    hidden: [N, H] (any float dtype), weight: [V, H] output head, targets: [N] long.
    Returns logprobs [N] float32 (differentiable w.r.t. hidden) and, if asked, the entropy [N] float32 (detached).
    """
    out, ent = [], []
    grad = torch.is_grad_enabled() and hidden.requires_grad
    for start in range(0, hidden.shape[0], chunk_tokens):
        h, t = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens]
        if grad:
            out.append(checkpoint(_chunk_logprobs, h, weight, t, temperature, use_reentrant=False))
        else:
            out.append(_chunk_logprobs(h, weight, t, temperature))
        if with_entropy:
            ent.append(_chunk_entropy(h.detach(), weight, temperature))
    empty = hidden.new_zeros(0, dtype=torch.float32)
    logprobs = torch.cat(out) if out else empty
    return logprobs, (torch.cat(ent) if ent else empty) if with_entropy else None


def naive_token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """The plain reference the chunked path is tested against: full logits, one log_softmax."""
    logits = F.linear(hidden.float(), weight.float()) / temperature
    return logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding, the same rule generation uses, so training sees identical positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
