"""Recipe YAML -> the typed dataclasses of `rlhf.config_schema`, with `key.sub=value` overrides and validation before
any model loads. The schema's classes are importable from here too.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from rlhf.config_schema import (
    AlgorithmConfig,
    ArithmeticConfig,
    Config,
    ConfigError,
    DataConfig,
    EnvConfig,
    EvalConfig,
    LoggingConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    RewardSpec,
    RolloutConfig,
    TeacherConfig,
    TrainConfig,
    TRPOConfig,
    ValueConfig,
    VLLMConfig,
)
from rlhf.config_schema import doc as doc
from rlhf.dtypes import resolve_recipe_dtypes
from rlhf.envs.registry import env_config_problem

__all__ = [
    "AlgorithmConfig",
    "ArithmeticConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EnvConfig",
    "EvalConfig",
    "LoggingConfig",
    "LoraConfig",
    "ModelConfig",
    "OptimConfig",
    "RewardSpec",
    "RolloutConfig",
    "TeacherConfig",
    "TrainConfig",
    "TRPOConfig",
    "ValueConfig",
    "VLLMConfig",
    "apply_override",
    "check_world",
    "doc",
    "flat_items",
    "from_dict",
    "load_config",
    "save_config",
    "to_dict",
    "unread_knobs",
    "validate",
]


# ---------------------------------------------------------------------------------------------------------------------
# building dataclasses from plain dicts, with errors that name the key


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where it is lossless (int -> float)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(o) for o in options)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(c) for c in get_args(tp))
            raise ConfigError(f"{key}: {value!r} is not one of {choices}")
        return value
    if origin is list:
        (item_tp,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r} (write it as [a, b] in YAML)")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _unknown_key(cls: type, name: str, prefix: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f"did you mean `{prefix}{close[0]}`?" if close else f"valid keys here: {', '.join(names)}"
    return ConfigError(f"unknown key `{prefix}{name}`: {hint}")


def from_dict(cls: type, data: Any, key: str = "") -> Any:
    """Build dataclass `cls` from a plain mapping; unknown keys and wrong types raise ConfigError."""
    prefix = f"{key}." if key else ""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{key or 'recipe'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for name in data:
        if name not in known:
            raise _unknown_key(cls, str(name), prefix)
    kwargs = {name: _coerce(value, hints[name], f"{prefix}{name}") for name, value in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> Any:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------------------------------------------------------
# overrides


def apply_override(tree: dict, assignment: str) -> None:
    """Apply `a.b.c=value` to a nested dict; the value is parsed as YAML (`1e-4`, `[a, b]`, `true`, `null`)."""
    if "=" not in assignment:
        raise ConfigError(f"override `{assignment}` is not of the form key.sub=value")
    path, raw = assignment.split("=", 1)
    parts = path.strip().split(".")
    value = yaml.safe_load(raw) if raw.strip() else ""
    node = tree
    for i, part in enumerate(parts):
        if isinstance(node, list) and not part.isdigit():
            where = ".".join(parts[:i])
            raise ConfigError(
                f"override `{path}`: `{where}` is a list; give an item's index (`{where}.0.{'.'.join(parts[i:])}=...`) "
                f"or the whole list (`{where}=[...]`)"
            )
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override `{path}`: `{'.'.join(parts[:i])}` is a value, not a section of keys")
        if i == len(parts) - 1:
            break
        if part.isdigit() and isinstance(node, list):
            idx = int(part)
            if idx >= len(node):
                raise ConfigError(f"override `{path}`: list `{'.'.join(parts[:i])}` has {len(node)} items")
            node = node[idx]
            continue
        nxt = node.setdefault(part, {})
        if nxt is None:
            nxt = node[part] = {}
        node = nxt
    last = parts[-1]
    if isinstance(node, list) and last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value


def _defaults_tree() -> dict:
    return to_dict(Config())


def load_config(recipe: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a recipe YAML (or the defaults when `recipe` is None), apply overrides, validate."""
    tree: dict = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(
                f"recipe `{recipe}` not found (give a YAML file, e.g. recipes/grpo_arithmetic_smollm2.yaml)"
            )
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe `{recipe}` is not valid YAML: {e}") from None
    if "rewards" in tree or any(o.startswith("rewards.") for o in overrides or []):
        tree.setdefault("rewards", _defaults_tree()["rewards"])
    for assignment in overrides or []:
        apply_override(tree, assignment)
    cfg = from_dict(Config, tree)
    validate(cfg)
    resolve_recipe_dtypes(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Combinations that cannot work, caught before any model loads."""

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    from rlhf.algorithms import ALGORITHMS

    r, t, a, o = cfg.rollout, cfg.train, cfg.algorithm, cfg.optim
    if a.name not in ALGORITHMS:
        close = difflib.get_close_matches(a.name, list(ALGORITHMS), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise ConfigError(f"algorithm.name={a.name!r} is not an algorithm: {hint}choose one of {', '.join(ALGORITHMS)}")
    spec = ALGORITHMS[a.name]
    need(r.num_generations >= 1, f"rollout.num_generations must be >= 1, got {r.num_generations}")
    need(
        r.num_generations >= spec.min_group,
        f"rollout.num_generations must be >= {spec.min_group} for {a.name} (a group of one has no baseline)",
    )
    unread = unread_knobs(cfg)
    need(not unread, "; ".join(unread))
    need(0 < a.gamma <= 1, "algorithm.gamma must be in (0, 1]")
    need(0 <= a.lam <= 1, "algorithm.lam must be in [0, 1]")
    need(a.kl_target is None or a.kl_target > 0, "algorithm.kl_target must be > 0 (or none for a fixed beta)")
    need(a.kl_target is None or a.beta > 0, "algorithm.kl_target needs an initial algorithm.beta > 0 to adapt")
    need(a.kl_horizon >= 1, "algorithm.kl_horizon must be >= 1")
    need(a.target_kl is None or a.target_kl > 0, "algorithm.target_kl must be > 0 (or none)")
    v, tr = cfg.value, a.trpo
    need(v.coef >= 0 and v.clip >= 0 and v.warmup_steps >= 0, "value.coef, value.clip, value.warmup_steps must be >= 0")
    need(v.lr is None or v.lr > 0, "value.lr must be > 0 (or none = optim.lr)")
    need(
        v.init_from is None or v.model == "separate",
        "value.init_from needs value.model: separate (a reward model's trunk cannot be the policy's)",
    )
    need(
        not spec.one_step or (a.num_iterations == 1 and a.num_minibatches == 1),
        f"{a.name} takes one on-policy step per rollout: set algorithm.num_iterations and num_minibatches to 1 "
        "(or use algorithm.name: ppo for several clipped passes)",
    )
    need(
        tr.max_kl > 0 and tr.cg_iters >= 1 and tr.damping >= 0,
        "algorithm.trpo: max_kl > 0, cg_iters >= 1, damping >= 0",
    )
    need(0 < tr.fisher_fraction <= 1, "algorithm.trpo.fisher_fraction must be in (0, 1]")
    need(tr.backtrack_steps >= 1 and 0 < tr.backtrack_ratio < 1, "algorithm.trpo: backtrack_steps >= 1, 0 < ratio < 1")
    need(r.max_new_tokens >= 1, "rollout.max_new_tokens must be >= 1")
    need(r.temperature > 0, "rollout.temperature must be > 0 (use eval for greedy decoding)")
    need(0 < r.top_p <= 1, "rollout.top_p must be in (0, 1]")
    need(r.top_k >= 0, "rollout.top_k must be >= 0 (0 = off)")
    need(r.batch_size >= 0, "rollout.batch_size must be >= 0 (0 = all at once)")
    vl = r.vllm
    need(vl.kv_cache_gib > 0, "rollout.vllm.kv_cache_gib must be > 0")
    need(0 < vl.gpu_memory_utilization <= 1, "rollout.vllm.gpu_memory_utilization must be in (0, 1]")
    need(vl.max_model_len >= 0, "rollout.vllm.max_model_len must be >= 0 (0 = the model's)")
    need(t.max_steps >= 1, "train.max_steps must be >= 1")
    need(t.max_minutes is None or t.max_minutes > 0, "train.max_minutes must be > 0 (or none = no limit)")
    need(t.prompts_per_step >= 1, "train.prompts_per_step must be >= 1")
    need(t.micro_batch_size >= 1, "train.micro_batch_size must be >= 1")
    need(t.save_every >= 0, "train.save_every must be >= 0")
    need(t.keep_last >= 1, "train.keep_last must be >= 1")
    need(t.max_bad_steps >= 1, "train.max_bad_steps must be >= 1")
    need(a.beta >= 0, "algorithm.beta must be >= 0")
    need(0 <= a.clip_low < 1, "algorithm.clip_low must be in [0, 1)")
    need(a.clip_ratio_c is None or a.clip_ratio_c > 1, "algorithm.clip_ratio_c must be > 1 (3.0 is usual) or none")
    need(a.tau_pos > 0 and a.tau_neg > 0, "algorithm.tau_pos and tau_neg must be > 0")
    need(a.entropy_coef >= 0, "algorithm.entropy_coef must be >= 0 (0 = off)")
    need(a.tis_cap is None or a.tis_cap >= 0, "algorithm.tis_cap must be > 0 (2.0 is usual), 0 (off) or none")
    need(
        a.tis_seq_threshold is None or (a.tis_seq_threshold > 0 and a.tis_cap != 0 and (a.tis_cap or t.max_staleness)),
        "algorithm.tis_seq_threshold must be > 0 and needs algorithm.tis_cap",
    )
    need(a.max_refills >= 0, "algorithm.max_refills must be >= 0")
    need(
        a.draw_prompts == 0 or a.dynamic_sampling,
        "algorithm.draw_prompts sizes dynamic sampling's draws: set algorithm.dynamic_sampling=true or remove it",
    )
    need(
        a.draw_prompts == 0 or a.draw_prompts >= t.prompts_per_step * a.num_minibatches,
        f"algorithm.draw_prompts={a.draw_prompts} is smaller than a step's batch (train.prompts_per_step x "
        f"algorithm.num_minibatches = {t.prompts_per_step * a.num_minibatches}); use at least that, or 0",
    )
    need(
        not a.dynamic_sampling or r.num_generations >= 2,
        "algorithm.dynamic_sampling drops groups whose rewards are all equal: it needs rollout.num_generations >= 2",
    )
    need(a.clip_high >= 0, "algorithm.clip_high must be >= 0")
    need(a.num_iterations >= 1, "algorithm.num_iterations must be >= 1")
    need(a.num_minibatches >= 1, "algorithm.num_minibatches must be >= 1")
    need(o.lr > 0, "optim.lr must be > 0")
    need(len(o.betas) == 2, "optim.betas must be two numbers, e.g. [0.9, 0.999]")
    need(o.max_grad_norm >= 0, "optim.max_grad_norm must be >= 0 (0 = off)")
    need(o.lora_plus_ratio > 0, "optim.lora_plus_ratio must be > 0 (1 = one learning rate; LoRA+ uses 16)")
    need(o.warmup_steps >= 0, "optim.warmup_steps must be >= 0")
    need(cfg.model.lora.r >= 1, "model.lora.r must be >= 1 (LoRA is how this trainer updates the model)")
    need(cfg.eval.every >= 0, "eval.every must be >= 0 (0 = off)")
    need(cfg.eval.num_samples >= 0, "eval.num_samples must be >= 0 (0 = all of the split)")
    need(cfg.logging.every >= 1, "logging.every must be >= 1 (a console line every N steps)")
    need(cfg.logging.samples_every >= 0, "logging.samples_every must be >= 0 (0 = off)")
    need(0 <= cfg.model.lora.dropout < 1, f"model.lora.dropout must be in [0, 1), got {cfg.model.lora.dropout}")
    need(cfg.model.lora.alpha > 0, "model.lora.alpha must be > 0")
    need(cfg.eval.batch_size >= 1, "eval.batch_size must be >= 1")
    need(len(cfg.rewards) >= 1, "rewards: give at least one reward function")
    for i, spec in enumerate(cfg.rewards):
        need(
            ":" in spec.fn,
            f"rewards[{i}].fn = {spec.fn!r}: write it as `package.module:function` or `file.py:function`",
        )
        need(spec.timeout > 0, f"rewards[{i}].timeout must be > 0 seconds")
        need(min(spec.batch_size, spec.max_concurrency) >= 0, f"rewards[{i}].batch_size, max_concurrency must be >= 0")
    ev = cfg.env
    problem = env_config_problem(ev.name, ev.factory, ev.kwargs, ev.tools, ev.max_turns, ev.max_tokens)
    need(problem is None, str(problem))
    bad_ops = set(cfg.data.arithmetic.operators) - {"+", "-", "*"}
    need(not bad_ops, f"data.arithmetic.operators: {sorted(bad_ops)} not supported; use any of + - *")
    ar = cfg.data.arithmetic
    need(ar.min_operand <= ar.max_operand, "data.arithmetic.min_operand must be <= max_operand")
    lo_b, hi_b = ar.operand_b_range
    need(lo_b <= hi_b, "data.arithmetic.min_operand_b must be <= max_operand_b")
    space = (ar.max_operand - ar.min_operand + 1) * (hi_b - lo_b + 1) * len(ar.operators)
    need(
        ar.num_train + ar.num_eval <= space,
        f"data.arithmetic: {ar.num_train} train + {ar.num_eval} eval problems exceed the {space} distinct ones; "
        "widen the operand range or ask for fewer",
    )
    from rlhf.agents.checks import check_agent_config  # the agent section (rlhf/agents/)

    check_agent_config(cfg)


def flat_items(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as {dotted.key: value}; lists, empty mappings and other values are leaves."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flat_items(v, key))
        else:
            out[key] = v
    return out


def unread_knobs(cfg: Config) -> list[str]:
    """Knobs set away from their defaults that the chosen algorithm does not read (`rlhf.algorithms`)."""
    from rlhf.algorithms import unread_knobs as unread

    now, default = flat_items(to_dict(cfg)), flat_items(_defaults_tree())
    changed = {k for k, v in now.items() if k in default and v != default[k]}
    return unread(cfg.algorithm.name, changed)


def check_world(cfg: Config, world_size: int) -> None:
    """Checks that need the number of processes: groups never split across ranks."""
    for key, prompts in (
        ("train.prompts_per_step", cfg.train.prompts_per_step),
        ("algorithm.draw_prompts", cfg.algorithm.draw_prompts),
    ):
        if prompts % world_size:
            raise ConfigError(
                f"{key}={prompts} does not divide over {world_size} processes; "
                f"use a multiple of {world_size} so every rank gets whole groups"
            )


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
