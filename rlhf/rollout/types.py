"""What every rollout engine returns: a `Rollout` of B = prompts x G episodes, and the `SamplingParams` it was asked
for.

An episode is everything after the prompt: the tokens the policy sampled and, in multi-turn episodes, tokens something
else inserted (tool output, user turns). `completion_mask` marks the episode's real tokens (the attention mask after the
prompt); `action_mask` marks the sampled ones, the only tokens that carry a loss, an entropy, a KL term or a value
target. In a single-turn rollout the two are equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0  # ignored when greedy
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    stop: list[str] = field(default_factory=list)
    # the sampler's random numbers (None: torch's global generator); a rollout worker thread brings its own, seeded
    # per batch, so that its draws neither race with the trainer's nor depend on when it runs
    generator: torch.Generator | None = None

    @property
    def logprob_temperature(self) -> float:
        """The temperature behaviour log-probs are taken at: 1 for greedy decoding, else the sampling temperature."""
        return 1.0 if self.greedy else self.temperature


@dataclass
class Rollout:
    """Episodes for B = prompts x group_size sequences (rows of one prompt are consecutive)."""

    prompt_ids: Tensor  # [B, P] long, left-padded
    prompt_mask: Tensor  # [B, P] long
    completion_ids: Tensor  # [B, C] long: the episode after the prompt, pad after its end
    completion_mask: Tensor  # [B, C] long: 1 on the episode's tokens (sampled or inserted), incl. the final EOS / stop
    logprobs: Tensor  # [B, C] float32 behaviour log-probs of sampled tokens at `temperature`, 0 where ~action_mask
    truncated: Tensor  # [B] bool: hit the token budget without EOS or stop
    texts: list[str]  # decoded episodes, special tokens removed (multi-turn: kept, so the turns stay visible)
    group_size: int = 1  # G: completions per prompt
    temperature: float = 1.0  # the sampling temperature the behaviour log-probs were taken at
    action_mask: Tensor | None = None  # [B, C] long: 1 on tokens the policy sampled; None = completion_mask

    def __post_init__(self) -> None:
        if self.action_mask is None:
            self.action_mask = self.completion_mask

    @property
    def lengths(self) -> Tensor:
        """[B] episode lengths in tokens (sampled and inserted)."""
        return self.completion_mask.sum(-1)

    def rows(self, idx: slice | Tensor) -> Rollout:
        """The episodes at `idx` (group size and temperature kept: they describe how the batch was sampled)."""
        texts = self.texts[idx] if isinstance(idx, slice) else [self.texts[i] for i in idx.tolist()]
        return replace(
            self,
            prompt_ids=self.prompt_ids[idx],
            prompt_mask=self.prompt_mask[idx],
            completion_ids=self.completion_ids[idx],
            completion_mask=self.completion_mask[idx],
            logprobs=self.logprobs[idx],
            truncated=self.truncated[idx],
            texts=texts,
            action_mask=self.action_mask[idx],
        )

    def columns(self, first_prompt: int, width: int) -> Rollout:
        """Prompt columns from `first_prompt` on and the first `width` episode columns (to drop all-padding ones)."""
        return replace(
            self,
            prompt_ids=self.prompt_ids[:, first_prompt:],
            prompt_mask=self.prompt_mask[:, first_prompt:],
            completion_ids=self.completion_ids[:, :width],
            completion_mask=self.completion_mask[:, :width],
            logprobs=self.logprobs[:, :width],
            action_mask=self.action_mask[:, :width],
        )


def _pad_right(t: Tensor, width: int, value: float) -> Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) if t.shape[1] < width else t


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Join rollouts generated in chunks: prompts are re-left-padded, episodes re-right-padded."""
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
        group_size=parts[0].group_size,
        temperature=parts[0].temperature,
        action_mask=torch.cat([_pad_right(r.action_mask, C, 0) for r in parts]),
    )
