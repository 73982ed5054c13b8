"""Bradley–Terry reward-model training with LoRA: `python -m reward_models.train_rm RECIPE.yaml key.sub=value ...`.

The reward model of InstructGPT (Ouyang et al. 2022, arXiv:2203.02155): a language model with a scalar head, trained on
pairs (prompt, chosen, rejected) to score the chosen completion higher (`bradley_terry.bradley_terry_loss`). Only LoRA
adapters (Hu et al. 2021, arXiv:2106.09685) and the new score head train (`model.lora.r: 0` = full fine-tuning). The
same under `accelerate launch --num_processes N [--cpu] -m reward_models.train_rm ...` (DDP; gloo on CPU). Writes
`<output_dir>/model/`: the merged model + tokenizer (safetensors) and `metrics.json`, which
`reward_models.reward_model:RewardModelScorer` loads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from reward_models.bradley_terry import bradley_terry_loss
from reward_models.reward_model import encode_pair, ensure_pad_token, pad_right, save_reward_model
from rlhf.config import ConfigError, LoraConfig, OptimConfig, apply_override, doc, from_dict, to_dict
from rlhf.data import DataError, arithmetic_problems, load_rows
from rlhf.dtypes import DTYPES, resolve_dtype
from rlhf.models import add_lora, lora_in_base_dtype, resolve_model_path

log = logging.getLogger(__name__)
USAGE = """usage: python -m reward_models.train_rm RECIPE.yaml [key.sub=value ...]

  e.g. python -m reward_models.train_rm recipes/reward_model/rm_arithmetic_smollm2.yaml train.epochs=2
Writes <output_dir>/model (load it with reward_models.reward_model:RewardModelScorer) and <output_dir>/metrics.jsonl."""


@dataclass
class RMModel:
    path: str = doc("Base model: hub id, local directory or `smollm2-135m-instruct`.", "smollm2-135m-instruct")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = doc(
        "Weight dtype of the frozen base and the saved model; `auto` as the trainer's model.dtype (bfloat16 where "
        "the device computes it natively, else float32), resolved when the recipe is read.",
        "auto",
    )
    lora: LoraConfig = doc(
        "Adapters (the score head trains in full); `r: 0` = full fine-tuning instead.", factory=LoraConfig
    )
    trust_remote_code: bool = doc("Allow model code from the hub.", False)


@dataclass
class SyntheticPreferences:
    """`data.path: arithmetic-preferences`: chosen = the correct sum, rejected = a wrong number."""

    min_operand: int = doc("Smallest operand.", 10)
    max_operand: int = doc("Largest operand.", 99)
    num_train: int = doc("Training pairs (one per problem).", 2000)
    num_eval: int = doc("Held-out pairs, on problems never in the training set.", 200)
    template: str = doc("Question wording.", "Compute {a} + {b}. Reply with only the number.")
    max_offset: int = doc("The wrong number is the sum +- a uniform offset in [1, max_offset].", 10)
    words_fraction: float = doc(
        "Fraction of pairs whose rejected answer is also wrapped in words (`The answer is N.`), breaking the "
        "instruction to reply with only the number.",
        0.5,
    )


@dataclass
class RMData:
    path: str = doc("`arithmetic-preferences`, a local .jsonl/.json/.parquet/.csv file, or a hub dataset id.", "")
    name: str | None = doc("Hub dataset configuration name.", None)
    split: str = doc("Split to train on (hub datasets).", "train")
    eval_path: str | None = doc("Held-out pairs from a separate file or hub id; none = split off eval_fraction.", None)
    eval_split: str = doc("Split of eval_path (hub datasets).", "test")
    eval_fraction: float = doc("Share of the training rows held out when there is no eval_path.", 0.05)
    prompt_column: str | None = doc("Column with the prompt (text or messages); none or absent = no prompt.", "prompt")
    chosen_column: str = doc("Column with the preferred completion (text or chat messages).", "chosen")
    rejected_column: str = doc("Column with the dispreferred completion.", "rejected")
    margin_column: str | None = doc("Column with a per-pair margin (Llama 2, arXiv:2307.09288); none = off.", None)
    max_length: int = doc("Longest sequence in tokens; longer ones lose the start of the prompt.", 512)
    arithmetic: SyntheticPreferences = doc("Settings of the synthetic task.", factory=SyntheticPreferences)


@dataclass
class RMTrain:
    epochs: int = doc("Passes over the training pairs.", 1)
    max_steps: int = doc("Stop after this many optimizer steps; 0 = run all epochs.", 0)
    batch_size: int = doc("Pairs per optimizer step over all ranks.", 16)
    micro_batch_size: int = doc("Pairs per forward/backward on one rank (gradient accumulation).", 8)
    margin: float = doc("Constant margin subtracted from r_c - r_r (added to any margin_column).", 0.0)
    eval_every: int = doc("Held-out evaluation every N steps (and at step 0 and the end); 0 = only at the end.", 0)
    eval_batch_size: int = doc("Pairs per forward in evaluation.", 32)
    log_every: int = doc("Console line every N steps.", 10)


@dataclass
class RMConfig:
    """A reward-model training recipe."""

    output_dir: str = doc("Where `model/` and `metrics.jsonl` go.", "runs/reward_model")
    seed: int = doc("Seed of the data split and order and of the score head's initialisation.", 0)
    model: RMModel = doc("Base model.", factory=RMModel)
    data: RMData = doc("Preference pairs.", factory=RMData)
    optim: OptimConfig = doc("AdamW on the trainable weights (the GRPO recipes' optim block).", factory=OptimConfig)
    train: RMTrain = doc("Loop.", factory=RMTrain)


def load_config(recipe: str | Path | None, overrides: list[str] | None = None) -> RMConfig:
    """Recipe YAML + `key.sub=value` overrides -> RMConfig; unknown keys name the nearest valid one."""
    tree: dict = {}
    if recipe is not None:
        if not Path(recipe).is_file():
            raise ConfigError(f"recipe `{recipe}` not found (e.g. recipes/reward_model/rm_arithmetic_smollm2.yaml)")
        tree = yaml.safe_load(Path(recipe).read_text()) or {}
    for assignment in overrides or []:
        apply_override(tree, assignment)
    cfg = from_dict(RMConfig, tree)
    cfg.model.dtype = resolve_dtype(cfg.model.dtype).dtype
    d, t = cfg.data, cfg.train
    checks = [
        (bool(d.path), "data.path: give `arithmetic-preferences`, a file or a hub dataset id"),
        (0 < d.eval_fraction < 1 or d.eval_path is not None, "data.eval_fraction must be in (0, 1)"),
        (d.max_length >= 8, "data.max_length must be >= 8"),
        (cfg.model.lora.r >= 0, "model.lora.r must be >= 0 (0 = full fine-tuning)"),
        (cfg.optim.lr > 0, "optim.lr must be > 0"),
        (t.epochs >= 1 and t.max_steps >= 0, "train.epochs must be >= 1 and train.max_steps >= 0"),
        (t.batch_size >= 1 and t.micro_batch_size >= 1, "train.batch_size and train.micro_batch_size must be >= 1"),
        (t.eval_batch_size >= 1 and t.log_every >= 1, "train.eval_batch_size and train.log_every must be >= 1"),
        (d.arithmetic.max_offset >= 1, "data.arithmetic.max_offset must be >= 1"),
        (0 <= d.arithmetic.words_fraction <= 1, "data.arithmetic.words_fraction must be in [0, 1]"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    return cfg


# ---------------------------------------------------------------------------------------------------------------------
# data: rows of {prompt, chosen, rejected, margin}

WORDS = ["The answer is {n}.", "{n} is the answer.", "I think it is {n}.", "Sure! {n}", "Result: {n}, I believe."]


def synthetic_pairs(s: SyntheticPreferences, seed: int) -> tuple[list[dict], list[dict]]:
    """Pairs from the arithmetic task: train and held-out problems are disjoint (`rlhf.data.arithmetic_problems`).
    The rejected number is sum +- k, k uniform in [1, max_offset], never negative; in `words_fraction` of the pairs it
    is also wrapped in words. Seeded: the same settings give the same pairs."""
    train, held_out = arithmetic_problems(
        s.min_operand, s.max_operand, ["+"], s.num_train, s.num_eval, s.template, seed
    )
    rng = random.Random(seed + 1)

    def pair(row: dict) -> dict:
        total = int(row["answer"])
        k = rng.randint(1, s.max_offset)
        wrong = total + k if total - k < 0 or rng.random() < 0.5 else total - k
        rejected = str(wrong)
        if rng.random() < s.words_fraction:
            rejected = rng.choice(WORDS).format(n=wrong)
        return {"prompt": row["prompt"], "chosen": str(total), "rejected": rejected, "margin": 0.0}

    return [pair(r) for r in train], [pair(r) for r in held_out]


def to_pairs(rows: list[dict], d: RMData, where: str) -> list[dict]:
    if not rows:
        raise DataError(f"{where}: no rows")
    missing = [c for c in (d.chosen_column, d.rejected_column, d.margin_column) if c and c not in rows[0]]
    if missing:
        raise DataError(f"{where}: column(s) {missing} not found (columns: {', '.join(sorted(rows[0]))})")
    use_prompt = d.prompt_column is not None and d.prompt_column in rows[0]
    return [
        {
            "prompt": r[d.prompt_column] if use_prompt else None,
            "chosen": r[d.chosen_column],
            "rejected": r[d.rejected_column],
            "margin": float(r[d.margin_column]) if d.margin_column else 0.0,
        }
        for r in rows
    ]


def load_pairs(cfg: RMConfig) -> tuple[list[dict], list[dict]]:
    """(train pairs, held-out pairs): the synthetic task, a file/hub split with a separate eval file, or a seeded
    `eval_fraction` split of one set."""
    d = cfg.data
    if d.path == "arithmetic-preferences":
        return synthetic_pairs(d.arithmetic, cfg.seed)
    pairs = to_pairs(load_rows(d.path, d.name, d.split), d, d.path)
    if d.eval_path:
        return pairs, to_pairs(load_rows(d.eval_path, d.name, d.eval_split), d, d.eval_path)
    order = list(range(len(pairs)))
    random.Random(cfg.seed).shuffle(order)
    n_eval = max(1, round(len(pairs) * d.eval_fraction))
    if n_eval >= len(pairs):
        raise DataError(f"{d.path}: {len(pairs)} pairs are too few to hold out {d.eval_fraction:.0%}")
    return [pairs[i] for i in order[n_eval:]], [pairs[i] for i in order[:n_eval]]


def tokenize_pairs(pairs: list[dict], tokenizer, max_length: int) -> list[tuple[list[int], list[int], float]]:
    """(chosen ids, rejected ids, margin) per pair, built exactly as RewardModelScorer builds them."""
    enc = lambda p, key: encode_pair(tokenizer, p["prompt"], p[key], max_length)
    try:
        return [(enc(p, "chosen"), enc(p, "rejected"), p["margin"]) for p in pairs]
    except ValueError as e:
        raise DataError(f"preference data: {e}") from None


# ---------------------------------------------------------------------------------------------------------------------
# model, forward, evaluation


def build_model(m: RMModel, tokenizer):
    """The sequence classifier with one output on top of the base, a LoRA adapter on it unless r = 0."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(m.path), num_labels=1, dtype=DTYPES[m.dtype], trust_remote_code=m.trust_remote_code
    )
    ensure_pad_token(tokenizer, model)
    if m.lora.r == 0:
        return model.float()
    head = [n for n in ("score", "classifier") if hasattr(model, n)]
    return add_lora(model, m.lora.r, m.lora.alpha, m.lora.dropout, m.lora.target_modules, "SEQ_CLS", head)


def pair_forward(model, part: list[tuple], pad_id: int, device, margin: float) -> tuple[torch.Tensor, ...]:
    """Chosen and rejected of `part` (token ids, token ids, margin) in one right-padded forward:
    (loss, chosen rewards [b], rejected rewards [b]), float32."""
    ids, mask = pad_right([c for c, _, _ in part] + [x for _, x, _ in part], pad_id)
    with lora_in_base_dtype(model):  # a bfloat16 base: adapters and the float32 score head under autocast
        r = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float()
    rc, rr = r[: len(part)], r[len(part) :]
    m = torch.tensor([mg + margin for _, _, mg in part], device=r.device)
    return bradley_terry_loss(rc, rr, m), rc, rr


@torch.no_grad()
def evaluate(model, pairs: list[tuple], pad_id: int, acc, batch_size: int, margin: float) -> dict[str, float]:
    """Held-out pairwise accuracy and loss, and the reward mean/std over all held-out completions (what
    `RewardModelScorer(normalize="fixed")` standardises with); each rank scores its shard, the sums are reduced."""
    from rlhf.distributed import all_sum

    model.eval()
    sums = torch.zeros(5, dtype=torch.float64)  # correct, loss, pairs, sum r, sum r^2
    shard = pairs[acc.process_index :: acc.num_processes]
    for s in range(0, len(shard), batch_size):
        part = shard[s : s + batch_size]
        loss, rc, rr = pair_forward(model, part, pad_id, acc.device, margin)
        r = torch.cat([rc, rr]).double().cpu()
        sums += torch.stack([(rc > rr).sum().cpu().double(), loss.cpu().double() * len(part), torch.tensor(len(part)),
                             r.sum(), (r**2).sum()])  # fmt: skip
    correct, loss_sum, n, r_sum, r2_sum = all_sum(acc, sums).tolist()
    n = max(n, 1.0)
    mean = r_sum / (2 * n)
    model.train()
    return {
        "eval/accuracy": correct / n,
        "eval/loss": loss_sum / n,
        "eval/reward_mean": mean,
        "eval/reward_std": math.sqrt(max(r2_sum / (2 * n) - mean**2, 0.0)),
    }


# ---------------------------------------------------------------------------------------------------------------------
# the loop


def train(cfg: RMConfig) -> dict[str, Any]:
    """Train, evaluate, save; returns the final metrics (also written to `<output_dir>/model/metrics.json`)."""
    from transformers import AutoTokenizer

    from rlhf.distributed import all_sum, make_accelerator
    from rlhf.run_utils import lr_lambda, seed_everything

    start = time.perf_counter()
    t, o = cfg.train, cfg.optim
    acc = make_accelerator()
    world = acc.num_processes
    if t.batch_size % world:
        raise ConfigError(f"train.batch_size={t.batch_size} must be a multiple of the {world} processes")
    out = Path(cfg.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model_path(cfg.model.path), trust_remote_code=cfg.model.trust_remote_code
    )
    ensure_pad_token(tokenizer)
    train_pairs, eval_pairs = load_pairs(cfg)
    train_set = tokenize_pairs(train_pairs, tokenizer, cfg.data.max_length)
    eval_set = tokenize_pairs(eval_pairs, tokenizer, cfg.data.max_length)
    seed_everything(cfg.seed)  # the same head initialisation on every rank
    model = build_model(cfg.model, tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    steps_per_epoch = math.ceil(len(train_set) / t.batch_size)
    total = steps_per_epoch * t.epochs if t.max_steps == 0 else min(t.max_steps, steps_per_epoch * t.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o.schedule, o.warmup_steps, total))
    model, optimizer = acc.prepare(model, optimizer)
    pad_id = tokenizer.pad_token_id
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        n_train = sum(p.numel() for p in params)
        log.info("%d train / %d held-out pairs; %d steps; %.2fM trainable", len(train_set), len(eval_set), total,
                 n_train / 1e6)  # fmt: skip
        (out / "metrics.jsonl").write_text("")

    def write(row: dict) -> None:
        if acc.is_main_process:
            with (out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")

    per_rank = t.batch_size // world
    step, row = 0, {}
    if t.eval_every:
        write({"step": 0, **evaluate(model, eval_set, pad_id, acc, t.eval_batch_size, t.margin)})
    model.train()
    for epoch in range(t.epochs):
        order = list(range(len(train_set)))
        random.Random(cfg.seed * 1000 + epoch).shuffle(order)  # wrapped around: full, equal batches on every rank
        order = (order * math.ceil(steps_per_epoch * t.batch_size / len(order)))[: steps_per_epoch * t.batch_size]
        for b in range(steps_per_epoch):
            if step >= total:
                break
            batch = order[b * t.batch_size : (b + 1) * t.batch_size][acc.process_index :: world]
            stats = torch.zeros(2, dtype=torch.float64)
            for s in range(0, per_rank, t.micro_batch_size):
                part = [train_set[i] for i in batch[s : s + t.micro_batch_size]]
                sync = s + t.micro_batch_size >= per_rank
                with contextlib.nullcontext() if sync else acc.no_sync(model):
                    loss, rc, rr = pair_forward(model, part, pad_id, acc.device, t.margin)
                    acc.backward(loss * len(part) / per_rank)
                stats += torch.tensor([loss.item() * len(part), (rc > rr).sum().item()])
            if o.max_grad_norm > 0:
                acc.clip_grad_norm_(params, o.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            stats = all_sum(acc, stats) / t.batch_size
            row = {"step": step, "epoch": epoch, "loss": stats[0].item(), "accuracy": stats[1].item(),
                   "lr": scheduler.get_last_lr()[0]}  # fmt: skip
            if t.eval_every and step % t.eval_every == 0 and step < total:
                row.update(evaluate(model, eval_set, pad_id, acc, t.eval_batch_size, t.margin))
            write(row)
            if step % t.log_every == 0 or step == total:
                log.info("step %d/%d loss %.4f acc %.3f", step, total, row["loss"], row["accuracy"])
    final = evaluate(model, eval_set, pad_id, acc, t.eval_batch_size, t.margin)
    write({"step": step, **final})
    log.info("held-out pairwise accuracy %.3f (loss %.4f)", final["eval/accuracy"], final["eval/loss"])
    metrics = {
        **final,
        "train/loss": row.get("loss"),
        "train/accuracy": row.get("accuracy"),
        "reward_mean": final["eval/reward_mean"],  # RewardModelScorer(normalize="fixed") reads these two
        "reward_std": final["eval/reward_std"],
        "steps": step,
        "num_train": len(train_set),
        "num_eval": len(eval_set),
        "base_model": cfg.model.path,
        "time_s": time.perf_counter() - start,
    }
    acc.wait_for_everyone()
    if acc.is_main_process:
        save_reward_model(acc.unwrap_model(model), tokenizer, out / "model", cfg.model.dtype, metrics)
    acc.wait_for_everyone()
    return metrics


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    from rlhf.train import setup_logging

    setup_logging()
    try:
        train(load_config(argv[0], argv[1:]))
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
