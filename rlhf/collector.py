"""Steps 1-4 of a training step: prompts -> episodes -> rewards -> (dynamic sampling's filter and refills) -> the
log-probs and values the estimator and the update read, returned as one `StepRecord`.

`Collector.collect(policy)` needs nothing from the trainer but the policy that scores the episodes. The two halves
also run apart: `draw_prompts` (steps 1-3, no collective) on a rollout worker ahead of the update, and `complete`
(step 4 and the sums over ranks) on the trainer's thread when the record is handed over (`rlhf.async_rollout`).
The engine generates from its own copy of the weights, synchronised by `weights_updated()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rlhf.batch import trimmed_rollout
from rlhf.distributed import all_sum
from rlhf.dynamic_sampling import Draw, DynamicSampling
from rlhf.models import reference_policy
from rlhf.policy import score
from rlhf.rewards import score_rollout
from rlhf.rollout import Rollout, SamplingParams
from rlhf.rollout.episodes import EpisodeRunner, Episodes
from rlhf.step_record import StepRecord


@dataclass(frozen=True)
class CollectorSettings:
    """What steps 1-4 read, as plain values (built once from the recipe and the algorithm's row)."""

    prompts_per_draw: int  # prompts of one draw over all ranks (train.prompts_per_step x algorithm.num_minibatches)
    num_generations: int  # G
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    micro_batch_size: int = 32  # rows per scoring forward
    mask_truncated: bool = False  # truncated episodes get no loss
    reference: bool = False  # beta > 0: the reference's log-probs
    old_logprobs: bool = False  # the update is not exactly on-policy: log-probs before it
    values: bool = False  # value-model rows: V(s_t) at rollout time (with the old log-probs, one forward)
    env_reward_weight: float = 1.0  # an environment's reward adds with this weight

    def sampling(self, generator: torch.Generator | None = None) -> SamplingParams:
        return SamplingParams(
            self.max_new_tokens, self.temperature, self.top_p, self.top_k, False, list(self.stop), generator
        )


# a record input a row adds: (the collector, the step's episodes) -> [B] or [B, C]
InputFn = Callable[["Collector", Rollout], Tensor]


class Collector:
    """This rank's share of each step's episodes, scored. `policy` scores the old log-probs and values;
    `peft_model` is its LoRA model (the reference is it with the adapter disabled); `teacher` a frozen Policy."""

    def __init__(
        self,
        settings: CollectorSettings,
        accelerator,
        sampler,
        prompt_set,
        engine,
        reward_fns: list,
        policy: nn.Module,
        peft_model: nn.Module,
        episodes: EpisodeRunner | None = None,
        teacher: nn.Module | None = None,
        dynamic: DynamicSampling | None = None,
        inputs: Mapping[str, InputFn] | None = None,
        tokenizer=None,
    ):
        self.s, self.acc, self.sampler, self.prompt_set = settings, accelerator, sampler, prompt_set
        self.engine, self.reward_fns, self.episodes = engine, reward_fns, episodes
        self.policy, self.peft_model, self.teacher = policy, peft_model, teacher
        self.dynamic, self.inputs, self.tokenizer = dynamic, dict(inputs or {}), tokenizer

    def collect(self, policy: nn.Module | None = None) -> StepRecord:
        """Steps 1-4: episodes and rewards (drawn again while dynamic sampling lacks informative groups), then the
        reference, pre-update and teacher log-probs and the rollout-time values, each only when the step needs it.
        `policy` scores the pre-update log-probs and values (default: the collector's own)."""
        d, metrics = (self.draw(), {}) if self.dynamic is None else self.dynamic(self.draw)
        return self.complete(d, metrics, policy)

    def complete(
        self, d: Draw, metrics: dict, policy: nn.Module | None = None, old: Tensor | None = None
    ) -> StepRecord:
        """Step 4 on drawn episodes, and the step's numbers summed over ranks. `old` [B, C]: old log-probs already
        taken where the episodes were sampled (asynchronous rollouts: the sampling version's), used instead of the
        pre-update ones; values are still scored here, by the current value model."""
        acc, s = self.acc, self.s
        roll = d.rollout
        metrics["time/rollout"], metrics["time/reward"] = d.time_rollout, d.time_reward
        gen_tokens = all_sum(acc, roll.action_mask.sum()).item()
        metrics["throughput/gen_tokens_per_s"] = gen_tokens / max(metrics["time/rollout"], 1e-9) / acc.num_processes

        t0 = time.perf_counter()
        loss_mask = roll.action_mask.clone()
        if s.mask_truncated:
            loss_mask[roll.truncated] = 0
        if d.trainable is not None:  # groups that only fill the batch (dynamic sampling ran short)
            loss_mask[~d.trainable] = 0
        policy = self.policy if policy is None else policy
        ref = old = values = teacher = None
        if s.reference:
            with reference_policy(self.peft_model):
                ref, _ = self.scored(roll, policy)
        if s.values:
            current, values = self.scored(roll, policy, values=True)
            old = current if old is None else old
        elif s.old_logprobs and old is None:  # on-policy: the update's own forward serves
            old, _ = self.scored(roll, policy)
        if self.teacher is not None:
            teacher, _ = self.scored(roll, self.teacher)
        extra = {name: fn(self, roll) for name, fn in self.inputs.items()}
        metrics["time/ref"] = time.perf_counter() - t0
        return StepRecord(
            roll, d.rewards, d.per_fn, d.prompts, loss_mask, old, ref, values, teacher, extra, d.episode_stats, metrics,
            tuple(d.prompt_ids),
        )  # fmt: skip

    def draw(self, prompts: int = 0) -> Draw:
        """Steps 1-3 once: this rank's share of `prompts` prompts (0: a step's batch; every rank draws the same global
        order and takes its own whole groups), their episodes and their rewards."""
        return self.draw_prompts(self.sampler.take(prompts or self.s.prompts_per_draw))

    def draw_prompts(self, global_idx: list[int], generator: torch.Generator | None = None) -> Draw:
        """Steps 1-3 on prompts already drawn (global indices, the same list on every rank): this rank's whole groups,
        sampled with `generator` (None: torch's global one)."""
        acc = self.acc
        k = len(global_idx) // acc.num_processes
        prompt_idx = global_idx[acc.process_index * k : (acc.process_index + 1) * k]
        t0 = time.perf_counter()
        episodes = None
        if self.episodes is None:
            roll, ps = self.rollout(prompt_idx, generator)
        else:
            episodes, ps = self.run_episodes(prompt_idx, generator)
            roll = episodes.rollout
        t1 = time.perf_counter()
        rewards, per_fn, prompts = score_rollout(
            self.reward_fns, ps.texts, ps.columns, roll, roll.group_size, prompt_messages=ps.prompt_messages,
            **({} if episodes is None else self.episode_scoring(episodes)),
        )  # fmt: skip
        if episodes is not None:
            episodes.close()  # after the rewards, which may read the environments
        stats = None if episodes is None else episodes.stats
        return Draw(
            roll, rewards, per_fn, prompts, t1 - t0, time.perf_counter() - t1, episode_stats=stats,
            prompt_ids=list(global_idx),
        )  # fmt: skip

    def episode_scoring(self, episodes: Episodes) -> dict:
        """What multi-turn episodes add to scoring: the functions score the last turn, the environment's reward adds
        with its weight, functions that take `environments` get the episodes' environments."""
        return episodes.scoring(self.s.env_reward_weight)

    def rollout(self, prompt_idx: list[int], generator: torch.Generator | None = None) -> tuple[Rollout, object]:
        """Step 2: G episodes for each of this rank's prompts, through the engine; (rollout, the prompts' rows)."""
        ps = self.prompt_set.select(prompt_idx)
        self.policy.eval()
        return self.engine.generate(ps.prompt_ids, self.s.num_generations, self.s.sampling(generator)), ps

    def run_episodes(self, prompt_idx: list[int], generator: torch.Generator | None = None) -> tuple[Episodes, object]:
        """Step 2 with an environment: G multi-turn episodes for each of this rank's prompts."""
        ps = self.prompt_set.select(prompt_idx)
        self.policy.eval()
        return self.episodes.run(self.engine, ps, self.s.num_generations, self.s.sampling(generator)), ps

    @torch.no_grad()
    def scored(self, roll: Rollout, model: nn.Module, values: bool = False) -> tuple[Tensor, Tensor | None]:
        """Step 4: [B, C] log-probs of the episodes under `model` (a Policy, wrapped or not), micro-batch by
        micro-batch with padding columns dropped; with values, also [B, C] V(s_t) from the same forward."""
        out = torch.zeros_like(roll.logprobs)
        vals = torch.zeros_like(out) if values else None
        mb = self.s.micro_batch_size
        for s in range(0, len(out), mb):
            part, _ = trimmed_rollout(roll.rows(slice(s, s + mb)))
            sc = score(model, part, with_values=values)
            out[s : s + mb, : sc.logprobs.shape[1]] = sc.logprobs
            if values:
                vals[s : s + mb, : sc.values.shape[1]] = sc.values.float()
        return out, vals
