"""The trainable policy as one nn.Module whose forward returns completion log-probabilities.

Wrapping the LoRA model this way lets accelerate/DeepSpeed wrap a module whose forward is exactly the computation we
differentiate, so gradient synchronisation hooks fire, and the output head runs only where it is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rlhf.logprobs import position_ids_from_mask, token_logprobs


@dataclass
class PolicyOutput:
    logprobs: Tensor  # [B, C] float32, 0 where completion_mask is 0
    entropy: Tensor | None  # [B, C] float32 (detached), 0 where masked


class Policy(nn.Module):
    """A PEFT causal LM; `forward` scores completion tokens given prompt + completion."""

    def __init__(self, model: nn.Module, chunk_tokens: int = 1024):
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens

    @property
    def base(self) -> nn.Module:
        """The transformers model (with LoRA layers injected), usable for cached decoding."""
        return self.model.get_base_model()

    def forward(
        self,
        prompt_ids: Tensor,  # [B, P] long, left-padded
        prompt_mask: Tensor,  # [B, P]
        completion_ids: Tensor,  # [B, C] long, right-padded
        completion_mask: Tensor,  # [B, C]
        temperature: float = 1.0,
        with_entropy: bool = False,
    ) -> PolicyOutput:
        base = self.base
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1).long()
        hidden = base.get_decoder()(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state
        # hidden state at position i predicts token i + 1: the completion is predicted from P - 1 .. P + C - 2
        P, C = prompt_ids.shape[1], completion_ids.shape[1]
        h = hidden[:, P - 1 : P + C - 1]
        mask = completion_mask.bool()
        weight = base.get_output_embeddings().weight
        lp, ent = token_logprobs(
            h[mask], weight, completion_ids[mask], temperature, self.chunk_tokens, with_entropy=with_entropy
        )
        logprobs = hidden.new_zeros(mask.shape, dtype=torch.float32).masked_scatter(mask, lp)
        entropy = None
        if ent is not None:
            entropy = torch.zeros_like(logprobs).masked_scatter(mask, ent)
        return PolicyOutput(logprobs, entropy)
