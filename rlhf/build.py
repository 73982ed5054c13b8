"""Builders the trainer calls once: the prompt sets, the value model, the optimizer and its schedule.

The recipe stops here: each builder reads the config and hands plain arguments to the library."""

from __future__ import annotations

import logging

import torch
from torch import nn

from rlhf.algorithms import KLPlace
from rlhf.config import ArithmeticConfig, Config
from rlhf.data import arithmetic_problems, build_prompt_set, load_eval_rows, load_rows, rename_columns
from rlhf.models import set_attention
from rlhf.objective import UpdateSettings
from rlhf.run_utils import lr_lambda

log = logging.getLogger("rlhf")


def arithmetic_rows(a: ArithmeticConfig, seed: int, template: str | None = None) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows) of the built-in arithmetic task as `data.arithmetic` describes it; `template`
    rewords the same problems (the demo's generalisation check)."""
    return arithmetic_problems(
        a.min_operand,
        a.max_operand,
        a.operators,
        a.num_train,
        a.num_eval,
        a.template if template is None else template,
        b_range=a.operand_b_range,
        seed=seed,
    )


def build_datasets(cfg: Config, tokenizer):
    """(train PromptSet, eval PromptSet or None)."""
    d = cfg.data
    if d.path == "arithmetic":
        train_rows, eval_rows = arithmetic_rows(d.arithmetic, cfg.seed)
    elif cfg.eval.every:
        # evaluation rows are never training rows: a separate file or split, else a seeded slice held out of training
        e = cfg.eval
        train_rows, eval_rows, where = load_eval_rows(
            load_rows(d.path, d.name, d.split), d.path, d.name, d.split, e.split, e.path, e.num_samples, cfg.seed
        )
        log.info("evaluation rows: %s", where)
    else:
        train_rows, eval_rows = load_rows(d.path, d.name, d.split), []
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


def build_value_model(cfg: Config, model) -> torch.nn.Module:
    """value.model = head: a zero-initialised head on the policy's trunk; separate: a critic with its own LoRA."""
    from rlhf.value import ValueHead, load_critic

    m, v = cfg.model, cfg.value
    if v.model == "head":
        return ValueHead(model.get_base_model().config.hidden_size)
    lora = m.lora
    critic = load_critic(
        m.path, m.dtype, lora.r, lora.alpha, lora.dropout, lora.target_modules, v.init_from,
        m.gradient_checkpointing, m.trust_remote_code,
    )  # fmt: skip
    set_attention(critic.trunk, m.attn_implementation)
    return critic


def build_optimizer(cfg: Config, policy_params: list[tuple[str, nn.Parameter]], value_params: list | None):
    """AdamW over the policy's adapter, (name, parameter) pairs (empty when the algorithm steps the policy itself, as
    TRPO does), and the value parameters (their own learning rate when value.lr is set); the LR schedule counts
    optimizer steps. With optim.lora_plus_ratio the adapters' B matrices get their own group at that multiple of the
    learning rate (LoRA+)."""
    o, t, a = cfg.optim, cfg.train, cfg.algorithm
    groups = lora_plus_groups(policy_params, o.lr, o.lora_plus_ratio)
    if value_params is not None:
        groups.append({"params": value_params, "lr": cfg.value.lr or o.lr})
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    total_updates = t.max_steps * a.num_iterations * a.num_minibatches
    # The scheduler stays unprepared: accelerate's wrapper steps it once per process, which assumes a sharded
    # dataloader; here it steps once per optimizer step.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o.schedule, o.warmup_steps, total_updates))
    return optimizer, scheduler


def lora_plus_groups(named: list[tuple[str, nn.Parameter]], lr: float, ratio: float) -> list[dict]:
    """Optimizer groups of the policy's trainable parameters: one at `lr`, or with ratio != 1 the LoRA B matrices
    (`lora_B` in the name) apart at ratio * lr (LoRA+, Hayou et al. 2024, arXiv:2402.12354: B and A want different
    step sizes, and a larger one for B trains faster at the same stability)."""
    if not named:
        return []
    if ratio == 1.0:
        return [{"params": [p for _, p in named]}]
    b = [p for n, p in named if "lora_B" in n]
    if not b:
        raise ValueError(
            "optim.lora_plus_ratio is set but the policy has no LoRA B matrices (no parameter named `lora_B`); "
            "remove optim.lora_plus_ratio"
        )
    return [{"params": [p for n, p in named if "lora_B" not in n]}, {"params": b, "lr": lr * ratio}]


ASYNC_TIS_CAP = 2.0  # the cap of Yao et al. 2025, the default when rollouts run ahead of the update


def tis_cap(cap: float | None, max_staleness: int) -> float | None:
    """algorithm.tis_cap as the loss reads it: 0 = off; none = off, or ASYNC_TIS_CAP with asynchronous rollouts
    (the old log-probs are then the sampling version's and the weights correct the sampler against the trainer)."""
    if cap == 0:
        return None
    return ASYNC_TIS_CAP if cap is None and max_staleness > 0 else cap


def build_update_settings(cfg: Config, spec) -> UpdateSettings:
    """What the minibatch update reads, from the recipe and the algorithm's row."""
    a = cfg.algorithm
    return UpdateSettings(
        policy_loss=spec.policy_loss,
        loss_knobs={k: getattr(a, k) for k in spec.loss_knobs},
        num_iterations=a.num_iterations,
        num_minibatches=a.num_minibatches,
        micro_batch_size=cfg.train.micro_batch_size,
        loss_agg=a.loss_agg,
        max_len=cfg.rollout.max_new_tokens,
        beta=a.beta,
        kl_in_loss=spec.kl is KLPlace.LOSS,
        kl_estimator=a.kl_estimator or spec.default_kl_estimator,
        target_kl=a.target_kl,
        value_coef=cfg.value.coef,
        value_clip=cfg.value.clip if "value.clip" in spec.knobs else 0.0,
        uses_value=spec.value_model,
        max_grad_norm=cfg.optim.max_grad_norm,
        entropy_coef=a.entropy_coef,
        tis_cap=tis_cap(a.tis_cap, cfg.train.max_staleness),
        tis_seq_threshold=a.tis_seq_threshold,
    )


def build_teacher(cfg: Config, tokenizer) -> torch.nn.Module:
    """On-policy distillation's teacher, frozen: `algorithm.teacher.path` (default: the student's base) with its
    adapter folded in. Its tokenizer must be the student's, token for token."""
    from rlhf.config import ConfigError
    from rlhf.dtypes import torch_dtype
    from rlhf.models import load_policy, load_tokenizer, resolve_model_path
    from rlhf.policy import Policy

    t, m = cfg.algorithm.teacher, cfg.model
    path = t.path or m.path
    if load_tokenizer(path, m.trust_remote_code).get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            f"algorithm.teacher.path={path!r} has another tokenizer than the student's model.path={m.path!r}: "
            "distillation compares log-probs of the same token ids, so the two must share a vocabulary"
        )
    if t.adapter:
        model = load_policy(path, t.dtype, adapter_path=t.adapter, trust_remote_code=m.trust_remote_code)
        model = model.merge_and_unload()
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            resolve_model_path(path), dtype=torch_dtype(t.dtype), trust_remote_code=m.trust_remote_code
        )
    model.requires_grad_(False)
    set_attention(model, m.attn_implementation)
    log.info("distillation teacher: %s%s", path, f" + adapter {t.adapter}" if t.adapter else "")
    return Policy(model).eval()
