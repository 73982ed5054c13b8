"""The trainable policy as one nn.Module whose forward returns completion log-probabilities.

Wrapping the LoRA model this way lets accelerate/DeepSpeed wrap a module whose forward is exactly the computation we
differentiate, so gradient synchronisation hooks fire, and the output head runs only where it is needed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlhf.logprobs import common_left_padding, position_ids_from_mask, token_logprobs
from rlhf.value import Critic

# The fixed cost of one more forward call, in padded tokens: what splitting rows into length runs must save to pay.
# Measured on 2 CPU cores: 32-128 all gave the same step time for 32 completions of <= 64 tokens.
RUN_OVERHEAD_TOKENS = 64


@dataclass
class PolicyOutput:
    logprobs: Tensor  # [B, C] float32, 0 where completion_mask is 0
    entropy: Tensor | None  # [B, C] float32 (detached), 0 where masked
    values: Tensor | None = None  # [B, C] float32 V(s_t), 0 where completion_mask is 0


class Policy(nn.Module):
    """A PEFT causal LM; `forward` scores completion tokens given prompt + completion."""

    def __init__(
        self,
        model: nn.Module,
        value_model: nn.Module | None = None,
        chunk_tokens: int = 1024,
        bucket_overhead: int = RUN_OVERHEAD_TOKENS,
    ):
        super().__init__()
        self.model = model
        # inside this module so accelerate/DeepSpeed wrap, shard and synchronise it with the policy's adapter
        self.value_model = value_model
        self.chunk_tokens = chunk_tokens
        self.bucket_overhead = bucket_overhead  # see length_buckets; -1 pads every row to the longest

    def policy_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the policy alone (LoRA), without the value model's."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def value_parameters(self) -> list[nn.Parameter]:
        return [] if self.value_model is None else [p for p in self.value_model.parameters() if p.requires_grad]

    @property
    def base(self) -> nn.Module:
        """The transformers model (with LoRA layers injected), usable for cached decoding."""
        return self.model.get_base_model()

    def states(
        self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, completion_mask: Tensor, group_size: int
    ) -> Tensor:
        """[B, C, H] hidden states that predict each completion token (`completion_states`), the prompt shared per
        group where the rows allow it."""
        share = shares_prompts(prompt_ids, prompt_mask, group_size, self.base)
        return completion_states(
            self.base.get_decoder(),
            prompt_ids,
            prompt_mask,
            completion_ids,
            completion_mask,
            group_size,
            share,
            self.bucket_overhead,
        )

    def forward(
        self,
        prompt_ids: Tensor,  # [B, P] long, left-padded
        prompt_mask: Tensor,  # [B, P]
        completion_ids: Tensor,  # [B, C] long, right-padded
        completion_mask: Tensor,  # [B, C]
        temperature: float = 1.0,
        with_entropy: bool = False,
        group_size: int = 1,
        with_values: bool = False,
        detach_value_trunk: bool = False,
    ) -> PolicyOutput:
        """Log-probs of the completion tokens (and, with_values, V(s_t) of each completion token's state).

        With group_size G > 1 and each run of G rows sharing one prompt, the prompt is encoded once per group and its
        keys/values are shared by the G completions (gradients from all G flow back into it): the same numbers as
        encoding it G times, for a fraction of the work. detach_value_trunk stops the value loss at the value head's
        input (critic warm-up, TRPO), so it trains only the head when the trunk is shared."""
        h = self.states(prompt_ids, prompt_mask, completion_ids, completion_mask, group_size)
        mask = completion_mask.bool()
        weight = self.base.get_output_embeddings().weight
        lp, ent = token_logprobs(
            h[mask], weight, completion_ids[mask], temperature, self.chunk_tokens, with_entropy=with_entropy
        )
        logprobs = h.new_zeros(mask.shape, dtype=torch.float32).masked_scatter(mask, lp)
        entropy = None
        if ent is not None:
            entropy = torch.zeros_like(logprobs).masked_scatter(mask, ent)
        values = None
        if with_values:
            if self.value_model is None:
                raise ValueError("this policy has no value model (algorithm.name ppo/actor_critic/trpo builds one)")
            if isinstance(self.value_model, Critic):
                values = self.value_model(
                    prompt_ids, prompt_mask, completion_ids, completion_mask, group_size, self.bucket_overhead
                )
            else:
                values = self.value_model(h.detach() if detach_value_trunk else h) * completion_mask
        return PolicyOutput(logprobs, entropy, values)

    def full_logprobs(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        completion_ids: Tensor,
        completion_mask: Tensor,
        temperature: float = 1.0,
        group_size: int = 1,
    ) -> Tensor:
        """[N, V] float32 log-softmax over the whole vocabulary at the N completion tokens (mask order), for exact
        KL between two policies (TRPO). Materialises N x V: for small batches only."""
        h = self.states(prompt_ids, prompt_mask, completion_ids, completion_mask, group_size)
        weight = self.base.get_output_embeddings().weight
        logits = h[completion_mask.bool()].float() @ weight.float().T
        return torch.log_softmax(logits / temperature, dim=-1)


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
