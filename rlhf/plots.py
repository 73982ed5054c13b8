"""PNG charts of a run from its `<output_dir>/metrics.jsonl`: `python scripts/plot_run.py OUTPUT_DIR`.

A person checking a run wants, at a glance: is the reward going up, does held-out accuracy follow, is the policy
drifting (KL), is the loss sane, are completions growing or collapsing, and where the time goes. One PNG per chart
plus `overview.png` with every panel, written to `<output_dir>/plots/`. Figures are drawn on matplotlib's Agg canvas
directly (no pyplot, no display, no global state), so plotting works on headless machines and inside a training run.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("rlhf")

Series = tuple[list[float], list[float]]  # (steps, values)
TIME_PARTS = [
    ("time/rollout", "rollout"),
    ("time/ref", "reference"),
    ("time/reward", "reward"),
    ("time/train", "train"),
]


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl; a torn last line (a run killed mid-write) is skipped, not fatal."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d is not JSON; skipped", path, n)
    return rows


def series(rows: list[dict], key: str) -> Series:
    """(steps, values) of one metric, skipping rows without it or with null / non-finite values."""
    steps, values = [], []
    for r in rows:
        v, s = r.get(key), r.get("step")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or s is None:
            continue
        steps.append(float(s))
        values.append(float(v))
    return steps, values


def rolling_mean(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` points (fewer at the start), so the line starts at the first step."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _style(ax, title: str, ylabel: str, legend: bool = False) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize=8, loc="best")


def draw_reward(ax, rows: list[dict]) -> bool:
    steps, values = series(rows, "reward/mean")
    if not steps:
        return False
    window = max(1, min(25, len(values) // 10))
    marker = "." if len(steps) < 60 else None
    alpha = 0.35 if window > 1 else 1.0  # faint only when a rolling mean is drawn over it
    ax.plot(steps, values, color="tab:blue", alpha=alpha, linewidth=1, marker=marker, label="reward/mean")
    if window > 1:
        ax.plot(steps, rolling_mean(values, window), color="tab:blue", linewidth=2, label=f"rolling mean ({window})")
    _style(ax, "Reward (mean over the step's completions)", "reward", legend=True)
    return True


def draw_eval(ax, rows: list[dict]) -> bool:
    steps, values = series(rows, "eval/accuracy")
    if not steps:
        return False
    ax.plot(steps, values, color="tab:green", marker="o", linewidth=1.5)
    for s, v in ((steps[0], values[0]), (steps[-1], values[-1]))[: 1 if len(steps) == 1 else 2]:
        ax.annotate(f"{v:.3f}", (s, v), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=9)
    if all(0.0 <= v <= 1.0 for v in values):
        ax.set_ylim(0.0, 1.08)
    _style(ax, "Held-out accuracy (greedy)", "eval/accuracy")
    return True


def draw_kl(ax, rows: list[dict]) -> bool:
    everything: list[float] = []
    for key, color, style in (("policy/approx_kl", "tab:purple", "-"), ("loss/kl", "tab:orange", "--")):
        steps, values = series(rows, key)
        if steps:
            ax.plot(steps, values, color=color, linewidth=1.5, linestyle=style, label=key)
            everything += values
    if not everything:
        return False
    if not any(everything):
        # an exactly on-policy update with beta = 0 logs zeros: say so rather than show an empty-looking chart
        ax.text(0.5, 0.6, "all zero (on-policy update, no reference KL)", transform=ax.transAxes, ha="center")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    _style(ax, "KL divergence", "KL (nats/token)", legend=True)
    return True


def draw_loss(ax, rows: list[dict]) -> bool:
    steps, values = series(rows, "loss/policy")
    if not steps:
        return False
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.plot(steps, values, color="tab:red", linewidth=1.2)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    _style(ax, "Policy loss", "loss/policy")
    return True


def draw_length(ax, rows: list[dict]) -> bool:
    steps, values = series(rows, "completion/mean_len")
    if not steps:
        return False
    ax.plot(steps, values, color="tab:brown", linewidth=1.5, label="mean")
    max_steps, max_values = series(rows, "completion/max_len")
    if max_steps:
        ax.plot(max_steps, max_values, color="tab:brown", linewidth=1, linestyle="--", alpha=0.6, label="max")
    ax.set_ylim(bottom=0)
    _style(ax, "Completion length", "tokens", legend=bool(max_steps))
    return True


def draw_time(ax, rows: list[dict]) -> bool:
    parts = [(label, dict(zip(*series(rows, key)))) for key, label in TIME_PARTS]
    parts = [(label, by_step) for label, by_step in parts if by_step]
    total = series(rows, "time/step")
    if not parts and not total[0]:
        return False
    if parts:
        steps = sorted(set.intersection(*(set(by_step) for _, by_step in parts)))
        if steps:
            ax.stackplot(
                steps,
                *[[by_step[s] for s in steps] for _, by_step in parts],
                labels=[label for label, _ in parts],
                alpha=0.75,
            )
    if total[0]:
        ax.plot(*total, color="black", linewidth=1.2, label="whole step")
    ax.set_ylim(bottom=0)
    _style(ax, "Time per step", "seconds", legend=True)
    return True


def draw_tool_use(ax, rows: list[dict]) -> bool:
    """Multi-turn runs with tools: the fraction of training episodes that called a tool (and of greedy held-out
    episodes, where evaluated), with the mean turns per episode on a second axis."""
    steps, values = series(rows, "env/called_tool")
    if not steps:
        return False
    ax.plot(steps, values, color="tab:cyan", linewidth=1.5, marker="." if len(steps) < 60 else None, label="train")
    eval_steps, eval_values = series(rows, "eval/env/called_tool")
    if eval_steps:
        ax.plot(eval_steps, eval_values, color="tab:green", marker="o", linewidth=1.2, label="held-out (greedy)")
    ax.set_ylim(0.0, 1.05)
    turn_steps, turns = series(rows, "env/turns")
    if turn_steps:
        twin = ax.twinx()
        twin.plot(turn_steps, turns, color="grey", linewidth=1, linestyle="--", label="turns per episode")
        twin.set_ylabel("turns per episode")
        twin.set_ylim(bottom=0)
    _style(ax, "Episodes that called a tool", "fraction", legend=True)
    return True


@dataclass(frozen=True)
class Chart:
    name: str
    draw: Callable[..., bool]


CHARTS = [
    Chart("reward", draw_reward),
    Chart("eval_accuracy", draw_eval),
    Chart("kl", draw_kl),
    Chart("loss_policy", draw_loss),
    Chart("completion_length", draw_length),
    Chart("step_time", draw_time),
    Chart("tool_calls", draw_tool_use),
]


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def plot_run(output_dir: str | Path) -> list[Path]:
    """Write `<output_dir>/plots/<chart>.png` for each chart whose metrics exist, and `overview.png` with them all.
    Returns the written paths (empty when the file holds none of the metrics)."""
    out = Path(output_dir)
    metrics_file = out / "metrics.jsonl"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{metrics_file} not found: is {out} a run's output_dir?")
    rows = read_metrics(metrics_file)
    plots = out / "plots"
    written: list[Path] = []
    drawn: list[Chart] = []
    for chart in CHARTS:
        fig = _new_figure(8, 4.5)
        if chart.draw(fig.add_subplot(1, 1, 1), rows):
            plots.mkdir(parents=True, exist_ok=True)
            fig.tight_layout()
            fig.savefig(plots / f"{chart.name}.png")
            written.append(plots / f"{chart.name}.png")
            drawn.append(chart)
    if drawn:
        ncols = 3 if len(drawn) > 4 else min(2, len(drawn))
        nrows = math.ceil(len(drawn) / ncols)
        fig = _new_figure(5.5 * ncols, 3.8 * nrows + 0.5)
        for i, chart in enumerate(drawn):
            chart.draw(fig.add_subplot(nrows, ncols, i + 1), rows)
        last = max((r["step"] for r in rows if isinstance(r.get("step"), (int, float))), default=0)
        fig.suptitle(f"{out.resolve().name}: {last} steps", fontsize=13)
        fig.tight_layout()
        fig.savefig(plots / "overview.png")
        written.append(plots / "overview.png")
    return written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python scripts/plot_run.py OUTPUT_DIR   (charts from OUTPUT_DIR/metrics.jsonl into ./plots/)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        paths = plot_run(argv[0])
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not paths:
        print(f"error: {argv[0]}/metrics.jsonl holds none of the plotted metrics", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
