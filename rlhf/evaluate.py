"""The evaluation command: `python -m rlhf.evaluate --model M [--adapter DIR] --dataset D` (the library side is
`rlhf.accuracy`).

Greedy accuracy (--n 1) goes through `rlhf.accuracy.greedy_eval`, the function the trainer calls during training, and
the same rollout engine (`--engine`), so a run's `eval/accuracy` and this command agree on the same prompts.
With --n > 1 it samples n completions per prompt
and reports pass@k (the unbiased estimator of Chen et al. 2021, arXiv:2107.03374) and maj@k (majority vote over the
final answers, "self-consistency", Wang et al. 2022, arXiv:2203.11171). Under `accelerate launch` each process takes
its own shard of the prompts and the counts are summed, as in training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from rlhf import __version__
from rlhf.accuracy import greedy_eval, k_values, maj_at_k, pass_at_k, sampled_eval
from rlhf.build import arithmetic_rows
from rlhf.config import ArithmeticConfig, RewardSpec
from rlhf.data import LOCAL_FORMATS, DataError, build_prompt_set, load_rows
from rlhf.distributed import make_accelerator
from rlhf.dtypes import torch_dtype
from rlhf.eval_args import (
    DATA_DIR_ENV,
    GENERIC,
    PRESETS,
    EvalError,
    Preset,
    has_module,
    parse_args,
    resolve_recipe_defaults,
)
from rlhf.models import load_policy, load_tokenizer, resolve_model_path, set_attention
from rlhf.rewards import RewardError, build_reward_functions, check_reward_signatures
from rlhf.rollout import SamplingParams, build_engine

__all__ = ["k_values", "maj_at_k", "pass_at_k", "sampled_eval", "main", "run"]


def answer_extractor(dataset: str, reward: str) -> tuple[str, Callable[[str], str | None]]:
    """The math verifier's extractor for math tasks (LaTeX answers), the final-number one otherwise."""
    from reward_models.numeric import final_number, to_fraction

    if (dataset == "math500" or reward.startswith("reward_models.math:")) and has_module("reward_models.math"):
        from reward_models.math import extract_answer

        return "reward_models.math:extract_answer", lambda text: _normalize(extract_answer(text), to_fraction)
    return "reward_models.numeric:final_number", lambda text: _normalize(final_number(text), to_fraction)


def _normalize(answer: str | None, to_fraction) -> str | None:
    """So that `1,000`, `1000.` and `1000` vote together: numbers as exact rationals, other text without spaces."""
    if answer is None:
        return None
    value = to_fraction(answer)
    return str(value) if value is not None else "".join(answer.split())


# ------------------------------------------------------------------------------------------------ data, model, reward
def load_eval_rows(args: argparse.Namespace) -> tuple[list[dict], str]:
    """(rows, a description of where they came from), the answer column renamed to `answer` for the rewards."""
    preset = PRESETS.get(args.dataset, GENERIC)
    if args.dataset == "arithmetic":
        train, held_out = arithmetic_rows(ArithmeticConfig(), args.seed)
        if args.split not in ("test", "train"):
            raise EvalError(f"--split {args.split!r}: the arithmetic task has `test` (held out) and `train`")
        rows, desc = (held_out if args.split == "test" else train), f"arithmetic:{args.split} (seed {args.seed})"
    elif local_preset_file(preset, args) is not None:
        path = local_preset_file(preset, args)
        rows, desc = load_rows(str(path)), str(path)
    elif preset.hub is not None:
        rows, desc = load_rows(preset.hub, preset.hub_config, args.split), f"{preset.hub}:{args.split}"
    else:
        local = Path(args.dataset)
        if local.suffix.lower() in LOCAL_FORMATS and not local.is_file():
            raise FileNotFoundError(f"dataset file {args.dataset!r} not found")
        rows = load_rows(args.dataset, args.dataset_config, args.split)
        desc = args.dataset if local.is_file() else f"{args.dataset}:{args.split}"
    if not rows:
        raise DataError(f"the dataset {desc} is empty")
    if args.limit:
        rows = rows[: args.limit]
    column = preset.answer_column if args.answer_column is None else args.answer_column
    if column:  # '' = the reward needs no gold answer
        if column not in rows[0]:
            raise DataError(
                f"answer column {column!r} not in the dataset (columns: {', '.join(sorted(rows[0]))}); "
                "set --answer-column"
            )
        if column != "answer":
            rows = [{**r, "answer": r[column]} for r in rows]
    return rows, desc


def local_preset_file(preset: Preset, args: argparse.Namespace) -> Path | None:
    """<data dir>/<preset folder>/<split>.jsonl when a data directory is given and holds it, else None (the hub)."""
    data_dir = args.data_dir or os.environ.get(DATA_DIR_ENV)
    if preset.local_dir is None or not data_dir:
        return None
    path = Path(data_dir) / preset.local_dir / f"{args.split}.jsonl"
    return path if path.is_file() else None


def load_model(
    path: str, adapter: str | None, dtype: str, attn_implementation: str | None = None
) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """(the transformers model to generate with, the PEFT model or None). An adapter is held as the trainer holds it
    (float32 LoRA on a `dtype` base, folded in by `merged_adapter` while generating), and the attention kernel is the
    run's (`model.attn_implementation`; None = transformers' default), so evaluating a run's final adapter reproduces
    the run's last `eval/accuracy` rather than a slightly different rounding of the same weights: a different kernel
    alone flips a few greedy answers (net 4 of 200 held-out sums in one measured case)."""
    from transformers import AutoModelForCausalLM

    if adapter and not (Path(adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"--adapter {adapter}: not a PEFT adapter directory (no adapter_config.json)")
    try:
        if adapter:
            peft_model = load_policy(path, dtype, adapter_path=adapter).eval()
            model = peft_model.get_base_model()
        else:
            peft_model = None
            model = AutoModelForCausalLM.from_pretrained(resolve_model_path(path), dtype=torch_dtype(dtype)).eval()
    except OSError as e:
        raise FileNotFoundError(f"could not load model {path!r}: {str(e).splitlines()[0]}") from e
    if attn_implementation:
        set_attention(model, attn_implementation)
    return model, peft_model


def gather_rows(accelerator, rows: list[dict]) -> list[dict]:
    """Every rank's rows on every rank, back in dataset order."""
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        rows = gather_object(rows)
    return sorted(rows, key=lambda r: r["index"])


def recipe_eval_setup(args: argparse.Namespace, cfg, tokenizer, accelerator):
    """--recipe: (held-out PromptSet, reward functions, EpisodeRunner or None, description) as the trainer builds
    them, so this command measures what the run's `eval/accuracy` measures (with the recipe's tools)."""
    from rlhf.build import build_datasets
    from rlhf.distributed import all_sum
    from rlhf.envs import build_env
    from rlhf.rollout.episodes import EpisodeRunner

    cfg.eval.every = cfg.eval.every or 1  # build the held-out set even when the recipe does not evaluate
    if args.limit:
        cfg.eval.num_samples = args.limit
    _, prompts = build_datasets(cfg, tokenizer)
    if prompts is None:
        raise EvalError(f"recipe {args.recipe} has no held-out prompts (see its eval section)")
    reward_fns = build_reward_functions(cfg.rewards)
    args.reward = ", ".join(r.fn for r in cfg.rewards)
    args.max_new_tokens = args.max_new_tokens_given or cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens
    episodes = None
    e = cfg.env
    if cfg.agent.run is not None:  # the recipe's agent program, through the endpoint (rlhf/agents/)
        from rlhf.agents import build_agent_runner

        episodes = build_agent_runner(cfg, tokenizer, accelerator)
    if e.name is not None or e.factory is not None:
        any_running = None
        if accelerator.num_processes > 1:
            any_running = lambda flag: all_sum(accelerator, float(flag)).item() > 0  # noqa: E731
        make_env = build_env(e.name, e.kwargs, e.tools, e.factory, tokenizer, [prompts.columns])
        episodes = EpisodeRunner(
            make_env, tokenizer, e.max_turns, e.max_tokens, e.reward_weight, cfg.data.system_prompt, any_running
        )
    where = f"held-out prompts of {args.recipe}" + (f" with env {e.name or e.factory}" if e.name or e.factory else "")
    return prompts, reward_fns, episodes, where


def run(args: argparse.Namespace) -> dict:
    """Load, evaluate, write results.json and samples.jsonl (main process); returns the results."""
    start = time.perf_counter()
    accelerator = make_accelerator()
    rank = accelerator.process_index
    random.seed(args.seed + rank)
    torch.manual_seed(args.seed + rank)
    cfg = resolve_recipe_defaults(args)
    # data and reward before the model, so their errors come in seconds
    try:
        tokenizer = load_tokenizer(args.model)
    except OSError as e:
        raise FileNotFoundError(f"could not load the tokenizer of {args.model!r}: {str(e).splitlines()[0]}") from e
    episodes = None
    if args.recipe:
        prompts, reward_fns, episodes, data_desc = recipe_eval_setup(args, cfg, tokenizer, accelerator)
    else:
        rows, data_desc = load_eval_rows(args)
        prompts = build_prompt_set(
            rows, tokenizer, args.prompt_column, args.system_prompt, args.prompt_template, args.max_prompt_tokens
        )
        reward_fns = build_reward_functions([RewardSpec(fn=args.reward)])
    check_reward_signatures(reward_fns, list(prompts.columns), environments=episodes is not None)
    extractor_name, extract = answer_extractor(args.dataset, args.reward)
    model, peft_model = load_model(args.model, args.adapter, args.dtype, args.attn_implementation)
    load_s = time.perf_counter() - start
    model = model.to(accelerator.device)
    engine = build_engine(
        args.engine,
        model=peft_model if peft_model is not None else model,
        tokenizer=tokenizer,
        accelerator=accelerator,
        merge_adapter=True,  # as the trainer generates
        batch_size=args.batch_size,
    )
    common, threshold = (engine, prompts, reward_fns), args.success_threshold
    if args.greedy:
        m, rows_out = greedy_eval(
            *common, args.max_new_tokens, args.batch_size, threshold, accelerator, episodes, stop=args.stop
        )
        metrics = {"pass@1": m["eval/accuracy"], "reward_mean": m["eval/reward_mean"]}
        metrics.update({k.removeprefix("eval/"): v for k, v in m.items() if k.startswith(("eval/env/", "eval/agent/"))})
        metrics.update({"num_prompts": m["eval/num_samples"], "time/eval": m["time/eval"]})
        mine = range(rank, len(prompts), accelerator.num_processes)
        answers = prompts.columns.get("answer") or [None] * len(prompts)
        rows_out = [
            {"index": i, "prompt": r["prompt"], "answer": answers[i], "completion": r["completion"]}
            | {"extracted": extract(r["completion"]), "reward": r["reward"], "correct": r["correct"]}
            for i, r in zip(mine, rows_out)
        ]
    else:
        params = SamplingParams(
            args.max_new_tokens, args.temperature, args.top_p, args.top_k, greedy=False, stop=args.stop
        )
        metrics, rows_out = sampled_eval(*common, args.n, params, extract, args.batch_size, threshold, accelerator)
    engine.close()
    samples = gather_rows(accelerator, rows_out)
    results = {
        "metrics": metrics,
        "mode": "greedy" if args.greedy else "sampled",
        "model": args.model,
        "adapter": args.adapter,
        "dataset": data_desc,
        "num_prompts": len(prompts),
        "dropped_prompts": prompts.dropped,
        "reward": args.reward,
        "answer_extractor": extractor_name,
        "config": dict(vars(args)),
        "timing": {"load_s": load_s, "eval_s": metrics["time/eval"], "total_s": time.perf_counter() - start},
        "num_processes": accelerator.num_processes,
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if accelerator.is_main_process:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        with (out / "samples.jsonl").open("w") as f:
            for row in samples:
                f.write(json.dumps(row) + "\n")
        print(format_table(results, out))
    accelerator.wait_for_everyone()
    return results


def format_table(results: dict, out: Path) -> str:
    adapter = f" + adapter {results['adapter']}" if results["adapter"] else ""
    lines = [
        f"model    {results['model']}{adapter}",
        f"dataset  {results['dataset']} ({results['num_prompts']} prompts, {results['mode']})",
        f"reward   {results['reward']}",
        f"{'metric':<18} value",
    ]
    for key, value in results["metrics"].items():
        if key.startswith(("pass@", "maj@")) or key in ("reward_mean", "sample_accuracy"):
            lines.append(f"{key:<18} {value:.4f}")
    lines.append(f"time     {results['timing']['total_s']:.1f} s (eval {results['timing']['eval_s']:.1f} s)")
    lines.append(f"written  {out / 'results.json'}, {out / 'samples.jsonl'}")
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"rlhf": __version__, "python": platform.python_version(), "torch": torch.__version__} | {
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    from rlhf.train import run_cli, setup_logging

    def evaluate() -> None:
        args = parse_args(argv)
        setup_logging()
        run(args)

    return run_cli(evaluate, (EvalError, DataError, RewardError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
