"""The rollout engine: G completions per prompt by batched, cached decoding.

One prefill per distinct prompt (its KV cache is then repeated G times), then one decode step per new token for all
running sequences at once: finished sequences leave the batch and the cache as decoding goes on, and decoding stops
when every sequence has ended. Written against the plain transformers forward so
another backend (vLLM, SGLang) can replace `generate` behind the same `Rollout` result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rlhf.logprobs import common_left_padding, position_ids_from_mask


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0  # ignored when greedy
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    stop: list[str] = field(default_factory=list)


@dataclass
class Rollout:
    """Completions for B = prompts x G sequences (rows of one prompt are consecutive)."""

    prompt_ids: Tensor  # [B, P] long, left-padded
    prompt_mask: Tensor  # [B, P] long
    completion_ids: Tensor  # [B, C] long, pad after the end
    completion_mask: Tensor  # [B, C] long, 1 on generated tokens including the final EOS / stop
    logprobs: Tensor  # [B, C] float32 behaviour log-probabilities at the sampling temperature, 0 where masked
    truncated: Tensor  # [B] bool: hit max_new_tokens without EOS or stop
    texts: list[str]  # decoded completions, special tokens removed

    @property
    def lengths(self) -> Tensor:
        return self.completion_mask.sum(-1)


def _pad_right(t: Tensor, width: int, value: float) -> Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) if t.shape[1] < width else t


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Join rollouts generated in chunks: prompts are re-left-padded, completions re-right-padded."""
    if len(parts) == 1:
        return parts[0]
    P = max(r.prompt_ids.shape[1] for r in parts)
    C = max(r.completion_ids.shape[1] for r in parts)

    def left(t: Tensor, value: int) -> Tensor:
        return torch.nn.functional.pad(t, (P - t.shape[1], 0), value=value)

    return Rollout(
        prompt_ids=torch.cat([left(r.prompt_ids, pad_id) for r in parts]),
        prompt_mask=torch.cat([left(r.prompt_mask, 0) for r in parts]),
        completion_ids=torch.cat([_pad_right(r.completion_ids, C, pad_id) for r in parts]),
        completion_mask=torch.cat([_pad_right(r.completion_mask, C, 0) for r in parts]),
        logprobs=torch.cat([_pad_right(r.logprobs, C, 0.0) for r in parts]),
        truncated=torch.cat([r.truncated for r in parts]),
        texts=[t for r in parts for t in r.texts],
    )


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
    tokens = _sample_categorical(probs)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def _sample_categorical(probs: Tensor) -> Tensor:
    """One draw per row by inverting the CDF: B uniform numbers instead of `multinomial`'s B x V exponential draws,
    which took a quarter of each decoding step over a 49k vocabulary on CPU. Zero-probability tokens are never picked:
    the CDF does not rise at them and the search takes the first index where it exceeds u."""
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
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


@torch.no_grad()  # not inference_mode: the rollout's tensors are inputs of the training graph afterwards
def generate(
    model: nn.Module,
    tokenizer,
    prompt_ids: Tensor,  # [N, P] long, left-padded distinct prompts
    prompt_mask: Tensor,  # [N, P]
    num_generations: int,
    params: SamplingParams,
) -> Rollout:
    """N prompts -> N * num_generations completions (a prompt's completions consecutive)."""
    eos_ids = _eos_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id
    G = num_generations
    prompt_mask = prompt_mask.long()
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=position_ids_from_mask(prompt_mask),
        use_cache=True,
        logits_to_keep=1,
    )
    cache = out.cache
    logits = out.logits[:, -1]
    if G > 1:
        # share the prompt's prefill across its G completions instead of encoding it G times
        cache.batch_repeat_interleave(G)
        logits = logits.repeat_interleave(G, dim=0)
    ids = prompt_ids.repeat_interleave(G, dim=0)
    full_prompt_mask = prompt_mask.repeat_interleave(G, dim=0)
    B = ids.shape[0]
    next_pos = full_prompt_mask.sum(-1, keepdim=True)  # [B, 1]: position of the first new token
    active = torch.ones(B, dtype=torch.bool)
    stopped = torch.zeros(B, dtype=torch.bool)
    # rows still in the decoding batch: finished rows leave it (with their KV cache) once a quarter of it has ended,
    # since each decoding step costs about 1 ms per row on top of reading the weights
    rows = torch.arange(B)
    mask = full_prompt_mask
    stop_check = StopChecker(tokenizer, params.stop)
    generated: list[list[int]] = [[] for _ in range(B)]
    tokens_out, logps_out, live_out = [], [], []
    eos = torch.tensor(sorted(eos_ids))
    for step in range(params.max_new_tokens):
        row_tokens, row_logp = sample_next(logits, params)
        tokens = torch.full((B,), pad_id, dtype=row_tokens.dtype).index_copy_(0, rows, row_tokens)
        tokens = torch.where(active, tokens, torch.full_like(tokens, pad_id))
        logp = torch.zeros(B, dtype=row_logp.dtype).index_copy_(0, rows, row_logp)
        tokens_out.append(tokens)
        logps_out.append(torch.where(active, logp, torch.zeros_like(logp)))
        live_out.append(active.clone())
        if stop_check.stop:
            for i in torch.nonzero(active).flatten().tolist():
                generated[i].append(int(tokens[i]))
        ended = active & (torch.isin(tokens, eos) | stop_check(generated, active))
        stopped |= ended
        active = active & ~ended
        if not active.any() or step == params.max_new_tokens - 1:
            break
        still = active[rows]
        if 4 * int(still.sum()) <= 3 * len(rows):
            keep = still.nonzero().flatten()
            cache.batch_select_indices(keep)
            rows, mask = rows[keep], mask[keep]
        mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype)], dim=1)
        out = model(
            input_ids=tokens[rows, None],
            attention_mask=mask,
            position_ids=next_pos[rows] + step,
            cache=cache,
            use_cache=True,
        )
        cache = out.cache
        logits = out.logits[:, -1]
    completion_ids = torch.stack(tokens_out, dim=1)
    completion_mask = torch.stack(live_out, dim=1).long()
    texts = tokenizer.batch_decode(
        [row[m.bool()].tolist() for row, m in zip(completion_ids, completion_mask)], skip_special_tokens=True
    )
    return Rollout(
        prompt_ids=ids,
        prompt_mask=full_prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        logprobs=torch.stack(logps_out, dim=1),
        truncated=~stopped,
        texts=texts,
    )


def generate_batched(
    model: nn.Module,
    tokenizer,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    num_generations: int,
    params: SamplingParams,
    batch_size: int = 0,
) -> Rollout:
    """`generate` in chunks of whole prompts so that at most `batch_size` sequences decode at once (0 = all)."""
    N = prompt_ids.shape[0]
    per_chunk = N if batch_size <= 0 else max(1, batch_size // num_generations)
    parts = []
    for s in range(0, N, per_chunk):
        ids, m = prompt_ids[s : s + per_chunk], prompt_mask[s : s + per_chunk]
        first = common_left_padding(m)  # drop columns that are padding for every prompt of the chunk
        parts.append(generate(model, tokenizer, ids[:, first:], m[:, first:], num_generations, params))
    return concat_rollouts(parts, tokenizer.pad_token_id)


def _eos_ids(tokenizer, model: nn.Module) -> set[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, list):
        ids.update(gen_eos)
    return {i for i in ids if i is not None}
