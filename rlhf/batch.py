"""A step's rollout with everything the update needs, sliced by rows (minibatches, micro-batches).

Built once per step from the collector's record and the estimator's advantages (`StepRecord.batch`)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from torch import Tensor

from rlhf.logprobs import common_left_padding
from rlhf.rollout.types import Rollout


def trimmed_rollout(r: Rollout) -> tuple[Rollout, int]:
    """The rollout without the columns that are padding in every row (prompt columns on the left, episode columns
    on the right), and its episode width C' (a micro-batch is often much shorter than the longest row)."""
    width = int(r.completion_mask.sum(-1).max().item()) or 1
    return r.columns(common_left_padding(r.prompt_mask), width), width


@dataclass
class StepBatch:
    """B episodes; per-token tensors are [B, C] over the episode columns."""

    rollout: Rollout
    advantages: Tensor  # [B, C] float32 per-token advantages
    loss_mask: Tensor  # [B, C] action tokens that train: the action mask, minus truncated rows when masked
    old_logprobs: Tensor | None = None  # [B, C] or None when the update is exactly on-policy
    ref_logprobs: Tensor | None = None  # [B, C] or None when beta == 0
    old_values: Tensor | None = None  # [B, C] V(s_t) at rollout time (value-model algorithms)
    returns: Tensor | None = None  # [B, C] value targets (GAE advantages + old values)
    teacher_logprobs: Tensor | None = None  # [B, C] a distillation teacher's log-probs of the sampled tokens

    def _map(self, rollout: Rollout, fn) -> StepBatch:
        tensors = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rollout"}
        return replace(self, rollout=rollout, **{k: None if t is None else fn(t) for k, t in tensors.items()})

    def rows(self, idx: slice) -> StepBatch:
        return self._map(self.rollout.rows(idx), lambda t: t[idx])

    def trimmed(self) -> StepBatch:
        """Drop columns that are padding in every row (`trimmed_rollout`); per-token tensors become [B, C']."""
        rollout, width = trimmed_rollout(self.rollout)
        return self._map(rollout, lambda t: t[:, :width])
