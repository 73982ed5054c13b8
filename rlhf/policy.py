"""The trainable policy as one nn.Module whose forward returns completion log-probabilities.

Wrapping the LoRA model this way lets accelerate/DeepSpeed wrap a module whose forward is exactly the computation we
differentiate, so gradient synchronisation hooks fire, and the output head runs only where it is needed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rlhf.logprobs import token_logprobs
from rlhf.models import lora_in_base_dtype
from rlhf.rollout.types import Rollout
from rlhf.states import RUN_OVERHEAD_TOKENS, completion_states, length_buckets, shares_prompts
from rlhf.value import Critic

__all__ = [
    "RUN_OVERHEAD_TOKENS",
    "Policy",
    "PolicyOutput",
    "Scores",
    "completion_states",
    "length_buckets",
    "score",
    "shares_prompts",
]


@dataclass
class Scores:
    """What the policy says about B episodes of C columns (the rollout's own temperature and group size)."""

    logprobs: Tensor  # [B, C] float32, 0 where action_mask is 0
    entropy: Tensor | None  # [B, C] float32 (differentiable), 0 where action_mask is 0
    values: Tensor | None = None  # [B, C] float32 V(s_t), 0 where action_mask is 0


PolicyOutput = Scores  # the name this record had before `score`


def score(
    policy: nn.Module,
    rollout: Rollout,
    with_entropy: bool = False,
    with_values: bool = False,
    detach_value_trunk: bool = False,
) -> Scores:
    """`policy`'s forward on a rollout's episodes: a `Policy`, or one wrapped by accelerate / DeepSpeed (called
    through the wrapper, so its gradient hooks fire). Temperature and group size are the rollout's own."""
    r = rollout
    return policy(
        r.prompt_ids,
        r.prompt_mask,
        r.completion_ids,
        r.completion_mask,
        r.temperature,
        with_entropy,
        group_size=r.group_size,
        with_values=with_values,
        detach_value_trunk=detach_value_trunk,
        action_mask=r.action_mask,
    )


class Policy(nn.Module):
    """A PEFT causal LM; `forward` scores completion tokens given prompt + completion."""

    def __init__(
        self,
        model: nn.Module,
        value_model: nn.Module | None = None,
        chunk_tokens: int = 1024,
        bucket_overhead: int = RUN_OVERHEAD_TOKENS,
        lora_in_base: bool = False,
    ):
        super().__init__()
        self.model = model
        self.lora_in_base = lora_in_base  # adapters' matmuls in the base's dtype (model.lora.compute_dtype: base)
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
        """The transformers model (with LoRA layers injected, when the model is a PEFT one)."""
        get_base = getattr(self.model, "get_base_model", None)
        return get_base() if get_base is not None else self.model

    def states(
        self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, completion_mask: Tensor, group_size: int
    ) -> Tensor:
        """[B, C, H] hidden states that predict each completion token (`completion_states`), the prompt shared per
        group where the rows allow it."""
        share = shares_prompts(prompt_ids, prompt_mask, group_size, self.base)
        with lora_in_base_dtype(self.model) if self.lora_in_base else contextlib.nullcontext():
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
        action_mask: Tensor | None = None,  # [B, C]: tokens the policy sampled; None = completion_mask
    ) -> Scores:
        """Log-probs of the completion tokens (and, with_values, V(s_t) of each completion token's state).

        With group_size G > 1 and each run of G rows sharing one prompt, the prompt is encoded once per group and its
        keys/values are shared by the G completions (gradients from all G flow back into it): the same numbers as
        encoding it G times, for a fraction of the work. detach_value_trunk stops the value loss at the value head's
        input (critic warm-up, TRPO), so it trains only the head when the trunk is shared. Tokens outside action_mask
        (inserted by an environment) are read as context but get no log-prob, entropy or value."""
        h = self.states(prompt_ids, prompt_mask, completion_ids, completion_mask, group_size)
        scored = completion_mask if action_mask is None else action_mask
        mask = scored.bool()
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
                values = (
                    self.value_model(
                        prompt_ids, prompt_mask, completion_ids, completion_mask, group_size, self.bucket_overhead
                    )
                    * scored
                )
            else:
                values = self.value_model(h.detach() if detach_value_trunk else h) * scored
        return Scores(logprobs, entropy, values)

    def score(
        self, rollout: Rollout, with_entropy: bool = False, with_values: bool = False, detach_value_trunk: bool = False
    ) -> Scores:
        """Log-probs (and entropy, values) of a rollout's action tokens: `score(self, rollout, ...)`."""
        return score(self, rollout, with_entropy, with_values, detach_value_trunk)

    def full_logprobs(self, rollout: Rollout) -> Tensor:
        """[N, V] float32 log-softmax over the whole vocabulary at the rollout's N action tokens (mask order), for
        exact KL between two policies (TRPO). Materialises N x V: for small batches only."""
        r = rollout
        h = self.states(r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask, r.group_size)
        weight = self.base.get_output_embeddings().weight
        logits = h[r.action_mask.bool()].float() @ weight.float().T
        return torch.log_softmax(logits / r.temperature, dim=-1)
