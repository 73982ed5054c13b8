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
        group_size: int = 1,
    ) -> PolicyOutput:
        """Log-probs of the completion tokens. With group_size G > 1 and each run of G rows sharing one prompt, the
        prompt is encoded once per group and its keys/values are shared by the G completions (gradients from all G
        flow back into it): the same numbers as encoding it G times, for a fraction of the work."""
        base = self.base
        decoder = base.get_decoder()
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1).long()
        position_ids = position_ids_from_mask(attention_mask)
        P, C = prompt_ids.shape[1], completion_ids.shape[1]
        if self._shares_prompts(prompt_ids, prompt_mask, group_size):
            G = group_size
            first = decoder(
                input_ids=prompt_ids[::G],
                attention_mask=prompt_mask[::G].long(),
                position_ids=position_ids[::G, :P],
                use_cache=True,
            )
            cache = first.cache
            cache.batch_repeat_interleave(G)
            rest = decoder(
                input_ids=completion_ids,
                attention_mask=attention_mask,
                position_ids=position_ids[:, P:],
                cache=cache,
                use_cache=True,
            ).last_hidden_state
            # the prompt's last state predicts the first completion token; completion states predict the rest
            h = torch.cat([first.last_hidden_state[:, -1:].repeat_interleave(G, dim=0), rest[:, : C - 1]], dim=1)
        else:
            hidden = decoder(
                input_ids=torch.cat([prompt_ids, completion_ids], dim=1),
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            ).last_hidden_state
            # hidden state at position i predicts token i + 1: the completion is predicted from P - 1 .. P + C - 2
            h = hidden[:, P - 1 : P + C - 1]
        mask = completion_mask.bool()
        weight = base.get_output_embeddings().weight
        lp, ent = token_logprobs(
            h[mask], weight, completion_ids[mask], temperature, self.chunk_tokens, with_entropy=with_entropy
        )
        logprobs = h.new_zeros(mask.shape, dtype=torch.float32).masked_scatter(mask, lp)
        entropy = None
        if ent is not None:
            entropy = torch.zeros_like(logprobs).masked_scatter(mask, ent)
        return PolicyOutput(logprobs, entropy)

    def _shares_prompts(self, prompt_ids: Tensor, prompt_mask: Tensor, group_size: int) -> bool:
        B = prompt_ids.shape[0]
        checkpointed = getattr(self.base, "is_activation_checkpointing", None)
        if checkpointed is None:
            checkpointed = getattr(self.base, "is_gradient_checkpointing", False)
        if group_size <= 1 or B % group_size or checkpointed:
            return False  # checkpointed layers do not keep a cache
        ids = prompt_ids.view(B // group_size, group_size, -1)
        masks = prompt_mask.view(B // group_size, group_size, -1)
        return bool((ids == ids[:, :1]).all() and (masks == masks[:, :1]).all())
