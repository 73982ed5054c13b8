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
from rlhf.states import RUN_OVERHEAD_TOKENS, completion_states, length_buckets, shares_prompts
from rlhf.value import Critic

__all__ = ["RUN_OVERHEAD_TOKENS", "Policy", "PolicyOutput", "completion_states", "length_buckets", "shares_prompts"]


@dataclass
class PolicyOutput:
    logprobs: Tensor  # [B, C] float32, 0 where action_mask is 0
    entropy: Tensor | None  # [B, C] float32 (differentiable), 0 where action_mask is 0
    values: Tensor | None = None  # [B, C] float32 V(s_t), 0 where action_mask is 0


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
    ) -> PolicyOutput:
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
        return PolicyOutput(logprobs, entropy, values)

    def full_logprobs(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        completion_ids: Tensor,
        completion_mask: Tensor,
        temperature: float = 1.0,
        group_size: int = 1,
        action_mask: Tensor | None = None,
    ) -> Tensor:
        """[N, V] float32 log-softmax over the whole vocabulary at the N action tokens (mask order; action_mask None =
        completion_mask), for exact KL between two policies (TRPO). Materialises N x V: for small batches only."""
        h = self.states(prompt_ids, prompt_mask, completion_ids, completion_mask, group_size)
        weight = self.base.get_output_embeddings().weight
        scored = completion_mask if action_mask is None else action_mask
        logits = h[scored.bool()].float() @ weight.float().T
        return torch.log_softmax(logits / temperature, dim=-1)
