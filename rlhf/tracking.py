"""What a person sees: metrics.jsonl, trackers through accelerate, a console line, sample completions."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger("rlhf")

TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}
CONSOLE_KEYS = [
    ("reward/mean", "reward", "{:.3f}"),
    ("eval/accuracy", "eval_acc", "{:.3f}"),
    ("loss/policy", "loss", "{:+.4f}"),
    ("policy/approx_kl", "kl", "{:.2e}"),
    ("policy/entropy", "ent", "{:.2f}"),
    ("completion/mean_len", "len", "{:.1f}"),
    ("time/step", "s/step", "{:.1f}"),
]


def available_trackers(names: list[str]) -> list[str]:
    """The named trackers that are installed; each missing one is reported once with how to install it."""
    out = []
    for name in names:
        pkg = TRACKER_PACKAGES.get(name)
        if pkg is None:
            raise ValueError(f"logging.report_to: unknown tracker {name!r}; choose from {', '.join(TRACKER_PACKAGES)}")
        if importlib.util.find_spec(pkg) is None:
            log.warning("tracker %r is not installed (pip install %s); logging without it", name, pkg)
            continue
        out.append(name)
    return out


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else v
    return v


class MetricsWriter:
    """One JSON line per step to <output_dir>/metrics.jsonl (main process only), plus accelerate's trackers."""

    def __init__(self, output_dir: str | Path, accelerator=None, is_main: bool = True, append: bool = False):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.samples_path = Path(output_dir) / "samples.jsonl"
        self.accelerator = accelerator
        self.is_main = is_main
        if is_main and not append:
            self.path.write_text("")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        if self.is_main:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        if self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.log(
                {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}, step=step
            )

    def samples(self, rows: list[dict], step: int) -> None:
        if not self.is_main:
            return
        with self.samples_path.open("a") as f:
            for r in rows:
                f.write(json.dumps({"step": step, **r}) + "\n")


def truncate_metrics_file(path: Path, last_step: int) -> None:
    """On resume, drop rows written after the checkpoint so the file reads as one uninterrupted run."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in keep))


def console_line(step: int, max_steps: int, metrics: dict[str, Any]) -> str:
    parts = [f"step {step:>4}/{max_steps}"]
    for key, short, fmt in CONSOLE_KEYS:
        v = metrics.get(key)
        if v is not None:
            parts.append(f"{short} " + fmt.format(_plain(v)))
    return " | ".join(parts)


def format_samples(rows: list[dict], width: int = 70) -> str:
    lines = []
    for r in rows:
        prompt = r["prompt"].replace("\n", " ")[:width]
        completion = r["completion"].replace("\n", "\\n")[:width]
        lines.append(f"  reward {r['reward']:+.2f} | {prompt} -> {completion}")
    return "\n".join(lines)
