"""The training loop's settings objects, built once from the recipe and the algorithm's row: the config stops here
(and at `rlhf.build`), and the loop reads these plain values.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.algorithms import Algorithm
from rlhf.collector import CollectorSettings
from rlhf.config import Config
from rlhf.estimators import bind_knobs
from rlhf.trpo import TRPOSettings


@dataclass(frozen=True)
class LoopSettings:
    """What `Trainer.train` reads between the steps."""

    name: str  # algorithm.name (the progress bar's label)
    max_steps: int
    save_every: int = 0
    max_bad_steps: int = 3
    max_minutes: float | None = None
    eval_every: int = 0
    value_warmup_steps: int = 0  # value-model rows: steps that train only the value model
    progress_bar: bool = True


@dataclass(frozen=True)
class EvalSettings:
    """The held-out greedy evaluation's settings."""

    max_new_tokens: int
    batch_size: int = 64
    success_threshold: float = 1.0
    stop: tuple[str, ...] = ()


def build_loop_settings(cfg: Config, spec: Algorithm) -> LoopSettings:
    t = cfg.train
    return LoopSettings(
        name=cfg.algorithm.name,
        max_steps=t.max_steps,
        save_every=t.save_every,
        max_bad_steps=t.max_bad_steps,
        max_minutes=t.max_minutes,
        eval_every=cfg.eval.every,
        value_warmup_steps=cfg.value.warmup_steps if spec.value_model else 0,
        progress_bar=cfg.logging.progress_bar,
    )


def build_eval_settings(cfg: Config) -> EvalSettings:
    e = cfg.eval
    return EvalSettings(e.max_new_tokens or cfg.rollout.max_new_tokens, e.batch_size, e.success_threshold,
                        tuple(cfg.rollout.stop))  # fmt: skip


def build_collector_settings(cfg: Config, spec: Algorithm) -> CollectorSettings:
    """Steps 1-4 from the recipe: what is drawn, how it is sampled, and which log-probs and values the row needs."""
    r, a = cfg.rollout, cfg.algorithm
    on_policy = a.num_iterations == 1 and a.num_minibatches == 1  # the update's own forward gives the old log-probs
    return CollectorSettings(
        prompts_per_draw=cfg.train.prompts_per_step * a.num_minibatches,
        num_generations=r.num_generations,
        max_new_tokens=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        stop=tuple(r.stop),
        micro_batch_size=cfg.train.micro_batch_size,
        mask_truncated=r.mask_truncated,
        reference=a.beta > 0,
        old_logprobs=not on_policy,
        values=spec.value_model,
        env_reward_weight=cfg.agent.reward_weight if cfg.agent.run else cfg.env.reward_weight,
    )


def build_trpo_settings(cfg: Config) -> TRPOSettings:
    tr = cfg.algorithm.trpo
    return TRPOSettings(tr.max_kl, tr.cg_iters, tr.damping, tr.fisher_fraction, tr.backtrack_steps,
                        tr.backtrack_ratio, cfg.train.micro_batch_size)  # fmt: skip


def build_estimator(cfg: Config, spec: Algorithm):
    """The row's estimator with its `algorithm.*` knobs bound: (AdvantageInputs, BatchStats) -> Advantages."""
    return bind_knobs(spec.estimator, {k: getattr(cfg.algorithm, k) for k in spec.estimator_knobs})
