"""A GRPO run through `Trainer` as a library, for tests/test_distributed.py to launch under
`accelerate launch --num_processes 2` (and to run in-process as the one-process reference).

The rollout is replaced by a fixed one built from the prompt indices alone, so every set-up (any number of
processes, any launcher) trains on the same sequences. After `train.max_steps` steps each rank writes
    lora-init-rank<r>.safetensors   its LoRA weights before training (gathered under ZeRO-3)
    lora-rank<r>.safetensors        after training
    lora-restored-rank<r>.safetensors   after a save_checkpoint(trainable_module=policy), a scramble of every
                                    trainable weight, and load_checkpoint(trainable_module=policy)
and rank 0 writes final-metrics.json.

usage: zero_worker.py OUTPUT_DIR [key=value ...]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# another recipe (e.g. PPO) through the environment, the overrides staying the same
RECIPE = Path(os.environ.get("ZERO_WORKER_RECIPE", REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"))


def fixed_rollout(self, prompt_idx: list[int], generator=None):
    """Stands in for Collector.rollout: G completions per prompt drawn from a generator seeded by the prompt's index,
    with lengths 1..max_new_tokens, so the sequences depend on nothing but the prompt (`generator` is not used)."""
    from rlhf.data import left_pad
    from rlhf.rollout import Rollout

    G, C = self.s.num_generations, self.s.max_new_tokens
    pad = self.tokenizer.pad_token_id
    ps = self.prompt_set.select(prompt_idx)
    ids, mask = left_pad(ps.prompt_ids, pad)
    completion = torch.full((len(prompt_idx) * G, C), pad, dtype=torch.long)
    cmask = torch.zeros_like(completion)
    for row, i in enumerate(k for k in prompt_idx for _ in range(G)):
        g = torch.Generator().manual_seed(1_000 * i + row % G)
        n = int(torch.randint(1, C + 1, (1,), generator=g))
        completion[row, :n] = torch.randint(100, 5_000, (n,), generator=g)  # ordinary tokens, no EOS
        cmask[row, :n] = 1
    texts = self.tokenizer.batch_decode([c[m.bool()] for c, m in zip(completion, cmask)], skip_special_tokens=True)
    roll = Rollout(
        ids.repeat_interleave(G, 0),
        mask.repeat_interleave(G, 0),
        completion,
        cmask,
        torch.zeros(completion.shape),
        cmask.sum(-1) == C,
        texts,
        group_size=G,
        temperature=self.s.temperature,
    )
    return roll, ps


def lora_weights(trainer) -> dict[str, torch.Tensor]:
    """Every LoRA weight of the policy, full size on every rank (a collective under ZeRO-3)."""
    from rlhf.distributed import gathered

    params = {n: p for n, p in trainer.peft_model.named_parameters() if "lora_" in n}
    with gathered(trainer.accelerator, params.values()):
        return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in params.items()}


def run(out: Path, overrides: list[str], round_trip: bool = True) -> dict:
    from rlhf.collector import Collector
    from rlhf.config import load_config
    from rlhf.trainer import Trainer

    real_rollout = Collector.rollout
    Collector.rollout = fixed_rollout
    try:
        return _run(Trainer(load_config(RECIPE, [f"output_dir={out}", *overrides])), out, round_trip)
    finally:
        Collector.rollout = real_rollout  # run in-process by a test: leave the class as it was


def _run(trainer, out: Path, round_trip: bool) -> dict:
    from safetensors.torch import save_file

    from rlhf.checkpoint import load_checkpoint, save_checkpoint, trainable_parameters
    from rlhf.distributed import gathered

    acc = trainer.accelerator
    rank = acc.process_index
    out.mkdir(parents=True, exist_ok=True)
    ends = acc.end_training
    acc.end_training = lambda: None  # keep the process group for what follows
    save_file(lora_weights(trainer), str(out / f"lora-init-rank{rank}.safetensors"))
    metrics = trainer.train()
    save_file(lora_weights(trainer), str(out / f"lora-rank{rank}.safetensors"))
    if acc.is_main_process:
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        numbers["bucket_overhead"] = acc.unwrap_model(trainer.policy).bucket_overhead
        (out / "final-metrics.json").write_text(json.dumps(numbers, indent=1))

    if round_trip:
        state = {"sampler": trainer.sampler.state_dict()}
        root = out / "round-trip"
        args = (acc, trainer.peft_model, trainer.optimizer, trainer.scheduler)
        path = save_checkpoint(root, 1, *args, state, trainable_module=trainer.policy)
        params = trainable_parameters(acc, trainer.policy)
        with gathered(acc, params.values(), modifier_rank=0), torch.no_grad():
            for p in params.values():
                p.add_(1.0)
        load_checkpoint(path, *args, trainable_module=trainer.policy)
        save_file(lora_weights(trainer), str(out / f"lora-restored-rank{rank}.safetensors"))
    acc.wait_for_everyone()
    ends()
    return metrics


if __name__ == "__main__":
    run(Path(sys.argv[1]), sys.argv[2:])
