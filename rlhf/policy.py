"""The trainable policy as one nn.Module whose forward returns completion log-probabilities.

Wrapping the LoRA model this way lets accelerate/DeepSpeed wrap a module whose forward is exactly the computation we
differentiate, so gradient synchronisation hooks fire, and the output head runs only where it is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rlhf.logprobs import position_ids_from_mask, token_logprobs
from rlhf.value import Critic


@dataclass
class PolicyOutput:
    logprobs: Tensor  # [B, C] float32, 0 where completion_mask is 0
    entropy: Tensor | None  # [B, C] float32 (detached), 0 where masked
    values: Tensor | None = None  # [B, C] float32 V(s_t), 0 where completion_mask is 0


class Policy(nn.Module):
    """A PEFT causal LM; `forward` scores completion tokens given prompt + completion."""

    def __init__(self, model: nn.Module, value_model: nn.Module | None = None, chunk_tokens: int = 1024):
        super().__init__()
        self.model = model
        # inside this module so accelerate/DeepSpeed wrap, shard and synchronise it with the policy's adapter
        self.value_model = value_model
        self.chunk_tokens = chunk_tokens

    def policy_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the policy alone (LoRA), without the value model's."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def value_parameters(self) -> list[nn.Parameter]:
        return [] if self.value_model is None else [p for p in self.value_model.parameters() if p.requires_grad]

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
        with_values: bool = False,
        detach_value_trunk: bool = False,
    ) -> PolicyOutput:
        """Log-probs of the completion tokens (and, with_values, V(s_t) of each completion token's state).

        With group_size G > 1 and each run of G rows sharing one prompt, the prompt is encoded once per group and its
        keys/values are shared by the G completions (gradients from all G flow back into it): the same numbers as
        encoding it G times, for a fraction of the work. detach_value_trunk stops the value loss at the value head's
        input (critic warm-up, TRPO), so it trains only the head when the trunk is shared."""
        share = shares_prompts(prompt_ids, prompt_mask, group_size, self.base)
        h = completion_states(
            self.base.get_decoder(), prompt_ids, prompt_mask, completion_ids, completion_mask, group_size, share
        )
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
                values = self.value_model(prompt_ids, prompt_mask, completion_ids, completion_mask, group_size)
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
        share = shares_prompts(prompt_ids, prompt_mask, group_size, self.base)
        h = completion_states(
            self.base.get_decoder(), prompt_ids, prompt_mask, completion_ids, completion_mask, group_size, share
        )
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


def completion_states(
    decoder: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    group_size: int,
    share_prompts: bool,
) -> Tensor:
    """[B, C, H] last hidden states that predict each completion token: state t has seen the prompt and completion
    tokens before t (position P - 1 + t of the concatenated sequence). With share_prompts, each run of group_size
    rows has one prompt, encoded once and its cache repeated."""
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1).long()
    position_ids = position_ids_from_mask(attention_mask)
    P, C = prompt_ids.shape[1], completion_ids.shape[1]
    if share_prompts:
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
        return torch.cat([first.last_hidden_state[:, -1:].repeat_interleave(G, dim=0), rest[:, : C - 1]], dim=1)
    hidden = decoder(
        input_ids=torch.cat([prompt_ids, completion_ids], dim=1),
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
    ).last_hidden_state
    return hidden[:, P - 1 : P + C - 1]
