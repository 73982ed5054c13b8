"""The training loop of every algorithm, read top to bottom as numbered steps.

One step: (1) take this rank's prompts, (2) sample G completions each with the adapter merged, (3) score them,
(4) log-probs of the reference (beta > 0), of the policy before the update (when the update is not exactly
on-policy) and the rollout-time values (value-model algorithms), (5) advantages: group-normalised / leave-one-out /
Monte-Carlo returns for the grpo family, GAE on per-token rewards for ppo, actor_critic and trpo, (6) mu passes of
clipped-surrogate updates over minibatches with gradient accumulation (plus the value loss), or TRPO's trust-region
step, (7) log, evaluate, checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from rlhf import __version__
from rlhf.advantages import (
    batch_std_advantages,
    discounted_returns,
    gae,
    group_advantages,
    rloo_advantages,
    token_rewards,
    whiten,
)
from rlhf.checkpoint import load_checkpoint, resolve_resume, save_adapter, save_checkpoint
from rlhf.config import Config, ConfigError, check_world, save_config
from rlhf.data import PromptSampler, arithmetic_problems, build_prompt_set, left_pad, load_rows, rename_columns
from rlhf.distributed import (
    all_gather_cat,
    all_sum,
    configure_deepspeed,
    gathered_parameters,
    is_deepspeed,
    make_accelerator,
    zero_stage,
)
from rlhf.evaluation import greedy_eval
from rlhf.kl_control import KLController, RunningMoments
from rlhf.logprobs import common_left_padding
from rlhf.losses import (
    aggregate,
    clipped_pg_loss,
    clipped_value_loss,
    explained_variance,
    kl_penalty,
    masked_mean,
)
from rlhf.models import count_parameters, load_policy, load_tokenizer, merged_adapter, reference_policy
from rlhf.policy import RUN_OVERHEAD_TOKENS, Policy
from rlhf.rewards import build_reward_functions, score_rollout
from rlhf.rollout import Rollout, SamplingParams, generate_batched
from rlhf.run_utils import StopRequest, command_line, flat_config, lr_lambda, progress_bar, seed_everything
from rlhf.tracking import (
    MetricsWriter,
    available_trackers,
    console_line,
    format_samples,
    truncate_metrics_file,
)
from rlhf.trpo import trpo_update

log = logging.getLogger("rlhf")


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


# algorithms with a value model: GAE advantages on per-token rewards that carry the KL penalty
VALUE_ALGORITHMS = ("ppo", "actor_critic", "trpo")


def build_datasets(cfg: Config, tokenizer):
    """(train PromptSet, eval PromptSet or None)."""
    d = cfg.data
    if d.path == "arithmetic":
        a = d.arithmetic
        train_rows, eval_rows = arithmetic_problems(
            a.min_operand, a.max_operand, a.operators, a.num_train, a.num_eval, a.template, seed=cfg.seed
        )
    else:
        train_rows = load_rows(d.path, d.name, d.split)
        eval_rows = load_rows(d.path, d.name, cfg.eval.split) if cfg.eval.every else []
    fmt = dict(
        prompt_column=d.prompt_column,
        system_prompt=d.system_prompt,
        prompt_template=d.prompt_template,
        max_prompt_tokens=d.max_prompt_tokens,
    )
    train_rows, eval_rows = rename_columns(train_rows, d.rename_columns), rename_columns(eval_rows, d.rename_columns)
    train = build_prompt_set(train_rows, tokenizer, **fmt)
    evals = None
    if cfg.eval.every and eval_rows:
        if cfg.eval.num_samples:
            eval_rows = eval_rows[: cfg.eval.num_samples]
        evals = build_prompt_set(eval_rows, tokenizer, **fmt)
    return train, evals


@dataclass
class StepBatch:
    """A rollout with everything the update needs. Rows are sequences, [B, C] on completion tokens."""

    rollout: Rollout
    advantages: Tensor  # [B, C] float32 per-token advantages
    loss_mask: Tensor  # [B, C] completion mask, minus truncated rows when masked
    old_logprobs: Tensor | None = None  # [B, C] or None when the update is exactly on-policy
    ref_logprobs: Tensor | None = None  # [B, C] or None when beta == 0
    old_values: Tensor | None = None  # [B, C] V(s_t) at rollout time (value-model algorithms)
    returns: Tensor | None = None  # [B, C] value targets (GAE advantages + old values)

    def _map(self, rollout: Rollout, fn) -> StepBatch:
        opt = lambda t: None if t is None else fn(t)
        return StepBatch(
            rollout,
            fn(self.advantages),
            fn(self.loss_mask),
            opt(self.old_logprobs),
            opt(self.ref_logprobs),
            opt(self.old_values),
            opt(self.returns),
        )

    def rows(self, idx: slice) -> StepBatch:
        r = self.rollout
        sub = Rollout(
            r.prompt_ids[idx],
            r.prompt_mask[idx],
            r.completion_ids[idx],
            r.completion_mask[idx],
            r.logprobs[idx],
            r.truncated[idx],
            r.texts[idx],
        )
        return self._map(sub, lambda t: t[idx])

    def trimmed(self) -> StepBatch:
        """Drop columns that are padding in every row (a micro-batch is often much shorter than the longest row)."""
        r = self.rollout
        first = common_left_padding(r.prompt_mask)
        width = int(r.completion_mask.sum(-1).max().item()) or 1
        sub = Rollout(
            r.prompt_ids[:, first:],
            r.prompt_mask[:, first:],
            r.completion_ids[:, :width],
            r.completion_mask[:, :width],
            r.logprobs[:, :width],
            r.truncated,
            r.texts,
        )
        return self._map(sub, lambda t: t[:, :width])


class Trainer:
    def __init__(self, cfg: Config, recipe: str = "(config built in code)"):
        self.cfg = cfg
        self.recipe = recipe
        t = cfg.train
        self.out = Path(cfg.output_dir)
        # Sequences per rank per optimizer step and the micro-batches they split into fix the accumulation count.
        self.accelerator = make_accelerator(1, available_trackers(cfg.logging.report_to), str(self.out))
        acc = self.accelerator
        check_world(cfg, acc.num_processes)
        self.prompts_per_rank = t.prompts_per_step // acc.num_processes
        seqs = self.prompts_per_rank * cfg.rollout.num_generations
        self.micro_batches = math.ceil(seqs / t.micro_batch_size)
        acc.gradient_accumulation_steps = self.micro_batches
        configure_deepspeed(acc, self.micro_batches, cfg.optim.max_grad_norm)
        self.is_main = acc.is_main_process
        seed_everything(cfg.seed + acc.process_index)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "config.yaml")

        # data and rewards before the model, so their errors come in seconds
        m = cfg.model
        self.tokenizer = load_tokenizer(m.path, m.trust_remote_code)
        self.train_set, self.eval_set = build_datasets(cfg, self.tokenizer)
        self.reward_fns = build_reward_functions(cfg.rewards)
        self.sampler = PromptSampler(len(self.train_set), cfg.seed, cfg.data.shuffle)

        model = load_policy(
            m.path,
            m.dtype,
            m.lora.r,
            m.lora.alpha,
            m.lora.dropout,
            m.lora.target_modules,
            m.gradient_checkpointing,
            m.trust_remote_code,
        )
        n_train, n_all = count_parameters(model)
        log.info("policy %s: %.2fM trainable of %.1fM parameters", m.path, n_train / 1e6, n_all / 1e6)
        self.peft_model = model
        a = cfg.algorithm
        self.is_deepspeed = is_deepspeed(acc)
        if a.name == "trpo" and self.is_deepspeed:
            raise ConfigError(
                "algorithm.name=trpo takes its natural-gradient step outside the optimizer, which DeepSpeed owns; "
                "launch it single-process or with recipes/accelerate/ddp.yaml"
            )
        self.uses_value = a.name in VALUE_ALGORITHMS
        value_model = self.build_value_model(model) if self.uses_value else None
        o = cfg.optim
        # TRPO steps the policy itself; the optimizer then holds only the value parameters
        groups = [] if a.name == "trpo" else [{"params": [p for p in model.parameters() if p.requires_grad]}]
        if value_model is not None:
            groups.append({"params": [p for p in value_model.parameters() if p.requires_grad]})
            groups[-1]["lr"] = cfg.value.lr or o.lr
        optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        total_updates = t.max_steps * a.num_iterations * a.num_minibatches
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o.schedule, o.warmup_steps, total_updates))
        # The scheduler stays unprepared: accelerate's wrapper steps it once per process, which assumes a sharded
        # dataloader; here it steps once per optimizer step.
        # ZeRO-3 gathers each layer's weights in every forward call, as a collective: all ranks must make the same
        # number of calls, so rows are not split into length runs there (the split depends on each rank's lengths)
        bucket_overhead = -1 if zero_stage(acc) == 3 else RUN_OVERHEAD_TOKENS
        self.policy, self.optimizer = acc.prepare(
            Policy(model, value_model, bucket_overhead=bucket_overhead), optimizer
        )
        self.kl_ctl = KLController(a.beta, a.kl_target, a.kl_horizon)
        self.reward_stats = RunningMoments()
        self.scheduler = scheduler

        self.start_step = 0
        resume = resolve_resume(t.resume_from, self.out / "checkpoints")
        if resume is not None:
            # the value head / critic is restored with the adapter (trainable.safetensors)
            value = self.policy if self.uses_value else None
            state = load_checkpoint(
                resume, acc, self.peft_model, self.optimizer, self.scheduler, trainable_module=value
            )
            self.start_step = state["step"]
            self.sampler.load_state_dict(state["sampler"])
            if "kl_ctl" in state:
                self.kl_ctl.load_state_dict(state["kl_ctl"])
                self.reward_stats.load_state_dict(state["reward_stats"])
            log.info("resumed from %s at step %d", resume, self.start_step)
        if acc.log_with:
            acc.init_trackers("tracking", config=flat_config(cfg))
        if self.is_main and resume is not None:
            truncate_metrics_file(self.out / "metrics.jsonl", self.start_step)
        self.writer = MetricsWriter(self.out, acc, self.is_main, append=resume is not None)

    # ---------------------------------------------------------------------------------------------------------------
    @property
    def generation_model(self):
        return self.accelerator.unwrap_model(self.policy).base

    def rollout(self, prompt_idx: list[int]) -> tuple[Rollout, dict]:
        r = self.cfg.rollout
        ps = self.train_set.select(prompt_idx)
        ids, mask = left_pad(ps.prompt_ids, self.tokenizer.pad_token_id)
        params = SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k, False, list(r.stop))
        self.policy.eval()
        with gathered_parameters(self.accelerator, self.peft_model), merged_adapter(self.peft_model, r.merge_adapter):
            out = generate_batched(
                self.generation_model, self.tokenizer, ids, mask, r.num_generations, params, r.batch_size
            )
        return out, ps

    def policy_logprobs(
        self, batch: StepBatch, with_entropy: bool = False, with_values: bool = False, detach_value_trunk: bool = False
    ):
        b = batch.trimmed()
        r = b.rollout
        return self.policy(
            r.prompt_ids,
            r.prompt_mask,
            r.completion_ids,
            r.completion_mask,
            self.cfg.rollout.temperature,
            with_entropy,
            group_size=self.cfg.rollout.num_generations,
            with_values=with_values,
            detach_value_trunk=detach_value_trunk,
        ), b

    def build_value_model(self, model) -> torch.nn.Module:
        from rlhf.value import ValueHead, load_critic

        m, v = self.cfg.model, self.cfg.value
        if v.model == "head":
            return ValueHead(model.get_base_model().config.hidden_size)
        return load_critic(
            m.path,
            m.dtype,
            m.lora.r,
            m.lora.alpha,
            m.lora.dropout,
            m.lora.target_modules,
            v.init_from,
            m.gradient_checkpointing,
            m.trust_remote_code,
        )

    @torch.no_grad()
    def scored_logprobs(self, batch: StepBatch, reference: bool, values: bool = False):
        """[B, C] log-probs under the current policy or the reference, micro-batch by micro-batch; with values,
        also [B, C] V(s_t) from the same forward."""
        out = torch.zeros_like(batch.rollout.logprobs)
        vals = torch.zeros_like(out) if values else None
        mb = self.cfg.train.micro_batch_size
        for s in range(0, len(batch.advantages), mb):
            part = batch.rows(slice(s, s + mb))
            if reference:
                with reference_policy(self.peft_model):
                    po, trimmed = self.policy_logprobs(part)
            else:
                po, trimmed = self.policy_logprobs(part, with_values=values)
            out[s : s + mb, : po.logprobs.shape[1]] = po.logprobs
            if values:
                vals[s : s + mb, : po.values.shape[1]] = po.values.float()
        return (out, vals) if values else out

    # ---------------------------------------------------------------------------------------------------------------
    def train(self) -> dict:
        cfg, acc = self.cfg, self.accelerator
        t, a, r = cfg.train, cfg.algorithm, cfg.rollout
        G = r.num_generations
        on_policy = a.num_iterations == 1 and a.num_minibatches == 1
        eval_tokens = cfg.eval.max_new_tokens or r.max_new_tokens
        last_metrics: dict = {}
        bar = progress_bar(t.max_steps, self.start_step, cfg.logging.progress_bar and self.is_main, a.name)
        bad_steps = 0
        stop = StopRequest()

        try:
            if self.eval_set is not None and self.start_step == 0:
                last_metrics.update(self.evaluate(eval_tokens, step=0))
            t_start, step = time.perf_counter(), self.start_step

            for step in range(self.start_step + 1, t.max_steps + 1):
                t_step = time.perf_counter()
                metrics: dict[str, float] = {}
                # 1. this rank's prompts: every rank draws the same global order and takes its own whole groups
                global_idx = self.sampler.take(t.prompts_per_step * a.num_minibatches)
                k = self.prompts_per_rank * a.num_minibatches
                prompt_idx = global_idx[acc.process_index * k : (acc.process_index + 1) * k]

                # 2. rollout
                t0 = time.perf_counter()
                roll, ps = self.rollout(prompt_idx)
                metrics["time/rollout"] = time.perf_counter() - t0
                gen_tokens = all_sum(acc, roll.completion_mask.sum()).item()
                metrics["throughput/gen_tokens_per_s"] = (
                    gen_tokens / max(metrics["time/rollout"], 1e-9) / acc.num_processes
                )

                # 3. rewards
                t0 = time.perf_counter()
                rewards, per_fn, prompts = score_rollout(self.reward_fns, ps.texts, ps.columns, roll, G)
                metrics["time/reward"] = time.perf_counter() - t0

                # 4. reference and pre-update log-probs, rollout-time values (each only when needed)
                t0 = time.perf_counter()
                loss_mask = roll.completion_mask.clone()
                if r.mask_truncated:
                    loss_mask[roll.truncated] = 0
                batch = StepBatch(roll, torch.zeros_like(roll.logprobs), loss_mask)
                if a.beta > 0:
                    batch.ref_logprobs = self.scored_logprobs(batch, reference=True)
                if self.uses_value:
                    batch.old_logprobs, batch.old_values = self.scored_logprobs(batch, reference=False, values=True)
                elif not on_policy:
                    batch.old_logprobs = self.scored_logprobs(batch, reference=False)
                metrics["time/ref"] = time.perf_counter() - t0

                # 5. advantages, [B, C] per token
                if self.uses_value:
                    metrics.update(self.value_advantages(rewards, batch))
                else:
                    batch.advantages = self.advantages(rewards, loss_mask)

                # 6. update (the first value.warmup_steps steps train only the value model)
                t0 = time.perf_counter()
                warmup = self.uses_value and step <= cfg.value.warmup_steps
                metrics.update(trpo_update(self, batch, warmup) if a.name == "trpo" else self.update(batch, warmup))
                bad_steps = bad_steps + 1 if metrics["optim/skipped_steps"] else 0
                if bad_steps >= t.max_bad_steps:
                    raise FloatingPointError(
                        f"{bad_steps} steps in a row had a non-finite loss or gradient (skipped, weights untouched); "
                        "lower optim.lr, set optim.max_grad_norm, or check the rewards. The last checkpoint under "
                        f"{self.out / 'checkpoints'} is intact"
                    )
                metrics["time/train"] = time.perf_counter() - t0

                # 7. log, evaluate, checkpoint
                metrics.update(self.rollout_metrics(roll, rewards, per_fn, loss_mask))
                metrics["time/step"] = time.perf_counter() - t_step
                # the time budget is agreed over ranks so that every rank stops after the same step
                time_up = bool(t.max_minutes) and all_sum(acc, time.perf_counter() - t_start).item() / (
                    60 * acc.num_processes
                ) >= (t.max_minutes or 0)
                last = step == t.max_steps or time_up
                if self.eval_set is not None and (step % cfg.eval.every == 0 or last):
                    metrics.update(self.evaluate(eval_tokens, step=None))
                self.writer.log(metrics, step)
                last_metrics.update(metrics)
                if self.is_main and cfg.logging.samples_every and step % cfg.logging.samples_every == 0:
                    self.log_samples(prompts, roll, rewards, step)
                if self.is_main and step % cfg.logging.every == 0:
                    (bar.write if bar else log.info)(console_line(step, t.max_steps, metrics))
                if bar:
                    bar.update(1)
                    bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['policy/approx_kl']:.1e}")
                if t.save_every and step % t.save_every == 0 and not last:
                    self.save(step)
                if all_sum(acc, float(stop.requested)).item() > 0:
                    log.warning("stop requested (%s): saving a checkpoint at step %d and exiting", stop.name, step)
                    self.save(step)
                    return last_metrics
                if time_up:
                    log.info("train.max_minutes=%s reached after step %d: finishing the run", t.max_minutes, step)
                    break
        finally:
            stop.restore()
            if bar:
                bar.close()  # so an error message starts on a line of its own
        self.save(step)
        self.last_step = step
        self.save_adapter(last_metrics)
        if self.is_main:
            self.write_plots()
        acc.end_training()
        return last_metrics

    def advantages(self, rewards: Tensor, mask: Tensor) -> Tensor:
        """[B] sequence scores -> [B, C] per-token advantages for the configured estimator. Groups are whole on each
        rank; statistics over the batch (batch std, REINFORCE baselines) are taken over every rank's rows."""
        a, G, acc = self.cfg.algorithm, self.cfg.rollout.num_generations, self.accelerator
        if a.name == "grpo":
            if a.std_level == "batch" and a.scale_by_std:
                seq = batch_std_advantages(rewards, G, std=all_gather_cat(acc, rewards).std())
            else:
                seq = group_advantages(rewards, G, scale_by_std=a.scale_by_std)
            return seq[:, None] * mask.float()
        if a.name == "rloo":
            return rloo_advantages(rewards, G)[:, None] * mask.float()
        if a.name == "reinforce":
            return discounted_returns(rewards, mask, a.gamma)
        if a.name == "reinforce_baseline":
            return discounted_returns(rewards - all_gather_cat(acc, rewards).mean(), mask, a.gamma)
        # reinforce_pp: returns whitened over every token of the global batch
        return self.global_whiten(discounted_returns(rewards, mask, a.gamma), mask)

    def global_moments(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and unbiased variance of x over the masked entries of every rank."""
        acc, m = self.accelerator, mask.float()
        n = all_sum(acc, m.sum()).clamp(min=1.0)
        mean = (all_sum(acc, (x * m).sum()) / n).float()
        var = all_sum(acc, ((x - mean) ** 2 * m).sum()) / (n - 1).clamp(min=1.0)
        return mean, var.float()

    def global_whiten(self, x: Tensor, mask: Tensor) -> Tensor:
        mean, var = self.global_moments(x, mask)
        return whiten(x, mask.float(), mean=mean, std=var.sqrt())

    def value_advantages(self, scores: Tensor, batch: StepBatch) -> dict[str, float]:
        """PPO's advantages (sets batch.advantages and batch.returns): the sequence score on the last token minus
        beta * KL on every token, then GAE on the rollout-time values. Returns metrics."""
        a, acc = self.cfg.algorithm, self.accelerator
        roll = batch.rollout
        mask = roll.completion_mask.float()
        scores = scores.float().clone()
        if a.missing_eos_penalty:
            scores[roll.truncated] -= a.missing_eos_penalty
        if a.reward_norm != "none":
            everyone = all_gather_cat(acc, scores)
            if a.reward_norm == "running":
                self.reward_stats.update(everyone.sum().item(), everyone.square().sum().item(), everyone.numel())
                mean, std = self.reward_stats.mean, self.reward_stats.std
            else:
                mean, std = everyone.mean().item(), everyone.std().item() if everyone.numel() > 1 else 1.0
            scores = (scores - mean) / (std + 1e-8)
        kl = torch.zeros_like(mask)
        if batch.ref_logprobs is not None:
            kl = kl_penalty(batch.old_logprobs, batch.ref_logprobs, a.kl_estimator or "k1") * mask
        beta = self.kl_ctl.value
        rewards = token_rewards(scores, kl, mask, beta)
        adv, returns = gae(rewards, batch.old_values, mask, a.gamma, a.lam)
        batch.advantages = self.global_whiten(adv, batch.loss_mask) if a.whiten_advantages else adv
        batch.returns = returns
        seq_kl = all_gather_cat(acc, kl.sum(-1))
        self.kl_ctl.update(seq_kl.mean().item(), seq_kl.numel())
        v_mean, _ = self.global_moments(batch.old_values, mask)
        r_mean, _ = self.global_moments(returns, mask)
        return {
            "policy/kl_coef": beta,
            "policy/ref_kl": seq_kl.mean().item(),
            "value/mean": v_mean.item(),
            "value/return_mean": r_mean.item(),
            # by the values the advantages were computed with
            "value/explained_var": explained_variance(batch.old_values, returns, mask, moments=self.global_moments),
        }

    def update(self, batch: StepBatch, warmup: bool = False) -> dict[str, float]:
        """mu passes over the batch; each pass splits it into minibatches, one optimizer step each. With a value
        model the loss adds value.coef * the clipped value loss; during warm-up the policy loss is multiplied by 0
        (kept in the graph so every rank's backward has the same shape) and a shared trunk gets no value gradient."""
        cfg, acc = self.cfg, self.accelerator
        a, v = cfg.algorithm, cfg.value
        B = len(batch.advantages)
        per_mb = B // a.num_minibatches
        mb_size = cfg.train.micro_batch_size
        value_clip = v.clip if a.name == "ppo" else 0.0
        sums = {k: 0.0 for k in ("loss/policy", "loss/kl", "loss/value", "policy/clipfrac", "policy/approx_kl")}
        sums.update({"policy/entropy": 0.0, "value/clipfrac": 0.0})
        logprob_gap, grad_norms, n_updates, token_total, passes = 0.0, [], 0, 0.0, 0
        bad_micro, skipped, early_stop = 0, 0, False  # non-finite micro-batch losses; skipped optimizer steps
        self.policy.train()
        for _ in range(a.num_iterations):
            for m in range(a.num_minibatches):
                minibatch = batch.rows(slice(m * per_mb, (m + 1) * per_mb))
                # token-mean divides by the token count of the whole minibatch over all ranks; sequence means by the
                # sequence count. Each micro-batch contributes its share; DDP averages over ranks, so scale by world.
                n_tokens = all_sum(acc, minibatch.loss_mask.sum()).item()
                n_seqs = per_mb * acc.num_processes
                scale = acc.num_processes * acc.gradient_accumulation_steps  # undo DDP's mean and accelerate's 1/GAS
                mb_kl = 0.0
                for s in range(0, per_mb, mb_size):
                    micro = minibatch.rows(slice(s, s + mb_size))
                    with acc.accumulate(self.policy):
                        out, mb = self.policy_logprobs(
                            micro, with_entropy=True, with_values=self.uses_value, detach_value_trunk=warmup
                        )
                        lp = out.logprobs
                        old = lp.detach() if mb.old_logprobs is None else mb.old_logprobs
                        loss, pg = clipped_pg_loss(
                            lp,
                            old,
                            mb.advantages,
                            mb.loss_mask,
                            a.clip_low,
                            a.clip_high,
                            a.loss_agg,
                            num_tokens=n_tokens,
                            max_len=cfg.rollout.max_new_tokens,
                            num_seqs=n_seqs,
                        )
                        total = loss * 0.0 if warmup else loss
                        kl_loss = torch.zeros(())
                        if mb.ref_logprobs is not None and not self.uses_value:  # the value family has KL in the reward
                            kl = kl_penalty(lp, mb.ref_logprobs, a.kl_estimator or "k3")
                            kl_loss = aggregate(
                                kl, mb.loss_mask, a.loss_agg, n_tokens, cfg.rollout.max_new_tokens, n_seqs
                            )
                            total = total + a.beta * kl_loss
                        v_loss = torch.zeros(())
                        if self.uses_value:
                            v_loss, vm = clipped_value_loss(
                                out.values, mb.old_values, mb.returns, mb.loss_mask, value_clip, num_tokens=n_tokens
                            )
                            total = total + v.coef * v_loss
                            sums["value/clipfrac"] += vm["clipfrac"].item() * mb.loss_mask.sum().item()
                        if not torch.isfinite(total):
                            # keep every rank's backward in lockstep with a zero loss still attached to the graph;
                            # the optimizer step of this minibatch is skipped below
                            bad_micro += 1
                            total = lp.sum() * 0.0 + (0.0 if out.values is None else out.values.sum() * 0.0)
                        any_bad = acc.sync_gradients and all_sum(acc, bad_micro).item() > 0
                        # DeepSpeed steps inside backward(): a minibatch with a non-finite loss on any rank gets a
                        # zero learning rate for that step, so Adam's moments cannot move the weights
                        with zero_lr(self.optimizer, self.is_deepspeed and any_bad):
                            acc.backward(total * scale)
                        if acc.sync_gradients:
                            gn = torch.tensor(0.0)
                            if cfg.optim.max_grad_norm > 0:
                                gn = acc.clip_grad_norm_(self.policy.parameters(), cfg.optim.max_grad_norm)
                            bad = any_bad or not torch.isfinite(torch.as_tensor(gn))
                            if bad:
                                skipped += 1
                            else:
                                if cfg.optim.max_grad_norm > 0:
                                    grad_norms.append(float(gn))
                                self.optimizer.step()
                                self.scheduler.step()
                                n_updates += 1
                            self.optimizer.zero_grad()
                            bad_micro = 0
                    w = mb.loss_mask.sum().item()
                    token_total += w
                    sums["loss/policy"] += torch.nan_to_num(loss.detach(), nan=0.0).item()
                    sums["loss/kl"] += torch.nan_to_num(kl_loss.detach(), nan=0.0).item()
                    sums["loss/value"] += torch.nan_to_num(v_loss.detach(), nan=0.0).item()
                    for key, name in (("clipfrac", "policy/clipfrac"), ("approx_kl", "policy/approx_kl")):
                        sums[name] += pg[key].item() * w
                    mb_kl += pg["approx_kl"].item() * w
                    sums["policy/entropy"] += masked_mean(out.entropy, mb.loss_mask).item() * w
                    logprob_gap += (((lp.detach() - mb.rollout.logprobs).abs()) * mb.loss_mask).sum().item()
                passes += 1
                # early stop (target_kl): this minibatch moved the policy too far from the rollout policy
                if a.target_kl is not None and all_sum(acc, mb_kl).item() / max(n_tokens, 1.0) > a.target_kl:
                    early_stop = True
                    break
            if early_stop:
                break
        tokens = max(all_sum(acc, token_total).item(), 1.0)
        metrics = {
            "loss/policy": all_sum(acc, sums["loss/policy"]).item() / passes,
            "loss/kl": all_sum(acc, sums["loss/kl"]).item() / passes,
            "policy/clipfrac": all_sum(acc, sums["policy/clipfrac"]).item() / tokens,
            "policy/approx_kl": all_sum(acc, sums["policy/approx_kl"]).item() / tokens,
            "policy/entropy": all_sum(acc, sums["policy/entropy"]).item() / tokens,
            "policy/rollout_logprob_gap": all_sum(acc, logprob_gap).item() / tokens,
            "optim/lr": self.scheduler.get_last_lr()[0],
            "optim/updates": n_updates,
            "optim/skipped_steps": skipped,
        }
        if self.uses_value:
            metrics["loss/value"] = all_sum(acc, sums["loss/value"]).item() / passes
            metrics["value/clipfrac"] = all_sum(acc, sums["value/clipfrac"]).item() / tokens
            metrics["value/warmup"] = float(warmup)
        if a.target_kl is not None:
            metrics["policy/early_stopped"] = float(early_stop)
        if grad_norms:
            metrics["optim/grad_norm"] = sum(grad_norms) / len(grad_norms)
        return metrics

    def rollout_metrics(self, roll: Rollout, rewards: Tensor, per_fn: dict[str, Tensor], loss_mask: Tensor) -> dict:
        acc, G = self.accelerator, self.cfg.rollout.num_generations
        everyone = all_gather_cat(acc, rewards)
        group_std = everyone.view(-1, G).std(dim=1)
        lengths = all_gather_cat(acc, roll.lengths.float())
        truncated = all_gather_cat(acc, roll.truncated.float())
        m = {
            "reward/mean": everyone.mean().item(),
            "reward/std": everyone.std().item() if everyone.numel() > 1 else 0.0,
            "frac_reward_zero_std": (group_std < 1e-6).float().mean().item(),
            "completion/mean_len": lengths.mean().item(),
            "completion/max_len": lengths.max().item(),
            "completion/clipped_frac": truncated.mean().item(),
        }
        verifier = sys.modules.get("reward_models.math")
        if verifier is not None:  # the math verifier counts checks that hit its time limit (scored as not equal)
            m["reward/verifier_timeouts"] = all_sum(acc, verifier.verifier_stats()["timeouts"]).item()
        for rf in self.reward_fns:
            vals = all_gather_cat(acc, per_fn[rf.name])
            ok = ~torch.isnan(vals)
            m[f"reward/{rf.name}/mean"] = vals[ok].mean().item() if ok.any() else float("nan")
            m[f"reward/{rf.name}/errors"] = all_sum(acc, rf.errors).item()
        return m

    def evaluate(self, max_new_tokens: int, step: int | None) -> dict:
        e = self.cfg.eval
        self.policy.eval()
        with (
            gathered_parameters(self.accelerator, self.peft_model),
            merged_adapter(self.peft_model, self.cfg.rollout.merge_adapter),
        ):
            metrics, _ = greedy_eval(
                self.generation_model,
                self.tokenizer,
                self.eval_set,
                self.reward_fns,
                max_new_tokens,
                e.batch_size,
                e.success_threshold,
                self.accelerator,
            )
        if step is not None:
            self.writer.log(metrics, step)
            if self.is_main:
                log.info(
                    "step %d eval accuracy %.3f (%d prompts, %.1fs)",
                    step,
                    metrics["eval/accuracy"],
                    metrics["eval/num_samples"],
                    metrics["time/eval"],
                )
        return metrics

    def log_samples(self, prompts: list[str], roll: Rollout, rewards: Tensor, step: int, n: int = 4) -> None:
        G = self.cfg.rollout.num_generations
        picks = [i * G for i in range(min(n, len(prompts) // G))]
        rows = [{"prompt": prompts[i], "completion": roll.texts[i], "reward": rewards[i].item()} for i in picks]
        self.writer.samples(rows, step)
        log.info("samples at step %d:\n%s", step, format_samples(rows))

    def save(self, step: int) -> None:
        state = {
            "sampler": self.sampler.state_dict(),
            "kl_ctl": self.kl_ctl.state_dict(),
            "reward_stats": self.reward_stats.state_dict(),
            "version": __version__,
        }
        path = save_checkpoint(
            self.out / "checkpoints",
            step,
            self.accelerator,
            self.peft_model,
            self.optimizer,
            self.scheduler,
            state,
            keep_last=self.cfg.train.keep_last,
            trainable_module=self.policy if self.uses_value else None,
        )
        if self.is_main:
            log.info("checkpoint saved to %s", path)

    def save_adapter(self, final_metrics: dict) -> None:
        """The adapter in PEFT format, the tokenizer, and a model card (after peft's own placeholder README)."""
        adapter = self.out / "adapter"
        save_adapter(self.accelerator, self.peft_model, adapter)  # gathered under ZeRO-3
        if self.is_main:
            from rlhf.config import to_dict
            from rlhf.model_card import write_model_card

            self.tokenizer.save_pretrained(adapter)
            write_model_card(
                adapter,
                self.cfg.model.path,
                self.recipe,
                to_dict(self.cfg),
                final_metrics,
                command=command_line(),
                data_desc=self.data_description(),
                reward_names=[rf.name for rf in self.reward_fns],
                steps=self.last_step,
            )
            log.info("adapter saved to %s", adapter)
        self.accelerator.wait_for_everyone()

    def data_description(self) -> str:
        d = self.cfg.data
        if d.path == "arithmetic":
            a = d.arithmetic
            return (
                f"built-in arithmetic task: operands {a.min_operand}..{a.max_operand}, "
                f"operators {' '.join(a.operators)}, {a.num_train} training / {a.num_eval} held-out problems "
                f"(seed {self.cfg.seed})"
            )
        return (
            f"{d.path}" + (f" ({d.name})" if d.name else "") + f", split {d.split}, prompt column {d.prompt_column!r}"
        )

    def write_plots(self) -> None:
        try:
            from rlhf.plots import plot_run

            paths = plot_run(self.out)
            if paths:
                log.info("plots written to %s", paths[0].parent)
        except ImportError as e:  # plotting is a convenience; a missing matplotlib must not fail a finished run
            log.warning("no plots: %s (pip install matplotlib)", e)


# the name this class had when GRPO was its only algorithm
GRPOTrainer = Trainer
