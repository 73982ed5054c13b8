"""Hidden states that predict each completion token, for the policy's log-probs and the critic's values.

Shared by `rlhf.policy` and `rlhf.value` (so neither imports the other): one prompt encoding per group, rows scored in
runs of similar completion length.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlhf.logprobs import common_left_padding, position_ids_from_mask

# The fixed cost of one more forward call, in padded tokens: what splitting rows into length runs must save to pay.
# Measured on 2 CPU cores: 32-128 all gave the same step time for 32 completions of <= 64 tokens.
RUN_OVERHEAD_TOKENS = 64


def shares_prompts(prompt_ids: Tensor, prompt_mask: Tensor, group_size: int, model: nn.Module) -> bool:
    B = prompt_ids.shape[0]
    checkpointed = getattr(model, "is_activation_checkpointing", None)
    if checkpointed is None:
        checkpointed = getattr(model, "is_gradient_checkpointing", False)
    if group_size <= 1 or B % group_size or checkpointed:
        return False  # checkpointed layers do not keep a cache
    ids = prompt_ids.view(B // group_size, group_size, -1)
    masks = prompt_mask.view(B // group_size, group_size, -1)
    return bool((ids == ids[:, :1]).all() and (masks == masks[:, :1]).all())


def length_buckets(lengths: Tensor, overhead_tokens: int = RUN_OVERHEAD_TOKENS) -> list[Tensor]:
    """Row indices in groups of similar length, so each group is padded only to its own longest row.

    Rows are sorted by length and cut into runs that minimise the padded work: the sum over runs of rows x longest
    length, plus `overhead_tokens` per run for the fixed cost of one more forward call (framework and kernel launches,
    smaller matmuls). A batch of equal lengths stays one run; overhead_tokens < 0 disables the split."""
    order = torch.argsort(lengths, stable=True)
    if overhead_tokens < 0 or len(order) <= 1:
        return [order]
    ls = lengths[order].clamp(min=1).tolist()
    n = len(ls)
    best, cut = [0.0] + [math.inf] * n, [0] * (n + 1)
    for j in range(1, n + 1):  # best[j]: cheapest split of the j shortest rows; the last run is rows cut[j]..j-1
        for i in range(j):
            cost = best[i] + (j - i) * ls[j - 1] + overhead_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    runs, j = [], n
    while j > 0:
        runs.append(order[cut[j] : j])
        j = cut[j]
    return runs[::-1]


def _cache_rows(cache, rows: Tensor):
    """A copy of `cache` holding only batch rows `rows` (differentiable: gradients flow back to the shared cache)."""
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    out.batch_select_indices(rows)
    return out


def completion_states(
    decoder: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    group_size: int,
    share_prompts: bool,
    bucket_overhead: int = RUN_OVERHEAD_TOKENS,
) -> Tensor:
    """[B, C, H] last hidden states that predict each completion token: state t has seen the prompt and completion
    tokens before t (position P - 1 + t of the concatenated sequence); zeros past each row's completion.

    With share_prompts, each run of group_size rows has one prompt, encoded once; its keys/values are then read by
    every row of the group. Rows are scored in runs of similar completion length (`length_buckets`), each run cut
    to its longest completion, so padding costs little when a few completions are much longer than the rest."""
    B, P = prompt_ids.shape
    C = completion_ids.shape[1]
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1).long()
    position_ids = position_ids_from_mask(attention_mask)
    lengths = completion_mask.sum(-1)
    prompt_cache = prompt_last = None
    if share_prompts:
        G = group_size
        first = decoder(
            input_ids=prompt_ids[::G],
            attention_mask=prompt_mask[::G].long(),
            position_ids=position_ids[::G, :P],
            use_cache=True,
        )
        prompt_cache, prompt_last = first.cache, first.last_hidden_state[:, -1:]
    parts, rows_all = [], []
    for rows in length_buckets(lengths, bucket_overhead):
        w = max(int(lengths[rows].max()), 1)
        if share_prompts:
            group = torch.div(rows, group_size, rounding_mode="floor")
            rest = decoder(
                input_ids=completion_ids[rows, :w],
                attention_mask=attention_mask[rows, : P + w],
                position_ids=position_ids[rows, P : P + w],
                cache=_cache_rows(prompt_cache, group),
                use_cache=True,
            ).last_hidden_state
            # the prompt's last state predicts the first completion token; completion states predict the rest
            h = torch.cat([prompt_last[group], rest[:, : w - 1]], dim=1)
        else:
            p0 = common_left_padding(prompt_mask[rows])
            hidden = decoder(
                input_ids=torch.cat([prompt_ids[rows, p0:], completion_ids[rows, :w]], dim=1),
                attention_mask=attention_mask[rows, p0 : P + w],
                position_ids=position_ids[rows, p0 : P + w],
                use_cache=False,
            ).last_hidden_state
            h = hidden[:, P - p0 - 1 : P - p0 + w - 1]
        parts.append(F.pad(h, (0, 0, 0, C - w)))
        rows_all.append(rows)
    order = torch.cat(rows_all)
    return torch.cat(parts)[torch.argsort(order)]
