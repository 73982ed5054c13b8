"""The evaluation command's arguments: the parser, the named datasets' presets (where each lives, how to prompt it)
and the defaults a --recipe supplies (model, dtype, attention kernel, stop strings); `rlhf.evaluate` runs with them."""

from __future__ import annotations

import argparse
import importlib.util
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rlhf.dtypes import DTYPE_CHOICES, resolve_dtype

__all__ = [
    "DATA_DIR_ENV",
    "GENERIC",
    "MATH_REWARD",
    "NUMERIC_REWARD",
    "PRESETS",
    "EvalError",
    "Preset",
    "has_module",
    "parse_args",
    "resolve_recipe_defaults",
]

DATA_DIR_ENV = "RLHF_DATA_DIR"  # a folder holding gsm8k/ and math500/ (<split>.jsonl each), read before the hub
NUMERIC_REWARD = "reward_models.numeric:numeric_answer_reward"
MATH_REWARD = "reward_models.math:math_correctness"

log = logging.getLogger(__name__)


class EvalError(ValueError):
    """An argument combination a person can fix."""


@dataclass(frozen=True)
class Preset:
    """Defaults for a named dataset: where it lives (a local copy first, else the hub) and how to prompt it."""

    local_dir: str | None  # the preset's folder under the data directory (--data-dir or $RLHF_DATA_DIR)
    hub: str | None
    hub_config: str | None
    prompt_column: str
    answer_column: str
    prompt_template: str | None
    max_new_tokens: int


GSM8K_TEMPLATE = "{prompt}\nThink step by step, then give the final answer after '####'."  # as in the gsm8k recipe
MATH_TEMPLATE = "{prompt}\nThink step by step, then put the final answer in \\boxed{{}}."
PRESETS = {
    "arithmetic": Preset(None, None, None, "prompt", "answer", None, 16),  # 16 tokens as in the arithmetic recipe
    "gsm8k": Preset("gsm8k", "openai/gsm8k", "main", "question", "answer", GSM8K_TEMPLATE, 256),
    "math500": Preset("math500", "HuggingFaceH4/MATH-500", None, "problem", "answer", MATH_TEMPLATE, 512),
}
GENERIC = Preset(None, None, None, "prompt", "answer", None, 256)


def has_module(name: str) -> bool:
    """Whether `name` can be imported (an optional package such as the math verifier is installed)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m rlhf.evaluate",
        description="Greedy accuracy (--n 1), or pass@k and maj@k from n samples per prompt, of a model or adapter.",
    )
    p.add_argument(
        "--model", help="hub id, local directory or a short name (default: the --recipe's, else smollm2-135m-instruct)"
    )
    p.add_argument("--adapter", help="PEFT adapter directory (e.g. runs/NAME/adapter); folded into the model")
    p.add_argument("--dataset", default="arithmetic", help="arithmetic | gsm8k | math500 | a file | a hub id")
    p.add_argument(
        "--recipe",
        help="a training recipe whose held-out prompts, reward functions and environment (multi-turn episodes, "
        "tools) are used instead of --dataset / --reward / --system-prompt; greedy (--n 1) only",
    )
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of the --recipe's keys, e.g. env.name=single_turn env.tools=[] env.kwargs={} (no tools)",
    )
    p.add_argument("--dataset-config", help="hub dataset configuration name")
    p.add_argument(
        "--data-dir",
        help=f"folder with local copies of the named datasets (gsm8k/, math500/: <split>.jsonl each), read before "
        f"the hub; default ${DATA_DIR_ENV}",
    )
    p.add_argument(
        "--engine", default="builtin", help="rollout engine: a name in rlhf.rollout.ENGINES or an import path"
    )
    p.add_argument("--split", default="test", help="split (arithmetic: test = the held-out problems)")
    p.add_argument("--prompt-column", help="column with the prompt (default: the dataset's, else `prompt`)")
    p.add_argument("--answer-column", help="column with the gold answer ('' = none needed)")
    p.add_argument("--system-prompt", help="system message before every prompt")
    p.add_argument("--prompt-template", help="format string; {prompt} and any column ('' = none)")
    p.add_argument("--max-prompt-tokens", type=int, default=2048, help="longer prompts are dropped and counted")
    p.add_argument("--limit", type=int, default=0, help="only the first N rows (0 = all)")
    p.add_argument("--reward", help=f"import path of the reward (default {NUMERIC_REWARD}; math500: {MATH_REWARD})")
    p.add_argument("--success-threshold", type=float, default=1.0, help="a sample is correct when reward >= this")
    p.add_argument("--n", type=int, default=1, help="samples per prompt; 1 = greedy")
    p.add_argument("--temperature", type=float, help="sampling temperature (default 1.0 when --n > 1; 0 = greedy)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, help="longest completion (default: per dataset)")
    p.add_argument(
        "--stop",
        action="append",
        metavar="TEXT",
        help="a string that ends a completion, as `rollout.stop` in training (repeatable; escapes such as \\n are "
        "read; default: the --recipe's rollout.stop, else none)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="sequences generated at once")
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        help="the base's dtype (default: the --recipe's, else auto: bfloat16 where the device computes it natively, "
        "float32 where it would be emulated)",
    )
    p.add_argument(
        "--attn-implementation",
        help="attention kernel, e.g. eager or sdpa (default: the --recipe's model.attn_implementation, else "
        "transformers' default); greedy answers can differ between kernels in the last bits",
    )
    p.add_argument("--output-dir", help="where results.json and samples.jsonl go (default runs/eval/DATASET-TIME)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, and the arithmetic task's problem draw")
    args = p.parse_args(argv)
    preset = PRESETS.get(args.dataset, GENERIC)
    if args.n < 1 or args.limit < 0 or args.batch_size < 1:
        raise EvalError("--n and --batch-size must be >= 1 and --limit >= 0")
    args.temperature = (1.0 if args.n > 1 else 0.0) if args.temperature is None else args.temperature
    if args.n > 1 and args.temperature <= 0:
        raise EvalError("--n > 1 samples several completions per prompt: give --temperature > 0")
    args.greedy = args.n == 1 and args.temperature <= 0
    if args.set and not args.recipe:
        raise EvalError("--set overrides keys of a --recipe: give the recipe too")
    if args.recipe and not args.greedy:
        raise EvalError("--recipe evaluates greedy episodes: use --n 1 (pass@k of multi-turn episodes is not built)")
    args.prompt_column = args.prompt_column or preset.prompt_column
    args.prompt_template = preset.prompt_template if args.prompt_template is None else args.prompt_template
    args.max_new_tokens_given = args.max_new_tokens
    args.max_new_tokens = args.max_new_tokens or preset.max_new_tokens
    if args.stop is not None:  # "\\n" typed in a shell is a backslash and an n: read it as a newline
        args.stop = [s.encode("latin-1", "backslashreplace").decode("unicode_escape") for s in args.stop]
    if args.reward is None:
        math_ok = args.dataset == "math500" and has_module("reward_models.math")
        args.reward = MATH_REWARD if math_ok else NUMERIC_REWARD
    if args.output_dir is None:
        stem = Path(args.dataset).stem if args.dataset not in PRESETS else args.dataset
        args.output_dir = str(Path("runs") / "eval" / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}")
    return args


def resolve_recipe_defaults(args: argparse.Namespace):
    """The model, dtype, attention kernel and stop strings not given on the command line: the --recipe's (as its run
    trained and evaluated), else the defaults. Returns the recipe's config, or None."""
    cfg = None
    if args.recipe:
        from rlhf.config import load_config

        cfg = load_config(args.recipe, args.set)
        args.model = args.model or cfg.model.path
        args.dtype = args.dtype or cfg.model.dtype
        args.attn_implementation = args.attn_implementation or cfg.model.attn_implementation
        if args.stop is None:
            args.stop = list(cfg.rollout.stop)
    args.model = args.model or "smollm2-135m-instruct"
    choice = resolve_dtype(args.dtype or "auto")
    if args.dtype in (None, "auto"):
        log.info("dtype: auto -> %s (%s)", choice.dtype, choice.reason)
    args.dtype = choice.dtype
    args.stop = args.stop or []
    return cfg
