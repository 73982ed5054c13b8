"""Step 6 of the loop: mu passes over the step's episodes, each split into minibatches, one optimizer step each, with
gradient accumulation over micro-batches (the clipped-minibatch update of PPO, GRPO and their kin).

`Updater.__call__` is the algorithm; the token counts that make every rank and micro-batch divide by the same global
count, the non-finite guard and the metric sums are the helpers below it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor

from rlhf.batch import StepBatch
from rlhf.distributed import all_max, all_sum, is_deepspeed
from rlhf.losses import masked_mean
from rlhf.objective import LossTerms, Minibatch, UpdateSettings, micro_batch_loss
from rlhf.offpolicy import rollout_mismatch
from rlhf.policy import Scores, score

__all__ = ["MetricSums", "StepGuard", "UpdateSettings", "Updater", "zero_lr"]


@contextlib.contextmanager
def zero_lr(optimizer, active: bool):
    """Inside the block every parameter group's learning rate is 0 (when active); restored after."""
    saved = [g["lr"] for g in optimizer.param_groups] if active else []
    for g in optimizer.param_groups if active else []:
        g["lr"] = 0.0
    try:
        yield
    finally:
        for g, lr in zip(optimizer.param_groups, saved):
            g["lr"] = lr


class Updater:
    """Holds the policy (as accelerate / DeepSpeed wrapped it), its optimizer and schedule; on_step() is called after
    every optimizer step (the rollout engine's weights_updated)."""

    def __init__(
        self, accelerator, policy, optimizer, scheduler, settings: UpdateSettings, on_step: Callable[[], None]
    ):
        self.acc, self.policy, self.optimizer, self.scheduler = accelerator, policy, optimizer, scheduler
        self.s, self.on_step = settings, on_step
        self.is_deepspeed = is_deepspeed(accelerator)

    def __call__(self, batch: StepBatch, warmup: bool = False) -> dict[str, float]:
        """mu passes over the batch; each pass splits it into minibatches, one optimizer step each. With a value
        model the loss adds value_coef * the clipped value loss; during warm-up the policy loss is multiplied by 0
        (kept in the graph so every rank's backward has the same shape) and a shared trunk gets no value gradient."""
        s, acc = self.s, self.acc
        per_mb = len(batch.advantages) // s.num_minibatches
        sums, steps = MetricSums(acc), StepGuard(acc, self.optimizer, self.is_deepspeed)
        self.policy.train()
        for _ in range(s.num_iterations):
            for m in range(s.num_minibatches):
                minibatch = batch.rows(slice(m * per_mb, (m + 1) * per_mb))
                # every micro-batch divides by the whole minibatch's token (or sequence) count over all ranks; DDP
                # averages over ranks and accelerate divides by the accumulation count, so scale both back
                counts = Minibatch(all_sum(acc, minibatch.loss_mask.sum()).item(), per_mb * acc.num_processes, warmup)
                mb_kl = 0.0
                for start in range(0, per_mb, s.micro_batch_size):
                    mb = minibatch.rows(slice(start, start + s.micro_batch_size)).trimmed()
                    mb_kl += self.micro_batch(mb, counts, sums, steps)
                sums.passes += 1
                # early stop (target_kl): this minibatch moved the policy too far from the rollout policy
                if s.target_kl is not None and all_sum(acc, mb_kl).item() / max(counts.num_tokens, 1.0) > s.target_kl:
                    return sums.metrics(steps, self.scheduler, s, warmup, early_stop=True)
        return sums.metrics(steps, self.scheduler, s, warmup, early_stop=False)

    def micro_batch(self, mb: StepBatch, counts: Minibatch, sums: MetricSums, steps: StepGuard) -> float:
        """Score, loss, backward (and, at the end of an accumulation window, step); returns the micro-batch's
        token-weighted approx_kl."""
        s, acc = self.s, self.acc
        with acc.accumulate(self.policy):
            scores = score(self.policy, mb.rollout, True, s.uses_value, detach_value_trunk=counts.warmup)
            total, terms = micro_batch_loss(scores, mb, s, counts)
            total = steps.guard(total, scores)
            scale = acc.num_processes * acc.gradient_accumulation_steps
            if steps.backward_and_step(total * scale, self.policy, self.scheduler, s.max_grad_norm):
                self.on_step()
        w = sums.micro_batch(mb, scores, terms)
        if sums.passes < s.num_minibatches:  # the first pass: pre-update log-probs vs the sampler's
            sums.mismatch(terms.old_logprobs, mb.rollout.logprobs, mb.loss_mask)
        return terms.policy_metrics["approx_kl"].item() * w


class StepGuard:
    """Optimizer steps that a non-finite loss or gradient cannot corrupt, with every rank in lockstep.

    A micro-batch whose loss is not finite is replaced by a zero loss still attached to the graph (so every rank's
    backward has the same shape); the optimizer step of its minibatch is then skipped on every rank. DeepSpeed steps
    inside backward(), so there the step is taken with a learning rate of 0 and Adam's moments cannot move weights."""

    def __init__(self, accelerator, optimizer, is_deepspeed: bool):
        self.acc, self.optimizer, self.is_deepspeed = accelerator, optimizer, is_deepspeed
        self.bad_micro = self.skipped = self.updates = 0
        self.grad_norms: list[float] = []

    def guard(self, total: Tensor, scores: Scores) -> Tensor:
        if torch.isfinite(total):
            return total
        self.bad_micro += 1
        return scores.logprobs.sum() * 0.0 + (0.0 if scores.values is None else scores.values.sum() * 0.0)

    def backward_and_step(self, loss: Tensor, policy, scheduler, max_grad_norm: float) -> bool:
        """Backward; at the end of an accumulation window, clip and step unless any rank saw a non-finite value.
        Returns whether the optimizer stepped."""
        acc = self.acc
        any_bad = acc.sync_gradients and all_sum(acc, self.bad_micro).item() > 0
        with zero_lr(self.optimizer, self.is_deepspeed and any_bad):
            acc.backward(loss)
        if not acc.sync_gradients:
            return False
        gn = torch.tensor(0.0)
        if max_grad_norm > 0:
            gn = acc.clip_grad_norm_(policy.parameters(), max_grad_norm)
        stepped = not (any_bad or not torch.isfinite(torch.as_tensor(gn)))
        if not stepped:
            self.skipped += 1
        else:
            if max_grad_norm > 0:
                self.grad_norms.append(float(gn))
            self.optimizer.step()
            scheduler.step()
            self.updates += 1
        self.optimizer.zero_grad()
        self.bad_micro = 0
        return stepped


class MetricSums:
    """Token-weighted sums of the update's metrics on this rank, reduced over ranks at the end."""

    KEYS = ("loss/policy", "loss/kl", "loss/value", "policy/clipfrac", "policy/approx_kl", "policy/entropy")

    def __init__(self, accelerator):
        self.acc = accelerator
        self.sums = dict.fromkeys((*self.KEYS, "value/clipfrac", "policy/rollout_logprob_gap"), 0.0)
        self.tokens, self.passes = 0.0, 0
        self.extra: dict[str, float] = {}  # token-weighted sums of loss-specific metrics (tis/*)
        self.extra_tokens = 0.0
        self.mismatch_tokens, self.mismatch_sums, self.mismatch_max = 0.0, [0.0, 0.0], 0.0

    def add(self, key: str, value: float) -> None:
        self.sums[key] += value

    def weighted(self, means: dict, weight: float) -> None:
        """Add metric means (scalar tensors) weighted by a token count; reported as token-weighted means."""
        for key, value in means.items():
            self.extra[key] = self.extra.get(key, 0.0) + float(value) * weight
        self.extra_tokens += weight

    def mismatch(self, old: Tensor, behaviour: Tensor, mask: Tensor) -> None:
        """How far the trainer's pre-update log-probs are from the sampler's on the same tokens."""
        m = rollout_mismatch(old.detach(), behaviour, mask)
        n = mask.sum().item()
        self.mismatch_tokens += n
        self.mismatch_sums[0] += m["rollout/mismatch_abs_mean"].item() * n
        self.mismatch_sums[1] += m["rollout/mismatch_kl"].item() * n
        self.mismatch_max = max(self.mismatch_max, m["rollout/mismatch_abs_max"].item())

    def micro_batch(self, mb: StepBatch, scores: Scores, terms: LossTerms) -> float:
        """Add one micro-batch's numbers; returns its token count."""
        w = mb.loss_mask.sum().item()
        if terms.tis is not None:
            self.weighted(terms.tis, w)
        if terms.value_clipfrac is not None:
            self.sums["value/clipfrac"] += terms.value_clipfrac.item() * w
        self.tokens += w
        for key, t in (("loss/policy", terms.policy), ("loss/kl", terms.kl), ("loss/value", terms.value)):
            self.sums[key] += torch.nan_to_num(t.detach(), nan=0.0).item()
        pg = terms.policy_metrics
        self.sums["policy/clipfrac"] += pg["clipfrac"].item() * w
        self.sums["policy/approx_kl"] += pg["approx_kl"].item() * w
        self.sums["policy/entropy"] += masked_mean(scores.entropy, mb.loss_mask).item() * w
        gap = ((scores.logprobs.detach() - mb.rollout.logprobs).abs()) * mb.loss_mask
        self.sums["policy/rollout_logprob_gap"] += gap.sum().item()
        return w

    def metrics(self, steps: StepGuard, scheduler, s: UpdateSettings, warmup: bool, early_stop: bool) -> dict:
        total = lambda key: all_sum(self.acc, self.sums[key]).item()
        tokens = max(all_sum(self.acc, self.tokens).item(), 1.0)
        m = {
            "loss/policy": total("loss/policy") / self.passes,
            "loss/kl": total("loss/kl") / self.passes,
            "policy/clipfrac": total("policy/clipfrac") / tokens,
            "policy/approx_kl": total("policy/approx_kl") / tokens,
            "policy/entropy": total("policy/entropy") / tokens,
            "policy/rollout_logprob_gap": total("policy/rollout_logprob_gap") / tokens,
            "optim/lr": scheduler.get_last_lr()[0],
            "optim/updates": steps.updates,
            "optim/skipped_steps": steps.skipped,
        }
        if s.uses_value:
            m["loss/value"] = total("loss/value") / self.passes
            m["value/clipfrac"] = total("value/clipfrac") / tokens
            m["value/warmup"] = float(warmup)
        if s.target_kl is not None:
            m["policy/early_stopped"] = float(early_stop)
        if steps.grad_norms:
            m["optim/grad_norm"] = sum(steps.grad_norms) / len(steps.grad_norms)
        n = max(all_sum(self.acc, self.mismatch_tokens).item(), 1.0)
        m["rollout/mismatch_abs_mean"] = all_sum(self.acc, self.mismatch_sums[0]).item() / n
        m["rollout/mismatch_kl"] = all_sum(self.acc, self.mismatch_sums[1]).item() / n
        m["rollout/mismatch_abs_max"] = all_max(self.acc, self.mismatch_max)
        if self.extra:
            n_extra = max(all_sum(self.acc, self.extra_tokens).item(), 1.0)
            m.update({k: all_sum(self.acc, v).item() / n_extra for k, v in self.extra.items()})
        return m
