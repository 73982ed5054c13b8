"""Time a few GRPO steps of a recipe and set each stage against a rough lower bound.

    python -m rlhf.benchmark recipes/grpo_arithmetic_smollm2.yaml --warmup 2 --steps 5 [--json] [key=value ...]

Why bounds: a seconds-per-step number alone does not say whether a stage is slow. Decoding one token reads every
weight once, so a rollout cannot beat (decode steps x weight bytes / memory bandwidth); an update cannot beat
(6 x N x tokens / peak FLOP/s). The ratio measured/bound says how far each stage is from the hardware. Both bounds are
estimates: they ignore attention, the KV cache, the prefill, optimizer work and kernel launch costs, and the machine
numbers (bandwidth, peak FLOP/s) are defaults from this project's measurements unless given.

Dtypes: the run is repeated in float32 and, where the machine computes it natively, bfloat16, and a closing table sets
rollout and update tokens/s side by side with each dtype's measured matmul rate and the dtype `model.dtype: auto`
picks here (`--dtypes float32,bfloat16` forces both, e.g. to see emulated bfloat16 on an AVX2-only CPU; a
`model.dtype=...` override runs that one). On a CPU the peak FLOP/s of the bound is this machine's measured matmul
rate in the run's dtype (`--peak-flops` overrides it).

`--compare-trl` then runs scripts/bench_trl.py (TRL's GRPOTrainer, `pip install trl`) with the same completion length,
prompts and group size, and prints both step times and the ratio ours/TRL (`--trl-json FILE` reuses a saved run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from rlhf.dtypes import matmul_flops

CPU_BANDWIDTH = 9e9  # B/s, memory copy measured on this project's 2-core machine (shared/DESIGN.md)
# Datasheet numbers (dense bf16 tensor-core FLOP/s, HBM bandwidth) for GPUs a run is likely to meet; others need flags.
GPU_SPECS = {"H200": (4.8e12, 9.89e14), "H100": (3.35e12, 9.89e14), "A100": (2.0e12, 3.12e14)}
STAGES = (("rollout", "time/rollout"), ("ref", "time/ref"), ("reward", "time/reward"), ("update", "time/train"))
LABELS = {"rollout": "rollout", "ref": "ref/old log-probs", "reward": "reward", "update": "update", "step": "step"}


# ------------------------------------------------------------------------------------------------------- bounds
def generation_bound_s(decode_steps: float, weight_bytes: float, bandwidth: float) -> float:
    """Seconds to read the weights once per decode step: the memory-bound floor of batched sampling."""
    return decode_steps * weight_bytes / bandwidth


def training_flops(n_params: float, tokens: float) -> float:
    """Forward 2·N·tokens + backward 4·N·tokens (Kaplan et al. 2020). With a frozen base the weight-gradient half of
    the backward is not needed, so this over-counts LoRA work by about a third: the bound is an estimate."""
    return 6.0 * n_params * tokens


def training_bound_s(n_params: float, tokens: float, peak_flops: float) -> float:
    return training_flops(n_params, tokens) / peak_flops


def forward_bound_s(n_params: float, tokens: float, peak_flops: float) -> float:
    """A scoring pass (reference or pre-update log-probs) is a forward only: 2·N·tokens."""
    return 2.0 * n_params * tokens / peak_flops


def _base_params(model: nn.Module) -> list[nn.Parameter]:
    """The base model's parameters without LoRA weights, tied tensors counted once."""
    seen, out = set(), []
    for name, p in model.named_parameters():
        if "lora_" in name or p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        out.append(p)
    return out


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the base weights in their stored dtype: what one decode step reads (the adapter is merged in)."""
    return sum(p.numel() * p.element_size() for p in _base_params(model))


def non_embedding_params(model: nn.Module) -> int:
    """N for the FLOP count: base parameters minus the input embedding table (a lookup, no matmul). A tied output
    head shares that table and does cost FLOPs, so it is counted back in."""
    total = sum(p.numel() for p in _base_params(model))
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == emb.data_ptr()
    return total - (0 if tied else emb.numel())


def base_dtype(model: nn.Module) -> torch.dtype:
    return max(((p.dtype, p.numel()) for p in _base_params(model)), key=lambda x: x[1])[0]


def machine_defaults(device: torch.device, dtype: torch.dtype) -> tuple[float | None, float | None]:
    """(bandwidth B/s, peak FLOP/s) for this device: on a CPU the project's measured bandwidth and this machine's
    matmul rate in `dtype` (CPUs differ 50x in bfloat16); a datasheet GPU; or unknown."""
    if device.type == "cpu":
        return CPU_BANDWIDTH, matmul_flops(dtype, 1024, 1024, 1024, seconds=0.3)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    for key, (bw, flops) in GPU_SPECS.items():
        if key in name:
            return bw, (flops if dtype != torch.float32 else flops / 2)
    return None, None


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    # ru_maxrss is in KiB on Linux: the whole process's peak, model loading included
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "maxrss (process peak)"


# ------------------------------------------------------------------------------------------------------- running
def benchmark(
    recipe: str,
    overrides: list[str] | None = None,
    warmup: int = 2,
    steps: int = 5,
    bandwidth: float | None = None,
    peak_flops: float | None = None,
) -> dict:
    """Run warmup + steps training steps in a temporary directory and summarise the steps after the warm-up."""
    from rlhf.config import load_config
    from rlhf.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="rlhf-bench-") as tmp:
        forced = [
            "eval.every=0",
            "logging.report_to=[]",
            "logging.progress_bar=false",
            "logging.samples_every=0",
            f"output_dir={tmp}",
            f"train.max_steps={warmup + steps}",
        ]
        cfg = load_config(recipe, list(overrides or []) + forced)
        trainer = Trainer(cfg, recipe)
        trainer.train()
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step" in r and r["step"] > warmup]
    if not rows:
        raise RuntimeError("no timed steps after the warm-up; raise --steps")

    model = trainer.peft_model
    device = next(model.parameters()).device
    dtype = base_dtype(model)
    bw_default, flops_default = machine_defaults(device, dtype)
    bandwidth = bandwidth or bw_default
    peak_flops = peak_flops or flops_default
    r, a = cfg.rollout, cfg.algorithm
    prompts = cfg.train.prompts_per_step
    seqs = prompts * r.num_generations
    # Prompt lengths are not in metrics.jsonl; every step draws from the same tokenized set, so its mean stands in.
    prompt_len = statistics.mean(len(p) for p in trainer.train_set.prompt_ids)
    mean = lambda key: statistics.mean(row[key] for row in rows)
    completion_len = mean("completion/mean_len")
    chunks = 1 if r.batch_size <= 0 else math.ceil(prompts / max(1, r.batch_size // r.num_generations))
    decode_steps = chunks * mean("completion/max_len")  # one batched decode step per token of the longest completion
    n = non_embedding_params(model)
    wbytes = weight_bytes(model)
    # Tokens the update computes: each prompt is encoded once for its G completions (the trainer shares it).
    update_tokens = (prompts * prompt_len + seqs * completion_len) * a.num_iterations
    score_passes = int(a.beta > 0) + int(not (a.num_iterations == 1 and a.num_minibatches == 1))
    score_tokens = prompts * prompt_len + seqs * completion_len

    bounds: dict[str, float | None] = {"rollout": None, "ref": None, "reward": None, "update": None}
    if bandwidth:
        bounds["rollout"] = generation_bound_s(decode_steps, wbytes, bandwidth)
    if peak_flops:
        bounds["update"] = training_bound_s(n, update_tokens, peak_flops)
        bounds["ref"] = score_passes * forward_bound_s(n, score_tokens, peak_flops) if score_passes else None
    stages = {}
    for name, key in STAGES:
        s = mean(key)
        b = bounds[name]
        stages[name] = {"s": s, "bound_s": b, "ratio": s / b if b else None}
    stages["step"] = {"s": mean("time/step"), "bound_s": None, "ratio": None}
    gen_tokens = sum(row["completion/mean_len"] * seqs for row in rows)
    train_time = sum(row["time/train"] for row in rows)
    mem, mem_kind = peak_memory_mb(device)
    return {
        "recipe": str(recipe),
        "overrides": list(overrides or []),
        "warmup": warmup,
        "steps": len(rows),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "prompts_per_step": prompts,
        "num_generations": r.num_generations,
        "max_new_tokens": r.max_new_tokens,
        "beta": a.beta,
        "sequences_per_step": seqs,
        "prompt_mean_len": prompt_len,
        "completion_mean_len": completion_len,
        "step_s": stages["step"]["s"],
        "stages": stages,
        "gen_tokens_per_s": gen_tokens / sum(row["time/rollout"] for row in rows),
        # sequence tokens (prompt + completion of every sequence) per second of update: comparable across frameworks
        # whether or not they share the prompt encoding
        "trained_tokens_per_s": len(rows) * seqs * (prompt_len + completion_len) * a.num_iterations / train_time,
        "peak_memory_mb": mem,
        "peak_memory_kind": mem_kind,
        "estimate": {
            "weight_bytes": wbytes,
            "non_embedding_params": n,
            "decode_steps": decode_steps,
            "update_tokens": update_tokens,
            "bandwidth": bandwidth,
            "peak_flops": peak_flops,
        },
    }


def run_trl(result: dict, warmup: int, steps: int) -> dict:
    """scripts/bench_trl.py in a child process with our run's shape; its last stdout line is its JSON."""
    if result["beta"] != 0:
        logging.getLogger("rlhf").warning(
            "bench_trl.py runs with beta=0; this run has algorithm.beta=%s", result["beta"]
        )
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_trl.py"
    cmd = [sys.executable, str(script), "--json", f"--warmup={warmup}", f"--steps={steps}"]
    cmd += [f"--max-completion-length={result['max_new_tokens']}", f"--prompts-per-step={result['prompts_per_step']}"]
    cmd += [f"--num-generations={result['num_generations']}"]
    if result["dtype"] == "float32":
        cmd.append("--fp32")
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------------- output
def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def format_table(res: dict) -> str:
    e = res["estimate"]
    gbs = _fmt(e["bandwidth"] and e["bandwidth"] / 1e9, ".1f")
    tflops = _fmt(e["peak_flops"] and e["peak_flops"] / 1e12, ".2f")
    lines = [
        f"{res['recipe']}: {res['steps']} timed steps after {res['warmup']} warm-up, {res['prompts_per_step']} prompts"
        f" x {res['num_generations']} completions (mean {res['completion_mean_len']:.1f} of <= {res['max_new_tokens']}"
        f" tokens, prompts {res['prompt_mean_len']:.1f}), {res['device']} {res['dtype']}",
        f"{'stage':<20}{'s/step':>10}{'bound s*':>10}{'measured/bound':>16}",
    ]
    for name, st in res["stages"].items():
        ratio = "-" if st["ratio"] is None else f"{st['ratio']:.1f}x"
        lines.append(f"{LABELS[name]:<20}{st['s']:>10.3f}{_fmt(st['bound_s']):>10}{ratio:>16}")
    lines += [
        f"{'generated tokens/s':<20}{res['gen_tokens_per_s']:>10.1f}",
        f"{'trained tokens/s':<20}{res['trained_tokens_per_s']:>10.1f}   (prompt + completion of every sequence)",
        f"{'peak memory MiB':<20}{res['peak_memory_mb']:>10.0f}   ({res['peak_memory_kind']})",
        "* bounds are estimates, not measurements: rollout = decode steps"
        f" ({_fmt(e['decode_steps'], '.0f')}) x weight bytes ({e['weight_bytes'] / 1e6:.0f} MB) / bandwidth"
        f" ({gbs} GB/s); update = 6 x N ({e['non_embedding_params'] / 1e6:.1f}M non-embedding)"
        f" x tokens ({e['update_tokens']:.0f}) / peak ({tflops} TFLOP/s); ref = 2 x N x tokens per scoring pass",
    ]
    if "trl" in res:
        t = res["trl"]
        lines.append(
            f"TRL {t.get('trl_version', '?')}: {t['step_s']:.2f} s/step over {t['steps']} steps; ours "
            f"{res['step_s']:.2f} s/step; ours/TRL = {res['step_s'] / t['step_s']:.3f}"
        )
    return "\n".join(lines)


def dtypes_to_run(overrides: list[str], asked: str | None) -> list[str]:
    """`--dtypes` as a list; by default float32 plus bfloat16 where it is native, or the one a model.dtype override
    names."""
    from rlhf.dtypes import DTYPES, native_bf16

    if asked:
        names = [d.strip() for d in asked.split(",") if d.strip()]
        bad = [d for d in names if d not in DTYPES]
        if bad:
            raise SystemExit(f"--dtypes: {', '.join(bad)} not among {', '.join(DTYPES)}")
        return names
    if any(o.startswith("model.dtype=") for o in overrides):
        return [next(o for o in overrides if o.startswith("model.dtype=")).split("=", 1)[1]]
    return ["float32", "bfloat16"] if native_bf16().dtype == "bfloat16" else ["float32"]


def dtype_summary(runs: dict[str, dict]) -> dict:
    """Per dtype: matmul GFLOP/s (measured here, also for dtypes not run), rollout and update tokens/s, s/step; and
    what `auto` picks and why."""
    from rlhf.dtypes import DTYPES, native_bf16

    choice = native_bf16()
    rows = {}
    for name in ("float32", "bfloat16"):
        gflops = matmul_flops(DTYPES[name], 1024, 1024, 1024, seconds=0.2) / 1e9
        row = {"matmul_gflops": gflops, "auto": name == choice.dtype}
        if name in runs:
            r = runs[name]
            row |= {"gen_tokens_per_s": r["gen_tokens_per_s"], "trained_tokens_per_s": r["trained_tokens_per_s"]}
            row |= {"step_s": r["step_s"]}
        rows[name] = row
    return {"auto": choice.dtype, "reason": choice.reason, "rows": rows}


def format_dtypes(summary: dict) -> str:
    lines = [
        f"dtypes on this machine (model.dtype: auto picks {summary['auto']}: {summary['reason']})",
        f"{'dtype':<10}{'matmul GFLOP/s':>16}{'rollout tok/s':>15}{'update tok/s':>14}{'s/step':>9}",
    ]
    for name, row in summary["rows"].items():
        mark = "  <- auto" if row["auto"] else ""
        if "step_s" in row:
            cells = f"{row['gen_tokens_per_s']:>15.1f}{row['trained_tokens_per_s']:>14.1f}{row['step_s']:>9.2f}"
        else:
            cells = f"{'not run':>15}{'':>14}{'':>9}  (--dtypes float32,{name} runs it)"
        lines.append(f"{name:<10}{row['matmul_gflops']:>16.1f}{cells}{mark}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m rlhf.benchmark", description="Time GRPO steps of a recipe against estimated lower bounds."
    )
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="key.sub=value recipe overrides")
    p.add_argument("--warmup", type=int, default=2, help="steps run but not timed (allocator, caches)")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--bandwidth", type=float, default=None, help="memory bandwidth in B/s (CPU default 9e9)")
    p.add_argument("--peak-flops", type=float, default=None, help="peak FLOP/s (CPU default: a matmul timed here)")
    p.add_argument(
        "--dtypes",
        default=None,
        help="comma-separated dtypes to run, e.g. float32,bfloat16 (default: float32, plus bfloat16 where native)",
    )
    p.add_argument("--compare-trl", action="store_true", help="also run scripts/bench_trl.py with the same shape")
    p.add_argument("--trl-json", default=None, help="a saved `bench_trl.py --json` result to compare against")
    a = p.parse_intermixed_args(argv)  # overrides may come before or after the options
    if a.warmup < 0 or a.steps < 1:
        p.error("--warmup must be >= 0 and --steps >= 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # libraries print notices on stdout while loading (DeepSpeed's accelerator line); keep stdout for the result
    names = dtypes_to_run(a.overrides, a.dtypes)
    runs = {}
    with contextlib.redirect_stdout(sys.stderr):
        for name in names:
            over = [o for o in a.overrides if not o.startswith("model.dtype=")] + [f"model.dtype={name}"]
            runs[name] = benchmark(a.recipe, over, a.warmup, a.steps, a.bandwidth, a.peak_flops)
    from rlhf.dtypes import resolve_dtype

    auto = resolve_dtype("auto").dtype
    res = dict(runs.get(auto) or runs[names[0]])  # the top-level numbers: the run in the dtype auto picks
    res["dtypes"] = dtype_summary(runs)
    if a.trl_json:
        res["trl"] = json.loads(Path(a.trl_json).read_text().strip().splitlines()[-1])
    elif a.compare_trl:
        res["trl"] = run_trl(res, a.warmup, a.steps)
    if "trl" in res:
        res["ours_over_trl"] = res["step_s"] / res["trl"]["step_s"]
    if a.json:
        print(json.dumps(res))
    else:
        print("\n\n".join([*(format_table(r) for r in runs.values()), format_dtypes(res["dtypes"])]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
