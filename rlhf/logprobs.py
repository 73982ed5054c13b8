"""Per-token log-probabilities of completions, without ever holding a [B, T, V] float32 tensor.

The output head runs only on completion positions, in float32, a chunk of tokens at a time. Each chunk is one
autograd function (`_HeadLogprobs`) that saves only its inputs and the log-normaliser: the backward recomputes the
chunk's logits, so peak memory is one chunk of logits, and the forward gets the entropy from the same exponentials
(no second pass of the head for it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _logits(hidden: Tensor, weight: Tensor, temperature: float) -> Tensor:
    logits = F.linear(hidden.float(), weight.float())
    return logits if temperature == 1.0 else logits.div_(temperature)


class _HeadLogprobs(torch.autograd.Function):
    """log softmax(h W^T / T)[target] and, with_entropy, the entropy (else an empty tensor) of one chunk of tokens.

    Both are differentiable. With z the tempered logits, p = softmax(z): d logp[target] / dz = onehot - p and
    dH / dz = -p * (log p + H); the entropy's term is computed only when a loss uses the entropy (an entropy bonus)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float, with_entropy: bool):
        logits = _logits(hidden, weight, temperature)  # [n, V] float32
        peak = logits.amax(-1, keepdim=True)
        e = (logits - peak).exp_()
        z = e.sum(-1)
        lse = peak.squeeze(-1) + z.log()
        # H = log Z - E_p[logit]; scoring passes (reference, pre-update) do not need it
        entropy = lse - (e.mul_(logits)).sum(-1) / z if with_entropy else lse.new_empty(0)
        logprobs = logits.gather(-1, targets[:, None]).squeeze(-1) - lse
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.temperature = temperature
        ctx.set_materialize_grads(False)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs: Tensor | None, grad_entropy: Tensor | None):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        if grad_logprobs is None:
            grad_logprobs = lse.new_zeros(lse.shape)
        g = grad_logprobs[:, None]
        # d logprob / d logits = onehot(target) - softmax, both scaled by 1/T through the logits
        if grad_entropy is None or entropy.numel() == 0:
            grad = _logits(hidden, weight, ctx.temperature).sub_(lse[:, None]).exp_().mul_(-g)
        else:  # plus the entropy's: -p * (log p + H) * dL/dH
            logp = _logits(hidden, weight, ctx.temperature).sub_(lse[:, None])
            p = logp.exp()
            grad = p * (-g) - p * (logp + entropy[:, None]) * grad_entropy[:, None]
        grad.scatter_add_(-1, targets[:, None], g)
        if ctx.temperature != 1.0:
            grad.div_(ctx.temperature)
        grad_h = (grad @ weight.float()).to(hidden.dtype) if ctx.needs_input_grad[0] else None
        grad_w = (grad.T @ hidden.float()).to(weight.dtype) if ctx.needs_input_grad[1] else None
        return grad_h, grad_w, None, None, None


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
    Returns logprobs [N] float32 (differentiable w.r.t. hidden and weight) and, if asked, the entropy [N] float32
    (differentiable too, for an entropy bonus).
    """
    out, ent = [], []
    for start in range(0, hidden.shape[0], chunk_tokens):
        h, t = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens]
        lp, e = _HeadLogprobs.apply(h, weight, t, temperature, with_entropy)
        out.append(lp)
        ent.append(e)
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


def common_left_padding(mask: Tensor) -> int:
    """How many leading columns of a left-padded [B, T] mask are padding in every row (they can be cut off)."""
    keep = mask.bool().any(0).nonzero()
    return int(keep[0]) if len(keep) else 0
