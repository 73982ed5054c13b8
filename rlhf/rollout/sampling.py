"""Picking the next token (temperature, top-k, top-p) and finding stop strings: shared by the built-in engine and any
engine that decodes with a transformers forward."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rlhf.rollout.types import SamplingParams


def sample_next(logits: Tensor, params: SamplingParams) -> tuple[Tensor, Tensor]:
    """Pick the next token from [B, V] logits; return (tokens [B], log-probability under softmax(logits / T)).

    The log-probability is that of the temperature-scaled distribution before top-k / top-p truncation, the same
    quantity the trainer recomputes, so behaviour and training log-probs agree (as in vLLM's and TRL's logprobs)."""
    logits = logits.float()
    if params.greedy:
        tokens = logits.argmax(-1)
        return tokens, logits.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)
    scaled = logits if params.temperature == 1.0 else logits / params.temperature
    logp = scaled.log_softmax(-1)
    filtered = scaled
    if params.top_k > 0 and params.top_k < filtered.shape[-1]:
        kth = torch.topk(filtered, params.top_k, dim=-1).values[:, -1:]
        filtered = filtered.masked_fill(filtered < kth, -math.inf)
    if params.top_p < 1.0:
        sorted_logits, order = filtered.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the most likely token always stays)
        drop_sorted = probs.cumsum(-1) - probs >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        filtered = filtered.masked_fill(drop, -math.inf)
    # untruncated: the probabilities are exp(logp), no second softmax over the vocabulary
    probs = logp.exp() if filtered is scaled else filtered.softmax(-1)
    tokens = _sample_categorical(probs, params.generator)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def _sample_categorical(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw per row by inverting the CDF: B uniform numbers instead of `multinomial`'s B x V exponential draws,
    which took a quarter of each decoding step over a 49k vocabulary on CPU. Zero-probability tokens are never picked:
    the CDF does not rise at them and the search takes the first index where it exceeds u."""
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, dtype=cdf.dtype, device=cdf.device, generator=generator) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


class StopChecker:
    """Finds sequences whose text now contains a stop string, decoding only each sequence's last few tokens."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.window = max((len(s) for s in self.stop), default=0) + 2

    def __call__(self, generated: list[list[int]], active: Tensor) -> Tensor:
        hit = torch.zeros_like(active)
        if not self.stop:
            return hit
        for i in torch.nonzero(active).flatten().tolist():
            tail = self.tokenizer.decode(generated[i][-self.window :], skip_special_tokens=True)
            hit[i] = any(s in tail for s in self.stop)
        return hit
