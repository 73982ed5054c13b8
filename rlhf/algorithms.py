"""The algorithm table: one row per `algorithm.name`, and nothing else decides what an algorithm does.

A row says which advantage estimator it uses (`rlhf.estimators`, with the `algorithm.*` knobs passed to it), which
policy loss (`rlhf.losses`; every policy loss has the signature `loss(logprobs, old_logprobs, advantages, mask, *,
agg, num_tokens, max_len, num_seqs, **knobs) -> (loss, metrics)` and its metrics hold at least `clipfrac` and
`approx_kl`), whether a value model exists, where beta * KL(pi || pi_ref) goes (a loss term or a per-token reward
penalty), how the update is taken (mu passes of clipped minibatch steps, or TRPO's natural step with the value model
fitted by the optimizer), and every config key it reads. A knob that the chosen algorithm does not read is a config
error naming the algorithms that do (`unread_knobs`).

Adding an algorithm: write its estimator or loss (a new file, or a function beside its kin) and add one row here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from rlhf import estimators
from rlhf.losses import cispo_loss, clipped_pg_loss, gspo_loss, gspo_token_loss, sapo_loss

# config keys shared by families of rows
CLIPPED_MINIBATCH = ("algorithm.loss_agg", "algorithm.target_kl")
VALUE_MODEL = ("value.model", "value.init_from", "value.lr", "value.coef", "value.warmup_steps")
KL_IN_REWARD = (
    "algorithm.gamma",
    "algorithm.lam",
    "algorithm.kl_target",
    "algorithm.kl_horizon",
    "algorithm.missing_eos_penalty",
    "algorithm.reward_norm",
    "algorithm.whiten_advantages",
)
KL_IN_LOSS = ("algorithm.kl_estimator",)  # the value family reads it through its estimator
# what the minibatch update reads beside the loss: entropy bonus, truncated importance sampling
MINIBATCH = ("algorithm.entropy_coef", "algorithm.tis_cap", "algorithm.tis_seq_threshold")
CLIPPED = ("clip_low", "clip_high", "clip_ratio_c")  # the knobs of clipped_pg_loss and the GSPO losses
TRPO_STEP = tuple(
    f"algorithm.trpo.{k}"
    for k in ("max_kl", "cg_iters", "damping", "fisher_fraction", "backtrack_steps", "backtrack_ratio")
)


class KLPlace(str, Enum):
    """Where beta * KL(pi || pi_ref) goes."""

    LOSS = "loss"  # + beta * KL as a loss term (k3 by default)
    REWARD = "reward"  # - beta * KL_t in each token's reward (k1 by default)


class UpdateKind(str, Enum):
    """How the policy's update is taken."""

    MINIBATCH = "minibatch"  # mu passes x minibatch optimizer steps (rlhf.update)
    TRPO = "trpo"  # a natural-gradient step (rlhf.trpo); the optimizer fits only the value model


@dataclass(frozen=True)
class Algorithm:
    """One row of the table."""

    estimator: Callable[..., estimators.Advantages]  # (AdvantageInputs, BatchStats, **estimator_knobs)
    estimator_knobs: tuple[str, ...] = ()  # names in `algorithm.*` passed to the estimator as keywords
    policy_loss: Callable = clipped_pg_loss  # a rlhf.objective.PolicyLoss
    loss_knobs: tuple[str, ...] = CLIPPED  # names in `algorithm.*` passed to the policy loss
    value_model: bool = False  # learns V(s_t): a head on the policy's trunk or a separate critic (`value.model`)
    kl: KLPlace = KLPlace.LOSS
    update: UpdateKind = UpdateKind.MINIBATCH
    one_step: bool = False  # exactly one on-policy step per rollout (num_iterations = num_minibatches = 1)
    min_group: int = 1  # smallest rollout.num_generations that gives the estimator a baseline
    other_knobs: tuple[str, ...] = ()  # further config keys it reads (dotted paths)
    teacher: bool = False  # a frozen teacher scores the sampled tokens in step 4 (algorithm.teacher)
    # further estimator inputs: {name: (collector, rollout) -> [B] or [B, C]}, in the step record's `extra`
    inputs: Mapping[str, Callable] = field(default_factory=dict)
    summary: str = ""

    @property
    def knobs(self) -> tuple[str, ...]:
        """Every algorithm-specific config key this row reads, as dotted paths."""
        own = [f"algorithm.{k}" for k in (*self.estimator_knobs, *self.loss_knobs)]
        return tuple(dict.fromkeys([*own, *self.other_knobs]))

    @property
    def default_kl_estimator(self) -> str:
        return "k3" if self.kl is KLPlace.LOSS else "k1"

    @property
    def trainable_state(self) -> str:
        """What a checkpoint of this row holds besides the sampler: rows with the same text restore from each other's
        checkpoints (same trainable parameters and optimizer groups)."""
        if self.update is UpdateKind.TRPO:
            return "the policy's adapter (stepped outside the optimizer) and a value model (the optimizer's only group)"
        if self.value_model:
            return "the policy's adapter and a value model, in one optimizer"
        return "the policy's adapter alone"


_VALUE_FAMILY = dict(
    estimator=estimators.gae_with_kl_reward,
    estimator_knobs=("gamma", "lam", "kl_estimator", "missing_eos_penalty", "reward_norm", "whiten_advantages"),
    value_model=True,
    kl=KLPlace.REWARD,
)

ALGORITHMS: dict[str, Algorithm] = {
    "grpo": Algorithm(
        estimators.grpo,
        ("scale_by_std", "std_level"),
        other_knobs=(*CLIPPED_MINIBATCH, *MINIBATCH, *KL_IN_LOSS),
        min_group=2,
        summary="group-normalised advantages (DeepSeekMath, arXiv:2402.03300); Dr. GRPO without the std",
    ),
    "rloo": Algorithm(
        estimators.rloo,
        other_knobs=(*CLIPPED_MINIBATCH, *MINIBATCH, *KL_IN_LOSS),
        min_group=2,
        summary="leave-one-out baseline (arXiv:2402.14740)",
    ),
    "reinforce": Algorithm(
        estimators.reinforce,
        ("gamma",),
        other_knobs=(*CLIPPED_MINIBATCH, *MINIBATCH, *KL_IN_LOSS),
        summary="Monte-Carlo return, no baseline (Williams 1992)",
    ),
    "reinforce_baseline": Algorithm(
        estimators.reinforce_baseline,
        ("gamma",),
        other_knobs=(*CLIPPED_MINIBATCH, *MINIBATCH, *KL_IN_LOSS),
        summary="Monte-Carlo return minus the batch-mean reward",
    ),
    "reinforce_pp": Algorithm(
        estimators.reinforce_pp,
        ("gamma",),
        other_knobs=(*CLIPPED_MINIBATCH, *MINIBATCH, *KL_IN_LOSS),
        summary="returns whitened over the global batch (REINFORCE++, arXiv:2501.03262)",
    ),
    "gspo": Algorithm(
        estimators.grpo,
        ("scale_by_std", "std_level"),
        policy_loss=gspo_loss,
        other_knobs=(*CLIPPED_MINIBATCH, *MINIBATCH, *KL_IN_LOSS),
        min_group=2,
        summary="GRPO's advantages, one importance ratio per sequence (geometric mean of its token ratios) clipped "
        "per sequence (GSPO, arXiv:2507.18071); set clip_low/clip_high to its small range, e.g. 3e-4 / 4e-4",
    ),
    "gspo_token": Algorithm(
        estimators.grpo,
        ("scale_by_std", "std_level"),
        policy_loss=gspo_token_loss,
        other_knobs=(*CLIPPED_MINIBATCH, *MINIBATCH, *KL_IN_LOSS),
        min_group=2,
        summary="GSPO-token (arXiv:2507.18071): the sequence ratio's value with per-token gradients",
    ),
    "cispo": Algorithm(
        estimators.grpo,
        ("scale_by_std", "std_level"),
        policy_loss=cispo_loss,
        loss_knobs=("clip_high",),
        other_knobs=(*CLIPPED_MINIBATCH, *MINIBATCH, *KL_IN_LOSS),
        min_group=2,
        summary="GRPO's advantages, the importance weight clipped above and stop-gradiented, every token keeps its "
        "REINFORCE gradient (CISPO, MiniMax-M1, arXiv:2506.13585)",
    ),
    "sapo": Algorithm(
        estimators.grpo,
        ("scale_by_std", "std_level"),
        policy_loss=sapo_loss,
        loss_knobs=("tau_pos", "tau_neg"),
        other_knobs=(*CLIPPED_MINIBATCH, *MINIBATCH, *KL_IN_LOSS),
        min_group=2,
        summary="GRPO's advantages, a smooth sigmoid gate on the ratio instead of the hard clip (SAPO, "
        "arXiv:2511.20347)",
    ),
    "distill": Algorithm(
        estimators.distillation,
        other_knobs=(
            *CLIPPED_MINIBATCH,
            *MINIBATCH,
            *KL_IN_LOSS,
            "algorithm.teacher.path",
            "algorithm.teacher.adapter",
            "algorithm.teacher.dtype",
        ),
        teacher=True,
        summary="on-policy distillation: the student samples, a teacher (algorithm.teacher) scores the same tokens, "
        "advantage = log pi_teacher - log pi_student per token (GKD, arXiv:2306.13649; Tinker; Qwen3)",
    ),
    "ppo": Algorithm(
        **_VALUE_FAMILY,
        other_knobs=(*CLIPPED_MINIBATCH, *MINIBATCH, *KL_IN_REWARD, *VALUE_MODEL, "value.clip"),
        summary="GAE on a learned value, per-token KL in the reward, clipped value loss (Schulman 2017; Ziegler 2019)",
    ),
    "actor_critic": Algorithm(
        **_VALUE_FAMILY,
        loss_knobs=(),
        other_knobs=("algorithm.loss_agg", *MINIBATCH, *KL_IN_REWARD, *VALUE_MODEL),
        one_step=True,
        summary="the PPO advantages, one on-policy gradient step per rollout",
    ),
    "trpo": Algorithm(
        **_VALUE_FAMILY,
        loss_knobs=(),
        update=UpdateKind.TRPO,
        one_step=True,
        other_knobs=(*KL_IN_REWARD, *VALUE_MODEL, *TRPO_STEP),
        summary="the PPO advantages, a natural-gradient step inside a KL trust region (Schulman 2015)",
    ),
}


DEFAULT_ALGORITHM = next(iter(ALGORITHMS))  # the table's first row: what a config without algorithm.name runs


def get_algorithm(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"algorithm.name={name!r} is not one of {', '.join(ALGORITHMS)}") from None


def all_knobs() -> set[str]:
    """Every config key some row claims: keys outside this set are read by every algorithm."""
    return {k for row in ALGORITHMS.values() for k in row.knobs}


def unread_knobs(name: str, changed: set[str]) -> list[str]:
    """Messages for the keys in `changed` (dotted paths set away from their defaults) that algorithm `name` does
    not read but another row does."""
    row = ALGORITHMS[name]
    out = []
    for key in sorted(changed & all_knobs() - set(row.knobs)):
        users = [n for n, r in ALGORITHMS.items() if key in r.knobs]
        out.append(
            f"{key} is not read by algorithm.name={name}; it is used by {', '.join(users)}. Remove it from the "
            "recipe, or pick one of those algorithms"
        )
    return out
