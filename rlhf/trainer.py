"""The training loop of every algorithm, read top to bottom as numbered steps.

One step: (1) take this rank's prompts, (2) generate G episodes each through the rollout engine, (3) score them,
(4) log-probs of the reference (beta > 0), of the policy before the update (when the update is not exactly on-policy)
and the rollout-time values (value-model algorithms), (5) advantages by the algorithm's estimator, (6) the update:
mu passes of minibatch steps (`rlhf.update`), or TRPO's natural step (`rlhf.trpo`) after fitting the value model,
(7) log, evaluate, checkpoint. What differs between algorithms is a row of `rlhf.algorithms.ALGORITHMS`; this file
never branches on an algorithm's name.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path

import torch
from torch import Tensor

from rlhf.accuracy import greedy_eval
from rlhf.algorithms import get_algorithm
from rlhf.batch import StepBatch
from rlhf.build import (
    build_datasets,
    build_optimizer,
    build_teacher,
    build_update_settings,
    build_value_model,
)
from rlhf.checkpoint import apply_hyperparameters, load_checkpoint, read_checkpoint_config, resolve_resume
from rlhf.checkpoint_state import rng_state, set_rng_state
from rlhf.config import Config, ConfigError, check_world, save_config, to_dict
from rlhf.data import PromptSampler
from rlhf.distributed import (
    all_gather_cat,
    all_sum,
    configure_deepspeed,
    is_deepspeed,
    make_accelerator,
    zero_stage,
)
from rlhf.dynamic_sampling import Draw, collect_informative
from rlhf.envs import build_env
from rlhf.estimators import AdvantageInputs, BatchStats
from rlhf.kl_control import KLController, RunningMoments
from rlhf.models import count_parameters, load_policy, load_tokenizer, reference_policy, set_attention
from rlhf.outputs import RunOutputs, episode_metrics, rollout_metrics
from rlhf.policy import RUN_OVERHEAD_TOKENS, Policy
from rlhf.rewards import build_reward_functions, check_reward_signatures, score_rollout
from rlhf.rollout import Rollout, SamplingParams, build_engine, engine_options
from rlhf.rollout.episodes import EpisodeRunner, Episodes
from rlhf.run_dir import append_history, check_resume_config, claim_output_dir
from rlhf.run_utils import StopNow, StopRequest, flat_config, progress_bar, seed_everything
from rlhf.tracking import MetricsWriter, available_trackers, truncate_metrics_file
from rlhf.trpo import trpo_update
from rlhf.update import Updater

__all__ = ["StepBatch", "Trainer"]

log = logging.getLogger("rlhf")


class Trainer:
    def __init__(self, cfg: Config, recipe: str = "(config built in code)"):
        self.cfg, self.recipe = cfg, recipe
        self.spec = spec = get_algorithm(cfg.algorithm.name)
        t, m, a = cfg.train, cfg.model, cfg.algorithm
        self.out = Path(cfg.output_dir)
        # Sequences per rank per optimizer step and the micro-batches they split into fix the accumulation count.
        self.accelerator = acc = make_accelerator(1, available_trackers(cfg.logging.report_to), str(self.out))
        check_world(cfg, acc.num_processes)
        self.prompts_per_rank = t.prompts_per_step // acc.num_processes
        self.micro_batches = math.ceil(self.prompts_per_rank * cfg.rollout.num_generations / t.micro_batch_size)
        acc.gradient_accumulation_steps = self.micro_batches
        configure_deepspeed(acc, self.micro_batches, cfg.optim.max_grad_norm)
        self.is_main = acc.is_main_process
        seed_everything(cfg.seed + acc.process_index)
        # the run owns its folder; a resume is checked against the checkpoint's config before anything is written
        self.run_lock = claim_output_dir(self.out, bool(t.resume_from), t.overwrite) if self.is_main else None
        self.resume_path = resolve_resume(t.resume_from, self.out / "checkpoints")
        self.resume_changes: list[str] = []
        saved = read_checkpoint_config(self.resume_path) if self.resume_path is not None else None
        if saved is not None:
            self.resume_changes = check_resume_config(saved, to_dict(cfg), source=self.resume_path)
        if self.is_main:
            save_config(cfg, self.out / "config.yaml")

        # data and rewards before the model, so their errors come in seconds
        self.tokenizer = load_tokenizer(m.path, m.trust_remote_code)
        self.train_set, self.eval_set = build_datasets(cfg, self.tokenizer)
        self.reward_fns = build_reward_functions(cfg.rewards)
        for ps in (self.train_set, self.eval_set):
            if ps is not None:  # every argument a reward function names must be a column (or a call keyword)
                check_reward_signatures(self.reward_fns, list(ps.columns))
        self.sampler = PromptSampler(len(self.train_set), cfg.seed, cfg.data.shuffle)
        self.episodes = self.episode_runner()

        lora = m.lora
        model = load_policy(
            m.path, m.dtype, lora.r, lora.alpha, lora.dropout, lora.target_modules, m.gradient_checkpointing,
            m.trust_remote_code,
        )  # fmt: skip
        set_attention(model, m.attn_implementation)
        n_train, n_all = count_parameters(model)
        log.info("policy %s: %.2fM trainable of %.1fM parameters", m.path, n_train / 1e6, n_all / 1e6)
        self.peft_model = model
        self.is_deepspeed = is_deepspeed(acc)
        if spec.update == "trpo" and self.is_deepspeed:
            raise ConfigError(
                f"algorithm.name={a.name} takes its natural-gradient step outside the optimizer, which DeepSpeed owns; "
                "launch it single-process or with recipes/accelerate/ddp.yaml"
            )
        value_model = build_value_model(cfg, model) if spec.value_model else None
        self.teacher = build_teacher(cfg, self.tokenizer) if spec.teacher else None
        # TRPO steps the policy itself; the optimizer then holds only the value parameters
        policy_params = (
            [(n, p) for n, p in model.named_parameters() if p.requires_grad] if spec.update == "minibatch" else []
        )
        value_params = None if value_model is None else [p for p in value_model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = build_optimizer(cfg, policy_params, value_params)
        # ZeRO-3 gathers each layer's weights in every forward call, as a collective: all ranks must make the same
        # number of calls, so rows are not split into length runs there (the split depends on each rank's lengths)
        bucket_overhead = -1 if zero_stage(acc) == 3 else RUN_OVERHEAD_TOKENS
        self.policy, self.optimizer = acc.prepare(
            Policy(model, value_model, bucket_overhead=bucket_overhead, lora_in_base=m.lora.compute_dtype == "base"),
            self.optimizer,
        )
        self.kl_ctl = KLController(a.beta, a.kl_target, a.kl_horizon)
        self.reward_stats = RunningMoments()
        self.stats = BatchStats(total=lambda x: all_sum(acc, x), gather=lambda x: all_gather_cat(acc, x))
        r = cfg.rollout
        self.engine = build_engine(
            r.engine, model=model, tokenizer=self.tokenizer, accelerator=acc, merge_adapter=r.merge_adapter,
            batch_size=r.batch_size, **engine_options(r.engine, r),
        )  # fmt: skip
        self.updater = Updater(
            acc, self.policy, self.optimizer, self.scheduler, build_update_settings(cfg, spec), self.policy_logprobs,
            self.engine.weights_updated,
        )  # fmt: skip
        self.start_step = self.resume()
        if acc.log_with:
            acc.init_trackers("tracking", config=flat_config(cfg))
        self.writer = MetricsWriter(self.out, acc, self.is_main, append=self.resume_path is not None)
        self.outputs = RunOutputs(
            cfg, recipe, acc, model, self.optimizer, self.scheduler, self.tokenizer, self.writer, self.resumable_state,
            [rf.name for rf in self.reward_fns], trainable_module=self.policy if spec.value_model else None,
        )  # fmt: skip

    def episode_runner(self) -> EpisodeRunner | None:
        """Multi-turn episodes when the recipe names an environment (None: single-turn). Ranks agree on each turn
        (`any_running` is an all-reduce) so that they make the same number of engine calls."""
        e, acc = self.cfg.env, self.accelerator
        if e.name is None:
            return None
        any_running = None
        if acc.num_processes > 1:
            any_running = lambda flag: all_sum(acc, float(flag)).item() > 0  # noqa: E731
        return EpisodeRunner(
            build_env(e.name, e.kwargs, e.tools), self.tokenizer, e.max_turns, e.max_tokens, e.reward_weight,
            self.cfg.data.system_prompt, any_running,
        )  # fmt: skip

    def resumable_state(self) -> dict:
        return {
            "sampler": self.sampler.state_dict(),
            "kl_ctl": self.kl_ctl.state_dict(),
            "reward_stats": self.reward_stats.state_dict(),
        }

    def resume(self) -> int:
        """Restore the newest usable checkpoint when asked; returns the step to continue after (0 = fresh)."""
        resume = self.resume_path
        if resume is None:
            return 0
        lrs = list(self.scheduler.base_lrs)  # this run's peak rates, before the checkpoint's replace them
        # the value head / critic is restored with the adapter (trainable.safetensors)
        state = load_checkpoint(
            resume,
            self.accelerator,
            self.peft_model,
            self.optimizer,
            self.scheduler,
            trainable_module=self.policy if self.spec.value_model else None,
        )
        o = self.cfg.optim
        apply_hyperparameters(
            self.optimizer, self.scheduler, lrs, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
        )
        if self.resume_changes:
            log.info("resuming with changed settings: %s", "; ".join(self.resume_changes))
            if self.is_main:
                append_history(self.out, state["step"], self.resume_changes)
        self.sampler.load_state_dict(state["sampler"])
        if "kl_ctl" in state:
            self.kl_ctl.load_state_dict(state["kl_ctl"])
            self.reward_stats.load_state_dict(state["reward_stats"])
        self.engine.weights_updated()
        log.info("resumed from %s at step %d", resume, state["step"])
        if self.is_main:
            truncate_metrics_file(self.out / "metrics.jsonl", state["step"])
        return state["step"]

    # ------------------------------------------------------------------------------------------------ the loop
    def train(self) -> dict:
        cfg, acc, spec = self.cfg, self.accelerator, self.spec
        t, a = cfg.train, cfg.algorithm
        last_metrics: dict = {}
        bar = progress_bar(t.max_steps, self.start_step, cfg.logging.progress_bar and self.is_main, a.name)
        bad_steps, stop = 0, StopRequest(can_abort=acc.num_processes == 1)
        try:
            if self.eval_set is not None and self.start_step == 0:
                try:
                    with stop.abortable():
                        last_metrics.update(self.evaluate(step=0))
                except StopNow:
                    return self.stop_before(1, self.step_start_state(), stop, last_metrics, "the step-0 evaluation")
            t_start, step = time.perf_counter(), self.start_step

            for step in range(self.start_step + 1, t.max_steps + 1):
                t_step = time.perf_counter()
                metrics: dict[str, float] = {}
                before = self.step_start_state()
                # 1-4. prompts, episodes, rewards, reference and pre-update log-probs: the weights are still those of
                # the last completed step, so on a stop request this work is dropped and that step saved
                try:
                    with stop.abortable():
                        d, batch = self.collect(metrics)
                except StopNow:
                    return self.stop_before(step, before, stop, last_metrics)
                if acc.num_processes > 1 and all_sum(acc, float(stop.requested)).item() > 0:
                    return self.stop_before(step, before, stop, last_metrics)  # every rank agrees at this point
                roll, rewards, per_fn, prompts = d.rollout, d.rewards, d.per_fn, d.prompts

                # 5. advantages, [B, C] per token, by the algorithm's estimator
                est = self.advantages(rewards, batch)
                batch.advantages, batch.returns = est.advantages, est.returns
                metrics.update(est.metrics)

                # 6. update (the first value.warmup_steps steps train only the value model)
                t0 = time.perf_counter()
                warmup = spec.value_model and step <= cfg.value.warmup_steps
                metrics.update(self.update(batch, warmup))
                bad_steps = bad_steps + 1 if metrics["optim/skipped_steps"] else 0
                if bad_steps >= t.max_bad_steps:
                    raise FloatingPointError(
                        f"{bad_steps} steps in a row had a non-finite loss or gradient (skipped, weights untouched); "
                        "lower optim.lr, set optim.max_grad_norm, or check the rewards. The last checkpoint under "
                        f"{self.out / 'checkpoints'} is intact"
                    )
                metrics["time/train"] = time.perf_counter() - t0

                # 7. log, evaluate, checkpoint
                metrics.update(rollout_metrics(acc, roll, rewards, per_fn, self.reward_fns))
                if d.episode_stats is not None:
                    metrics.update(episode_metrics(acc, d.episode_stats, per_fn["env"]))
                metrics["time/step"] = time.perf_counter() - t_step
                # the time budget is agreed over ranks so that every rank stops after the same step
                time_up = bool(t.max_minutes) and all_sum(acc, time.perf_counter() - t_start).item() / (
                    60 * acc.num_processes
                ) >= (t.max_minutes or 0)
                last = step == t.max_steps or time_up
                if self.eval_set is not None and (step % cfg.eval.every == 0 or last):
                    try:
                        with stop.abortable():
                            metrics.update(self.evaluate(step=None))
                    except StopNow:  # the step trained: it is logged and saved below, without its evaluation
                        log.warning("stop requested (%s): the evaluation of step %d is dropped", stop.name, step)
                self.writer.log(metrics, step)
                last_metrics.update(metrics)
                self.outputs.step_done(step, metrics, prompts, roll, rewards, bar)
                if t.save_every and step % t.save_every == 0 and not last:
                    self.outputs.save(step)
                if all_sum(acc, float(stop.requested)).item() > 0:
                    log.warning("stop requested (%s): saving a checkpoint at step %d and exiting", stop.name, step)
                    self.outputs.save(step)
                    return last_metrics
                if time_up:
                    log.info("train.max_minutes=%s reached after step %d: finishing the run", t.max_minutes, step)
                    break
            self.outputs.finish(step, last_metrics)
        finally:
            stop.restore()
            if bar:
                bar.close()  # so an error message starts on a line of its own
            self.engine.close()
            if self.run_lock is not None:
                self.run_lock.release()
        acc.end_training()
        return last_metrics

    # ------------------------------------------------------------------------------------------------ the steps
    def collect(self, metrics: dict) -> tuple[Draw, StepBatch]:
        """Steps 1-4: this rank's prompts, their episodes (rollout engine) and rewards (with dynamic sampling, drawn
        again while a rank lacks groups whose rewards differ), then the reference and pre-update log-probs and the
        rollout-time values, each only when needed. Adds the stage timings to `metrics`."""
        acc, a, r, spec = self.accelerator, self.cfg.algorithm, self.cfg.rollout, self.spec
        if a.dynamic_sampling:
            d, dyn = collect_informative(
                lambda: self.draw(a.draw_prompts),
                self.prompts_per_rank * a.num_minibatches,
                a.max_refills,
                any_rank=lambda flag: all_sum(acc, float(flag)).item() > 0,
                total=lambda x: all_sum(acc, float(x)).item(),
                pad_id=self.tokenizer.pad_token_id,
            )
            metrics.update(dyn)
        else:
            d = self.draw()
        roll = d.rollout
        metrics["time/rollout"], metrics["time/reward"] = d.time_rollout, d.time_reward
        gen_tokens = all_sum(acc, roll.action_mask.sum()).item()
        metrics["throughput/gen_tokens_per_s"] = gen_tokens / max(metrics["time/rollout"], 1e-9) / acc.num_processes

        t0 = time.perf_counter()
        loss_mask = roll.action_mask.clone()
        if r.mask_truncated:
            loss_mask[roll.truncated] = 0
        if d.trainable is not None:  # groups that only fill the batch (dynamic sampling ran short)
            loss_mask[~d.trainable] = 0
        batch = StepBatch(roll, torch.zeros_like(roll.logprobs), loss_mask)
        if a.beta > 0:
            batch.ref_logprobs = self.scored_logprobs(batch, reference=True)
        if spec.value_model:
            batch.old_logprobs, batch.old_values = self.scored_logprobs(batch, reference=False, values=True)
        elif not (a.num_iterations == 1 and a.num_minibatches == 1):  # on-policy: the update's own forward serves
            batch.old_logprobs = self.scored_logprobs(batch, reference=False)
        if self.teacher is not None:
            batch.teacher_logprobs = self.scored_logprobs(batch, reference=False, scorer=self.teacher)
        metrics["time/ref"] = time.perf_counter() - t0
        return d, batch

    def step_start_state(self) -> tuple[dict, dict]:
        """What a dropped step must put back: the sampler's position and this rank's RNGs."""
        return copy.deepcopy(self.sampler.state_dict()), rng_state()

    def stop_before(
        self, step: int, before: tuple[dict, dict], stop: StopRequest, last_metrics: dict, where: str = ""
    ) -> dict:
        """A stop request during steps 1-4 of `step` (or the step-0 evaluation): the step's work is dropped, the
        sampler and RNGs go back to where it began, and the last completed step is saved (unless it already is), so
        a resumed run continues exactly as an uninterrupted one."""
        sampler_state, rng = before
        self.sampler.load_state_dict(sampler_state)
        set_rng_state(rng)
        done = step - 1
        log.warning(
            "stop requested (%s) during %s: its unfinished work is dropped; saving step %d and exiting",
            stop.name,
            where or f"step {step}",
            done,
        )
        if not (self.out / "checkpoints" / f"step-{done:06d}" / "COMPLETE").is_file():
            self.outputs.save(done)
        return last_metrics

    def draw(self, prompts: int = 0) -> Draw:
        """Steps 1-3 once: this rank's share of `prompts` prompts (0: a step's batch; every rank draws the same global
        order and takes its own whole groups), their episodes and their rewards."""
        t, a, acc = self.cfg.train, self.cfg.algorithm, self.accelerator
        prompts = prompts or t.prompts_per_step * a.num_minibatches
        global_idx = self.sampler.take(prompts)
        k = prompts // acc.num_processes
        prompt_idx = global_idx[acc.process_index * k : (acc.process_index + 1) * k]
        t0 = time.perf_counter()
        episodes = None
        if self.episodes is None:
            roll, ps = self.rollout(prompt_idx)
        else:
            episodes, ps = self.run_episodes(prompt_idx)
            roll = episodes.rollout
        t1 = time.perf_counter()
        rewards, per_fn, prompts = score_rollout(
            self.reward_fns, ps.texts, ps.columns, roll, roll.group_size, prompt_messages=ps.prompt_messages,
            **({} if episodes is None else self.episode_scoring(episodes)),
        )  # fmt: skip
        stats = None if episodes is None else episodes.stats
        return Draw(roll, rewards, per_fn, prompts, t1 - t0, time.perf_counter() - t1, episode_stats=stats)

    def episode_scoring(self, episodes: Episodes) -> dict:
        """What multi-turn episodes add to scoring: the functions score the last turn, the environment's reward adds
        with its weight."""
        return {
            "completions": episodes.final_texts,
            "extra": {"env": (episodes.env_rewards, self.cfg.env.reward_weight)},
        }

    def rollout(self, prompt_idx: list[int]) -> tuple[Rollout, object]:
        """Step 2: G episodes for each of this rank's prompts, through the engine."""
        r = self.cfg.rollout
        ps = self.train_set.select(prompt_idx)
        params = SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k, False, list(r.stop))
        self.policy.eval()
        return self.engine.generate(ps.prompt_ids, r.num_generations, params), ps

    def run_episodes(self, prompt_idx: list[int]) -> tuple[Episodes, object]:
        """Step 2 with an environment: G multi-turn episodes for each of this rank's prompts."""
        r = self.cfg.rollout
        ps = self.train_set.select(prompt_idx)
        params = SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k, False, list(r.stop))
        self.policy.eval()
        return self.episodes.run(self.engine, ps, r.num_generations, params), ps

    def policy_logprobs(
        self,
        batch: StepBatch,
        with_entropy: bool = False,
        with_values: bool = False,
        detach_value_trunk: bool = False,
        scorer=None,
    ):
        """The wrapped policy's forward on a micro-batch (padding columns dropped first): (PolicyOutput, the batch
        as trimmed). Temperature and group size are the rollout's own."""
        b = batch.trimmed()
        r = b.rollout
        out = (self.policy if scorer is None else scorer)(
            r.prompt_ids,
            r.prompt_mask,
            r.completion_ids,
            r.completion_mask,
            r.temperature,
            with_entropy,
            group_size=r.group_size,
            with_values=with_values,
            detach_value_trunk=detach_value_trunk,
            action_mask=r.action_mask,
        )
        return out, b

    @torch.no_grad()
    def scored_logprobs(self, batch: StepBatch, reference: bool, values: bool = False, scorer=None):
        """Step 4: [B, C] log-probs under the current policy, the reference, or another model (`scorer`, a frozen
        `Policy`: the distillation teacher), micro-batch by micro-batch; with values, also [B, C] V(s_t) from the
        same forward."""
        out = torch.zeros_like(batch.rollout.logprobs)
        vals = torch.zeros_like(out) if values else None
        mb = self.cfg.train.micro_batch_size
        for s in range(0, len(batch.advantages), mb):
            part = batch.rows(slice(s, s + mb))
            if scorer is not None:
                po, _ = self.policy_logprobs(part, scorer=scorer)
            elif reference:
                with reference_policy(self.peft_model):
                    po, _ = self.policy_logprobs(part)
            else:
                po, _ = self.policy_logprobs(part, with_values=values)
            out[s : s + mb, : po.logprobs.shape[1]] = po.logprobs
            if values:
                vals[s : s + mb, : po.values.shape[1]] = po.values.float()
        return (out, vals) if values else out

    def advantages(self, rewards: Tensor, batch: StepBatch):
        """Step 5: the algorithm's estimator on plain tensors (see rlhf.estimators)."""
        a, roll = self.cfg.algorithm, batch.rollout
        inputs = AdvantageInputs(
            scores=rewards,
            action_mask=roll.action_mask,
            loss_mask=batch.loss_mask,
            group_size=roll.group_size,
            truncated=roll.truncated,
            old_logprobs=batch.old_logprobs,
            ref_logprobs=batch.ref_logprobs,
            old_values=batch.old_values,
            kl_ctl=self.kl_ctl,
            reward_stats=self.reward_stats,
            behaviour_logprobs=roll.logprobs,
            teacher_logprobs=batch.teacher_logprobs,
        )
        return self.spec.estimator(inputs, self.stats, **{k: getattr(a, k) for k in self.spec.estimator_knobs})

    def update(self, batch: StepBatch, warmup: bool) -> dict[str, float]:
        """Step 6: minibatch steps, or (update = trpo) the value model's fit then the policy's natural step."""
        if self.spec.update == "minibatch":
            return self.updater(batch, warmup)
        metrics = self.updater(batch, warmup=True)  # the value model alone
        metrics["value/warmup"] = float(warmup)
        if not warmup:
            tr = self.cfg.algorithm.trpo
            metrics.update(
                trpo_update(
                    self.accelerator.unwrap_model(self.policy),
                    batch,
                    lambda x: all_sum(self.accelerator, x),
                    tr.max_kl,
                    tr.cg_iters,
                    tr.damping,
                    tr.fisher_fraction,
                    tr.backtrack_steps,
                    tr.backtrack_ratio,
                    self.cfg.train.micro_batch_size,
                )
            )
            self.engine.weights_updated()
        return metrics

    def evaluate(self, step: int | None) -> dict:
        """Greedy held-out accuracy through the same engine; logged at `step` when given."""
        e = self.cfg.eval
        self.policy.eval()
        max_new_tokens = e.max_new_tokens or self.cfg.rollout.max_new_tokens
        metrics, _ = greedy_eval(
            self.engine,
            self.eval_set,
            self.reward_fns,
            max_new_tokens,
            e.batch_size,
            e.success_threshold,
            self.accelerator,
            episodes=self.episodes,
            stop=self.cfg.rollout.stop,
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


# the name this class had when GRPO was its only algorithm (kept for code written against it)
GRPOTrainer = Trainer
