"""Step 7 of the loop, what a run leaves behind: the console line and samples, checkpoints, and at the end the adapter
in PEFT format with a model card and plots."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from rlhf import __version__
from rlhf.checkpoint import save_adapter, save_checkpoint
from rlhf.config import to_dict
from rlhf.distributed import all_gather_cat, all_sum
from rlhf.rewards import reward_metrics
from rlhf.run_utils import command_line
from rlhf.tracking import MetricsWriter, console_line, format_samples

log = logging.getLogger("rlhf")


class RunOutputs:
    """Writes under `cfg.output_dir`. state() returns the trainer's resumable state beyond the weights (sampler
    position, KL controller, reward statistics); trainable_module is the module whose non-adapter trainable weights
    (value head, critic) travel with the checkpoint, or None."""

    def __init__(
        self,
        cfg,
        recipe: str,
        accelerator,
        peft_model,
        optimizer,
        scheduler,
        tokenizer,
        writer: MetricsWriter,
        state: Callable[[], dict],
        reward_names: list[str],
        trainable_module=None,
    ):
        self.cfg, self.recipe, self.acc = cfg, recipe, accelerator
        self.peft_model, self.optimizer, self.scheduler = peft_model, optimizer, scheduler
        self.tokenizer, self.writer, self.state = tokenizer, writer, state
        self.reward_names, self.trainable_module = reward_names, trainable_module
        self.out = Path(cfg.output_dir)
        self.is_main = accelerator.is_main_process
        self.tensors: Callable[[], dict] | None = None  # {file name: {name: tensor}} saved with each checkpoint

    def step_done(self, step: int, metrics: dict, prompts: list[str], roll, rewards: Tensor, bar) -> None:
        """The console line, the progress bar and (every logging.samples_every steps) a few samples."""
        lg, max_steps = self.cfg.logging, self.cfg.train.max_steps
        if self.is_main and lg.samples_every and step % lg.samples_every == 0:
            self.log_samples(prompts, roll, rewards, step)
        if self.is_main and step % lg.every == 0:
            (bar.write if bar else log.info)(console_line(step, max_steps, metrics))
        if bar:
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['policy/approx_kl']:.1e}")

    def log_samples(self, prompts: list[str], roll, rewards: Tensor, step: int, n: int = 4) -> None:
        G = roll.group_size
        picks = [i * G for i in range(min(n, len(prompts) // G))]
        rows = [{"prompt": prompts[i], "completion": roll.texts[i], "reward": rewards[i].item()} for i in picks]
        self.writer.samples(rows, step)
        log.info("samples at step %d:\n%s", step, format_samples(rows))

    def save(self, step: int) -> None:
        path = save_checkpoint(
            self.out / "checkpoints",
            step,
            self.acc,
            self.peft_model,
            self.optimizer,
            self.scheduler,
            {**self.state(), "version": __version__},
            keep_last=self.cfg.train.keep_last,
            trainable_module=self.trainable_module,
            config=to_dict(self.cfg),
            tensors=None if self.tensors is None else self.tensors(),
        )
        if self.is_main:
            log.info("checkpoint saved to %s", path)

    def finish(self, step: int, final_metrics: dict) -> None:
        """The last checkpoint, the adapter with its card, and the plots."""
        self.save(step)
        self.save_adapter(final_metrics, step)
        if self.is_main:
            self.write_plots()

    def save_adapter(self, final_metrics: dict, steps: int) -> None:
        """The adapter in PEFT format, the tokenizer, and a model card (after peft's own placeholder README)."""
        adapter = self.out / "adapter"
        save_adapter(self.acc, self.peft_model, adapter)  # gathered under ZeRO-3
        if self.is_main:
            from rlhf.model_card import write_model_card

            self.tokenizer.save_pretrained(adapter)
            write_model_card(
                adapter,
                self.cfg.model.path,
                self.recipe,
                to_dict(self.cfg),
                final_metrics,
                command=command_line(),
                data_desc=self.data_description(),
                reward_names=self.reward_names,
                steps=steps,
            )
            log.info("adapter saved to %s", adapter)
        self.acc.wait_for_everyone()

    def data_description(self) -> str:
        d = self.cfg.data
        if d.path == "arithmetic":
            a = d.arithmetic
            return (
                f"built-in arithmetic task: operands {a.min_operand}..{a.max_operand}, "
                f"operators {' '.join(a.operators)}, {a.num_train} training / {a.num_eval} held-out problems "
                f"(seed {self.cfg.seed})"
            )
        return (
            f"{d.path}" + (f" ({d.name})" if d.name else "") + f", split {d.split}, prompt column {d.prompt_column!r}"
        )

    def write_plots(self) -> None:
        try:
            from rlhf.plots import plot_run

            paths = plot_run(self.out)
            if paths:
                log.info("plots written to %s", paths[0].parent)
        except ImportError as e:  # plotting is a convenience; a missing matplotlib must not fail a finished run
            log.warning("no plots: %s (pip install matplotlib)", e)


def episode_metrics(acc, stats: dict[str, Tensor], env_rewards: Tensor) -> dict[str, float]:
    """Multi-turn episodes over every rank: `env/<key>` means of the per-episode numbers (turns, observation tokens,
    the environment's metrics, e.g. `env/called_tool` = the fraction of episodes that called a tool) and
    `env/reward`, the environment's reward. A key with its own prefix keeps it (`agent/failed`)."""
    m = {(k if "/" in k else f"env/{k}"): all_gather_cat(acc, v.float()).mean().item() for k, v in stats.items()}
    m["env/reward"] = all_gather_cat(acc, env_rewards.float()).mean().item()
    return m


def rollout_metrics(acc, roll, rewards: Tensor, per_fn: dict[str, Tensor], reward_fns: list) -> dict:
    """The step's reward and completion metrics over every rank, and what reward plug-ins count."""
    everyone = all_gather_cat(acc, rewards)
    group_std = everyone.view(-1, roll.group_size).std(dim=1)
    lengths = all_gather_cat(acc, roll.lengths.float())
    truncated = all_gather_cat(acc, roll.truncated.float())
    m = {
        "reward/mean": everyone.mean().item(),
        "reward/std": everyone.std().item() if everyone.numel() > 1 else 0.0,
        "frac_reward_zero_std": (group_std < 1e-6).float().mean().item(),
        "completion/mean_len": lengths.mean().item(),
        "completion/max_len": lengths.max().item(),
        "completion/clipped_frac": truncated.mean().item(),
    }
    for rf in reward_fns:
        vals = all_gather_cat(acc, per_fn[rf.name])
        ok = ~torch.isnan(vals)
        m[f"reward/{rf.name}/mean"] = vals[ok].mean().item() if ok.any() else float("nan")
        m[f"reward/{rf.name}/errors"] = all_sum(acc, rf.errors).item()
    for key, value in reward_metrics(reward_fns).items():  # what plug-ins count (e.g. verifier time-outs)
        m[key] = all_sum(acc, value).item()
    return m
