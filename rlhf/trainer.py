"""The training loop of every algorithm, read top to bottom as numbered steps.

One step: (1-4) the collector (`rlhf.collector`) takes this rank's prompts, generates G episodes each through the
rollout engine, scores them and adds the log-probs and values the step needs, in one `StepRecord` (on the spot, or
sampled ahead by a rollout worker with train.max_staleness, `rlhf.async_rollout`); (5) advantages by
the algorithm's estimator, whose observations (KL, reward moments) the trainer then applies to the run's state;
(6) the update: mu passes of minibatch steps (`rlhf.update`), or TRPO's natural step (`rlhf.trpo`) after fitting
the value model; (7) log, evaluate, checkpoint. What differs between algorithms is a row of
`rlhf.algorithms.ALGORITHMS`; this file never branches on an algorithm's name. The config is read while building;
the loop reads settings objects (`rlhf.loop_settings`).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path

from rlhf.accuracy import greedy_eval
from rlhf.agents import build_agent_runner
from rlhf.algorithms import UpdateKind, get_algorithm
from rlhf.async_rollout import build_rollouts, check_async, rollout_copy
from rlhf.batch import StepBatch
from rlhf.build import build_datasets, build_optimizer, build_teacher, build_update_settings, build_value_model
from rlhf.checkpoint import apply_hyperparameters, load_checkpoint, read_checkpoint_config, resolve_resume
from rlhf.checkpoint_state import rng_state, set_rng_state
from rlhf.collector import Collector
from rlhf.config import Config, ConfigError, check_world, save_config, to_dict
from rlhf.data import PromptSampler
from rlhf.distributed import all_gather_cat, all_sum, configure_deepspeed, is_deepspeed, make_accelerator, zero_stage
from rlhf.dynamic_sampling import DynamicSampling
from rlhf.envs import build_env
from rlhf.estimators import Advantages, BatchStats
from rlhf.kl_control import KLController, RunningMoments
from rlhf.loop_settings import (
    build_collector_settings,
    build_estimator,
    build_eval_settings,
    build_loop_settings,
    build_trpo_settings,
)
from rlhf.models import count_parameters, load_policy, load_tokenizer, set_attention
from rlhf.outputs import RunOutputs, episode_metrics, rollout_metrics
from rlhf.policy import RUN_OVERHEAD_TOKENS, Policy
from rlhf.rewards import build_reward_functions, check_reward_signatures
from rlhf.rollout import build_engine, engine_options
from rlhf.rollout.episodes import EpisodeRunner
from rlhf.run_dir import append_history, check_resume_config, claim_output_dir
from rlhf.run_utils import StopNow, StopRequest, flat_config, progress_bar, seed_everything
from rlhf.step_record import StepRecord
from rlhf.tracking import MetricsWriter, available_trackers, truncate_metrics_file
from rlhf.trpo import trpo_update
from rlhf.update import Updater

__all__ = ["StepBatch", "StepRecord", "Trainer"]

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
        check_async(cfg, acc, spec.update)
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
        self.has_env = cfg.env.name is not None or cfg.env.factory is not None  # episodes with an environment
        for ps in (self.train_set, self.eval_set):
            if ps is not None:  # every argument a reward function names must be a column (or a call keyword)
                check_reward_signatures(self.reward_fns, list(ps.columns), environments=self.has_env)
        self.sampler = PromptSampler(len(self.train_set), cfg.seed, cfg.data.shuffle)
        self.episodes = self.episode_runner()

        self.peft_model = model = self.build_policy_model()
        twin = rollout_copy(model) if t.max_staleness else model  # what the engine decodes with (rlhf.async_rollout)
        self.is_deepspeed = is_deepspeed(acc)
        if spec.update is UpdateKind.TRPO and self.is_deepspeed:
            raise ConfigError(
                f"algorithm.name={a.name} takes its natural-gradient step outside the optimizer, which DeepSpeed owns; "
                "launch it single-process or with recipes/accelerate/ddp.yaml"
            )
        value_model = build_value_model(cfg, model) if spec.value_model else None
        self.teacher = build_teacher(cfg, self.tokenizer) if spec.teacher else None
        # TRPO steps the policy itself; the optimizer then holds only the value parameters
        policy_params = (
            [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            if spec.update is UpdateKind.MINIBATCH
            else []
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
            r.engine, model=twin, tokenizer=self.tokenizer, accelerator=acc,
            merge_adapter=r.merge_adapter and not t.max_staleness,
            batch_size=r.batch_size, **engine_options(r.engine, r),
        )  # fmt: skip
        self.collector = self.build_collector()
        self.rollouts = build_rollouts(cfg, acc, self.collector, self.sampler, model, twin, self.policy)
        self.estimate = build_estimator(cfg, spec)
        self.loop, self.eval_settings = build_loop_settings(cfg, spec), build_eval_settings(cfg)
        self.trpo = build_trpo_settings(cfg) if spec.update is UpdateKind.TRPO else None
        self.updater = Updater(
            acc, self.policy, self.optimizer, self.scheduler, build_update_settings(cfg, spec),
            (lambda: None) if t.max_staleness else self.engine.weights_updated,  # the worker syncs its own copy
        )  # fmt: skip
        self.start_step = self.resume()
        if acc.log_with:
            acc.init_trackers("tracking", config=flat_config(cfg))
        self.writer = MetricsWriter(self.out, acc, self.is_main, append=self.resume_path is not None)
        self.outputs = RunOutputs(
            cfg, recipe, acc, model, self.optimizer, self.scheduler, self.tokenizer, self.writer, self.resumable_state,
            [rf.name for rf in self.reward_fns], trainable_module=self.policy if spec.value_model else None,
        )  # fmt: skip
        self.outputs.tensors = self.rollouts.tensors

    # ------------------------------------------------------------------------------------------------ building
    def build_policy_model(self):
        """The LoRA model of `model.*`, its attention kernel set."""
        m = self.cfg.model
        lora = m.lora
        model = load_policy(
            m.path, m.dtype, lora.r, lora.alpha, lora.dropout, lora.target_modules, m.gradient_checkpointing,
            m.trust_remote_code,
        )  # fmt: skip
        set_attention(model, m.attn_implementation)
        n_train, n_all = count_parameters(model)
        log.info("policy %s: %.2fM trainable of %.1fM parameters", m.path, n_train / 1e6, n_all / 1e6)
        return model

    def episode_runner(self) -> EpisodeRunner | None:
        """Multi-turn episodes when the recipe names an environment (None: single-turn). Ranks agree on each turn
        (`any_running` is an all-reduce) so that they make the same number of engine calls."""
        e, acc = self.cfg.env, self.accelerator
        if self.cfg.agent.run is not None:  # an agent program over the OpenAI-compatible endpoint (rlhf/agents/)
            return build_agent_runner(self.cfg, self.tokenizer, acc)
        if not self.has_env:
            return None
        any_running = None
        if acc.num_processes > 1:
            any_running = lambda flag: all_sum(acc, float(flag)).item() > 0  # noqa: E731
        columns = [ps.columns for ps in (self.train_set, self.eval_set) if ps is not None]
        return EpisodeRunner(
            build_env(e.name, e.kwargs, e.tools, e.factory, self.tokenizer, columns), self.tokenizer, e.max_turns,
            e.max_tokens, e.reward_weight, self.cfg.data.system_prompt, any_running,
        )  # fmt: skip

    def build_collector(self) -> Collector:
        """Steps 1-4, with dynamic sampling wrapped around the draws when the recipe asks for it."""
        acc, a = self.accelerator, self.cfg.algorithm
        dynamic = None
        if a.dynamic_sampling:
            dynamic = DynamicSampling(
                a.draw_prompts,
                self.prompts_per_rank * a.num_minibatches,
                a.max_refills,
                any_rank=lambda flag: all_sum(acc, float(flag)).item() > 0,
                total=lambda x: all_sum(acc, float(x)).item(),
                pad_id=self.tokenizer.pad_token_id,
            )
        return Collector(
            build_collector_settings(self.cfg, self.spec), acc, self.sampler, self.train_set, self.engine,
            self.reward_fns, self.policy, self.peft_model, self.episodes, self.teacher, dynamic, self.spec.inputs,
            self.tokenizer,
        )  # fmt: skip

    def resumable_state(self) -> dict:
        return {
            **self.rollouts.state(),  # the sampler, and the prompts drawn ahead and not yet trained on
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
            resume, self.accelerator, self.peft_model, self.optimizer, self.scheduler,
            trainable_module=self.policy if self.spec.value_model else None,
        )  # fmt: skip
        o = self.cfg.optim
        hyper = dict(betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        apply_hyperparameters(self.optimizer, self.scheduler, lrs, **hyper)
        if self.resume_changes:
            log.info("resuming with changed settings: %s", "; ".join(self.resume_changes))
            if self.is_main:
                append_history(self.out, state["step"], self.resume_changes)
        self.rollouts.load_state(state, resume)
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
        acc, loop = self.accelerator, self.loop
        last_metrics: dict = {}
        bar = progress_bar(loop.max_steps, self.start_step, loop.progress_bar and self.is_main, loop.name)
        bad_steps, stop = 0, StopRequest(can_abort=acc.num_processes == 1)
        try:
            if self.eval_set is not None and self.start_step == 0:
                try:
                    with stop.abortable():
                        last_metrics.update(self.evaluate(step=0))
                except StopNow:
                    return self.stop_before(1, self.step_start_state(), stop, last_metrics, "the step-0 evaluation")
            self.rollouts.start(self.start_step)
            t_start, step = time.perf_counter(), self.start_step

            for step in range(self.start_step + 1, loop.max_steps + 1):
                t_step = time.perf_counter()
                before = self.step_start_state()
                # 1-4. prompts, episodes, rewards, reference and pre-update log-probs: the weights are still those of
                # the last completed step, so on a stop request this work is dropped and that step saved
                try:
                    with stop.abortable():
                        record = self.rollouts.take(step)
                except StopNow:
                    return self.stop_before(step, before, stop, last_metrics)
                if acc.num_processes > 1 and all_sum(acc, float(stop.requested)).item() > 0:
                    return self.stop_before(step, before, stop, last_metrics)  # every rank agrees at this point
                metrics: dict[str, float] = dict(record.metrics)

                # 5. advantages, [B, C] per token, by the algorithm's estimator; what it observed updates the state
                est = self.advantages(record)
                est.observed.apply(self.kl_ctl, self.reward_stats)
                metrics.update(est.metrics)

                # 6. update (the first value.warmup_steps steps train only the value model)
                t0 = time.perf_counter()
                metrics.update(self.update(record.batch(est), warmup=step <= loop.value_warmup_steps))
                bad_steps = bad_steps + 1 if metrics["optim/skipped_steps"] else 0
                if bad_steps >= loop.max_bad_steps:
                    raise FloatingPointError(
                        f"{bad_steps} steps in a row had a non-finite loss or gradient (skipped, weights untouched); "
                        "lower optim.lr, set optim.max_grad_norm, or check the rewards. The last checkpoint under "
                        f"{self.out / 'checkpoints'} is intact"
                    )
                metrics["time/train"] = time.perf_counter() - t0
                self.rollouts.trained(step, record)  # with max_staleness: the batch of step + K + 1 is queued

                # 7. log, evaluate, checkpoint
                ending = self.step_done(step, record, metrics, t_step, t_start, stop, bar, last_metrics)
                if ending == "stopped":
                    return last_metrics
                if ending == "time_up":
                    break
            self.outputs.finish(step, last_metrics)
        finally:
            stop.restore()
            if bar:
                bar.close()  # so an error message starts on a line of its own
            self.rollouts.close()
            self.engine.close()
            if self.run_lock is not None:
                self.run_lock.release()
        acc.end_training()
        return last_metrics

    def step_done(
        self, step: int, record: StepRecord, metrics: dict, t_step: float, t_start: float, stop: StopRequest, bar,
        last_metrics: dict,
    ) -> str | None:  # fmt: skip
        """Step 7: metrics, the evaluation when due, the log line, samples and checkpoints. Returns "stopped" (a stop
        request: saved, the run exits), "time_up" (train.max_minutes reached: the run finishes) or None."""
        acc, loop = self.accelerator, self.loop
        metrics.update(rollout_metrics(acc, record.rollout, record.rewards, record.per_fn, self.reward_fns))
        if record.episode_stats is not None:
            metrics.update(episode_metrics(acc, record.episode_stats, record.per_fn["env"]))
        metrics["time/step"] = time.perf_counter() - t_step
        # the time budget is agreed over ranks so that every rank stops after the same step
        time_up = bool(loop.max_minutes) and all_sum(acc, time.perf_counter() - t_start).item() / (
            60 * acc.num_processes
        ) >= (loop.max_minutes or 0)
        last = step == loop.max_steps or time_up
        if self.eval_set is not None and (step % loop.eval_every == 0 or last):
            try:
                with stop.abortable():
                    metrics.update(self.evaluate(step=None))
            except StopNow:  # the step trained: it is logged and saved below, without its evaluation
                log.warning("stop requested (%s): the evaluation of step %d is dropped", stop.name, step)
        self.writer.log(metrics, step)
        last_metrics.update(metrics)
        self.outputs.step_done(step, metrics, record.prompts, record.rollout, record.rewards, bar)
        if loop.save_every and step % loop.save_every == 0 and not last:
            self.outputs.save(step)
        if all_sum(acc, float(stop.requested)).item() > 0:
            log.warning("stop requested (%s): saving a checkpoint at step %d and exiting", stop.name, step)
            self.outputs.save(step)
            return "stopped"
        if time_up:
            log.info("train.max_minutes=%s reached after step %d: finishing the run", loop.max_minutes, step)
            return "time_up"
        return None

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
        msg = "stop requested (%s) during %s: its unfinished work is dropped; saving step %d and exiting"
        log.warning(msg, stop.name, where or f"step {step}", done)
        if not (self.out / "checkpoints" / f"step-{done:06d}" / "COMPLETE").is_file():
            self.outputs.save(done)
        return last_metrics

    # ------------------------------------------------------------------------------------------------ the steps
    def advantages(self, record: StepRecord) -> Advantages:
        """Step 5: the algorithm's estimator (knobs bound at build time) on the record, with the KL coefficient and
        reward moments as they are before the step. Changes nothing: the caller applies `observed`."""
        return self.estimate(record.advantage_inputs(self.kl_ctl.value, self.reward_stats), self.stats)

    def update(self, batch: StepBatch, warmup: bool) -> dict[str, float]:
        """Step 6: minibatch steps, or (update = trpo) the value model's fit then the policy's natural step."""
        if self.trpo is None:
            return self.updater(batch, warmup)
        metrics = self.updater(batch, warmup=True)  # the value model alone
        metrics["value/warmup"] = float(warmup)
        if not warmup:
            total = lambda x: all_sum(self.accelerator, x)  # noqa: E731
            metrics.update(trpo_update(self.accelerator.unwrap_model(self.policy), batch, total, self.trpo))
            self.engine.weights_updated()
        return metrics

    def evaluate(self, step: int | None) -> dict:
        """Greedy held-out accuracy through the same engine; logged at `step` when given."""
        e = self.eval_settings
        self.policy.eval()
        with self.rollouts.evaluation():  # with max_staleness: the worker's engine, the current weights
            metrics, _ = greedy_eval(
                self.engine, self.eval_set, self.reward_fns, e.max_new_tokens, e.batch_size, e.success_threshold,
                self.accelerator, episodes=self.episodes, stop=list(e.stop),
            )  # fmt: skip
        if step is not None:
            self.writer.log(metrics, step)
            if self.is_main:
                n, seconds = metrics["eval/num_samples"], metrics["time/eval"]
                log.info("step %d eval accuracy %.3f (%d prompts, %.1fs)", step, metrics["eval/accuracy"], n, seconds)
        return metrics


# the name this class had when GRPO was its only algorithm (kept for code written against it)
GRPOTrainer = Trainer
