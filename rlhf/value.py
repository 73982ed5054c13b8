"""Value models for PPO, actor-critic and TRPO: a scalar head on the policy's trunk, or a separate critic.

Where values are read: V(s_t) for completion token t is computed from the last hidden state that predicts token t
(it has seen the prompt and the completion before t), the same state whose output-head row gives log pi(token t).
So V(s_0) is read at the prompt's last token and the state after the last completion token is never read: the
episode ends there and GAE takes its value as 0.

Value dtype: the head is float32 and the hidden state is cast to float32 before it, whatever the trunk's dtype.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from rlhf.states import RUN_OVERHEAD_TOKENS, completion_states, shares_prompts

log = logging.getLogger("rlhf")


class ValueHead(nn.Module):
    """V = w . h + b in float32. Initialised to zero: V is 0 everywhere at step 0, so the first advantages are the
    plain (whitened) returns, and the head sends no gradient into a shared trunk until it has learned something."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1, dtype=torch.float32)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:  # [..., H] -> [...] float32
        return self.linear(hidden.float()).squeeze(-1)


class Critic(nn.Module):
    """A separate value model: its own transformer trunk (frozen base + its own LoRA) and a ValueHead."""

    def __init__(self, trunk: nn.Module, head: ValueHead):
        super().__init__()
        self.trunk = trunk  # a PEFT model around a bare decoder (no LM head)
        self.head = head

    def forward(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        completion_ids: Tensor,
        completion_mask: Tensor,
        group_size: int = 1,
        bucket_overhead: int | None = None,
    ) -> Tensor:  # [B, C] float32, 0 where completion_mask is 0
        """bucket_overhead: see rlhf.policy.length_buckets (None: its default); the policy passes its own."""
        if bucket_overhead is None:
            bucket_overhead = RUN_OVERHEAD_TOKENS
        decoder = self.trunk.get_base_model()
        share = shares_prompts(prompt_ids, prompt_mask, group_size, decoder)
        h = completion_states(
            decoder, prompt_ids, prompt_mask, completion_ids, completion_mask, group_size, share, bucket_overhead
        )
        return self.head(h) * completion_mask


def load_critic(
    path: str,
    dtype: str = "auto",
    lora_r: int = 16,
    lora_alpha: float = 32.0,
    lora_dropout: float = 0.0,
    target_modules: list[str] | str = "all-linear",
    init_from: str | None = None,
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
) -> Critic:
    """A critic on the policy's base model (`path`), or on a trained reward model (`init_from`, a directory written
    by `reward_models.train_rm`: its trunk, and its score row as the head's weight, so V starts as the reward
    model's score of each prefix). LoRA adapters in float32 on a `dtype` trunk."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    from rlhf.dtypes import torch_dtype
    from rlhf.models import add_lora, enable_checkpointing, resolve_model_path

    if init_from:
        try:
            rm = AutoModelForSequenceClassification.from_pretrained(
                resolve_model_path(init_from), dtype=torch.float32, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as e:
            raise ValueError(
                f"value.init_from={init_from!r} is not a reward model directory ({e}); give the `model/` directory "
                "written by `python -m reward_models.train_rm`"
            ) from e
        if rm.config.num_labels != 1:
            raise ValueError(f"value.init_from={init_from!r} has num_labels={rm.config.num_labels}; a critic needs 1")
        score = next(getattr(rm, n) for n in ("score", "classifier") if hasattr(rm, n))
        trunk = rm.base_model.to(torch_dtype(dtype))
        head = ValueHead(trunk.config.hidden_size)
        with torch.no_grad():
            head.linear.weight.copy_(score.weight.float())
            if getattr(score, "bias", None) is not None:
                head.linear.bias.copy_(score.bias.float())
        log.info("critic initialised from the reward model %s", init_from)
    else:
        trunk = AutoModel.from_pretrained(
            resolve_model_path(path), dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code
        )
        head = ValueHead(trunk.config.hidden_size)
    if gradient_checkpointing:
        enable_checkpointing(trunk)
    return Critic(add_lora(trunk, lora_r, lora_alpha, lora_dropout, target_modules), head)
