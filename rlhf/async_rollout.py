"""Where a step's batch comes from: generated on the spot (`Rollouts`, train.max_staleness = 0) or by a rollout worker
that runs ahead of the update (`AsyncRollouts`, max_staleness = K >= 1).

The schedule is fixed by step numbers, not by timing: the batch of step n is sampled with the weights of policy
version max(0, n - 1 - K), where the version is the number of training steps completed (a step may hold several
optimizer steps: minibatches, mu passes). The batches of steps 1 .. K+1 are submitted at the start (version 0) and,
when step n has trained, the batch of step n + K + 1 is submitted with version n. A batch is therefore exactly
min(n - 1, K) versions behind when it trains, on every rank, however slow the trainer or the worker is: delays only
show in `time/rollout_wait`. Prompts are drawn when a batch is submitted, on the trainer's thread; each batch samples
with its own generator seeded by (seed, step, rank). So the run is deterministic, and a checkpoint can hold what a
resumed run needs to produce the same batches again: the sampler's position, the prompts of every submitted batch
not yet trained on (`rollout_pending` in trainer_state.json) and the weights each was sampled with
(rollout_weights.safetensors, the LoRA tensors of at most K+1 versions). On resume those prompts come first
(`PromptSampler.queued`) and each is sampled again with its recorded version, so every prompt trains exactly once per
epoch and, single-threaded, the resumed run equals the uninterrupted one bit for bit. A recorded batch more than K
versions behind (K lowered on resume) is sampled again with the current weights and counted (`rollout/regenerated`);
no batch more than K versions behind is ever trained on. `trained_prompts.jsonl` gets one line per trained step
({"step", "prompts": global prompt indices, "version"}), cut back to the checkpoint's step on resume.

Why a thread, sharing the process. Decoding and scoring spend their time in torch kernels, which release the GIL; the
Python between kernels is short next to them, so a thread overlaps almost as well as a process, without a second
copy of the frozen base in memory and without shipping weights or episodes between processes. Both threads draw on
the same intra-op thread pool size: on a machine with few cores they share them (little gain there; the README gives
the numbers), with the rollout on its own device they would not. A separate process (or process group) is the one
step further, ARCHITECTURE.md says how.

What the worker reads. The optimizer writes the trainer's LoRA tensors in place, so the worker decodes with a second
model object (`rollout_copy`): the frozen base's tensors are shared (no memory cost) and the LoRA tensors are its
own, loaded from a snapshot (a clone taken on the trainer's thread between steps) before each batch. It can never fold
the adapter into the base (`rollout.merge_adapter`), since the base is shared with the update: it decodes the adapter
unmerged. The engine is built on this copy, so `weights_updated()` (vLLM's sync) reads the snapshot too, and the
held-out evaluation uses it after loading the current weights while the worker waits (`evaluation`).

What runs where. The worker runs steps 1-3 (episodes and rewards) and, with truncated importance sampling on, the
log-probs of the sampling version under the trainer's own forward; nothing on it is a collective. The trainer's
thread takes the batch and runs step 4 there (`Collector.complete`): the reference's log-probs, the values of the
current value model (GAE and the clipped value loss need the critic as it is now, not as it was when the batch was
sampled) and the sums over ranks, in the same order on every rank, so no rank trains a batch another has not got.

Failures. A worker exception, a worker thread that has died, or a batch past train.rollout_timeout becomes a
RolloutWorkerError on the trainer's thread naming the batch, the version and what the worker was doing; the wait is
in short slices, so a stop signal still ends the run within seconds.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import queue
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from rlhf.algorithms import UpdateKind
from rlhf.build import tis_cap
from rlhf.collector import Collector
from rlhf.config import ConfigError
from rlhf.distributed import zero_stage
from rlhf.policy import Policy
from rlhf.step_record import StepRecord

log = logging.getLogger("rlhf")

TRAINED_PROMPTS = "trained_prompts.jsonl"
SNAPSHOTS = "rollout_weights.safetensors"


class RolloutWorkerError(RuntimeError):
    """The rollout worker failed, died, or overran train.rollout_timeout; the message says what it was doing."""


def check_async(cfg, accelerator, update: UpdateKind) -> None:
    """What asynchronous rollouts cannot run with, refused before any model loads: a collective on the worker's
    thread, an update outside the minibatch loop, an adapter folded into the shared base."""
    K = cfg.train.max_staleness
    if K < 0 or cfg.train.rollout_timeout <= 0:
        raise ConfigError("train.max_staleness must be >= 0 (0 = synchronous) and train.rollout_timeout > 0 seconds")
    if not K:
        return
    problems = []
    if cfg.algorithm.dynamic_sampling:
        problems.append("algorithm.dynamic_sampling (its refills are agreed across ranks between draws)")
    if update is not UpdateKind.MINIBATCH:
        problems.append(f"algorithm.name={cfg.algorithm.name} (its natural step is not the clipped minibatch update)")
    if zero_stage(accelerator) == 3:
        problems.append("DeepSpeed ZeRO-3 (generation gathers the sharded weights, a collective); use ZeRO-2 or DDP")
    if (cfg.env.name or getattr(cfg.env, "factory", None)) and accelerator.num_processes > 1:
        problems.append("an environment with several processes (the ranks agree on every turn, a collective)")
    if getattr(getattr(cfg, "agent", None), "run", None):
        problems.append("agent.run (its endpoint samples on request, outside the batch schedule)")
    if cfg.rollout.engine == "vllm":
        from rlhf.rollout.vllm import resolve_sync

        if resolve_sync(cfg.rollout.vllm.sync) == "merged":
            problems.append("rollout.vllm.sync=merged (it folds the adapter into the base the update shares); use lora")
    if problems:
        raise ConfigError(
            f"train.max_staleness={K} generates on a background thread, which cannot run with "
            + "; ".join(problems)
            + ". Change that, or set train.max_staleness=0"
        )


def rollout_copy(model: nn.Module) -> nn.Module:
    """A second model object for the rollout worker: every frozen tensor shared with `model` (no second copy of the
    base), every trainable (LoRA) tensor its own, frozen; `load_weights` fills them from a snapshot."""
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    twin = copy.deepcopy(model, memo)
    for name, p in model.named_parameters():
        if p.requires_grad:
            owner, _, attr = name.rpartition(".")
            setattr(twin.get_submodule(owner), attr, nn.Parameter(p.detach().clone(), requires_grad=False))
    return twin.eval()


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Clones of `model`'s trainable tensors by name (taken on the trainer's thread, between optimizer steps)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_weights(twin: nn.Module, weights: dict[str, Tensor]) -> None:
    params = dict(twin.named_parameters())
    with torch.no_grad():
        for name, t in weights.items():
            params[name].copy_(t)


def batch_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The sampler's generator of one batch on one rank: the same batch draws the same numbers in any run."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1024 + rank)


class Rollouts:
    """train.max_staleness = 0: each step's batch is collected on the spot, with the current weights."""

    def __init__(self, collector: Collector, sampler, out: Path, is_main: bool):
        self.collector, self.sampler, self.out, self.is_main = collector, sampler, out, is_main
        self.versions: dict[int, int] = {}  # step -> the version its batch was sampled with

    def start(self, start_step: int) -> None:
        """Before the first step of this process (after a resume): trained_prompts.jsonl cut back to start_step."""
        if self.is_main:
            cut_trained_prompts(self.out / TRAINED_PROMPTS, start_step)

    def take(self, step: int) -> StepRecord:
        """Steps 1-4 of `step`, with `time/rollout_wait` and `rollout/staleness` (0 here)."""
        record = self.collector.collect()
        m = record.metrics
        m["time/rollout_wait"] = m["time/rollout"] + m["time/reward"]
        m["rollout/staleness"] = m["rollout/staleness_max"] = 0.0
        self.versions[step] = step - 1
        return record

    def trained(self, step: int, record: StepRecord) -> None:
        """`step` has trained on `record`: its prompts go to trained_prompts.jsonl."""
        if self.is_main:
            line = {"step": step, "prompts": list(record.prompt_ids), "version": self.versions.pop(step, step - 1)}
            with open(self.out / TRAINED_PROMPTS, "a") as f:
                f.write(json.dumps(line) + "\n")
        self.versions.pop(step, None)

    def state(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def tensors(self) -> dict:
        return {}

    def load_state(self, state: dict, path: Path) -> None:
        """The sampler from a checkpoint; prompts drawn ahead and not trained on (an asynchronous run's) come first."""
        self.sampler.load_state_dict(state["sampler"])
        pending = state.get("rollout_pending", [])
        self.sampler.queued = [i for p in pending for i in p["prompts"]] + self.sampler.queued

    @contextlib.contextmanager
    def evaluation(self) -> Iterator[None]:
        yield

    def close(self) -> None:
        pass


@dataclass
class Job:
    step: int  # the step that trains this batch
    version: int  # the policy version (training steps completed) of the weights that sample it
    prompts: list[int]  # global prompt indices, the same on every rank
    weights: dict[str, Tensor]  # the LoRA tensors of that version


class AsyncRollouts(Rollouts):
    """train.max_staleness = K >= 1: a worker thread samples the next batches from snapshots of the weights while the
    trainer updates (module docstring). `collector` is the trainer's (step 4 runs there); its engine decodes with
    `twin` (a `rollout_copy` of `peft_model`); `policy` is the trainer's Policy (for its scoring settings)."""

    def __init__(
        self, collector: Collector, sampler, out: Path, is_main: bool, *, peft_model: nn.Module, twin: nn.Module,
        policy: nn.Module, max_staleness: int, max_steps: int, seed: int, timeout: float, rank: int,
        sampler_logprobs: bool,
    ):  # fmt: skip
        super().__init__(collector, sampler, out, is_main)
        self.peft_model, self.twin, self.K, self.max_steps = peft_model, twin, max_staleness, max_steps
        self.seed, self.timeout, self.rank = seed, timeout, rank
        # with TIS the old log-probs are the sampling version's under the trainer's forward (its weights correct the
        # sampler against them); without, the clip ratio is taken against the sampler's own log-probs
        self.sampler_logprobs = sampler_logprobs
        self.worker = copy.copy(collector)  # the same settings, engine and rewards; the twin scores
        self.worker.policy = Policy(
            twin, None, policy.chunk_tokens, bucket_overhead=policy.bucket_overhead, lora_in_base=policy.lora_in_base
        )
        self.worker.peft_model, self.worker.sampler, self.worker.dynamic = twin, None, None
        self.pending: dict[int, Job] = {}  # submitted, not yet trained on, by step
        self.resumed: dict[int, tuple[int, dict[str, Tensor] | None]] = {}  # step -> (version, weights) of a checkpoint
        self.regenerated = 0
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.done: dict[int, object] = {}
        self.cond = threading.Condition()
        self.turn = threading.Lock()  # held by the worker per batch, by the evaluation while it uses the engine
        self.doing, self.since = "idle", 0.0
        self.thread = threading.Thread(target=self.work, name="rollout-worker", daemon=True)

    # ------------------------------------------------------------------------------------------ the trainer's side
    def start(self, start_step: int) -> None:
        super().start(start_step)
        self.version = start_step
        self.thread.start()
        for step in range(start_step + 1, min(start_step + self.K + 1, self.max_steps) + 1):
            self.submit(step)

    def submit(self, step: int) -> None:
        """Draw the prompts of `step`'s batch and queue it with the weights of the version the schedule gives it."""
        version, weights = self.resumed.pop(step, (self.version, None))
        if weights is None or step - 1 - version > self.K:
            if version != self.version:  # recorded too far behind (a lower K now) or its weights were not saved
                self.regenerated += 1
            version, weights = self.version, snapshot(self.peft_model)
        job = Job(step, version, self.sampler.take(self.collector.s.prompts_per_draw), weights)
        self.pending[step] = job
        self.jobs.put(job)

    def take(self, step: int) -> StepRecord:
        job = self.pending[step]
        t0 = time.perf_counter()
        draw, old = self.wait(job)
        staleness = step - 1 - job.version
        if staleness > self.K:  # submit() never queues one; kept as the promise's last guard
            raise RolloutWorkerError(f"the batch of step {step} is {staleness} versions behind (max {self.K})")
        metrics = {
            "time/rollout_wait": time.perf_counter() - t0,
            "rollout/staleness": float(staleness),
            "rollout/staleness_max": float(staleness),
            "rollout/regenerated": float(self.regenerated),
            "rollout/policy_version": float(job.version),
        }
        self.versions[step] = job.version
        return self.collector.complete(draw, metrics, old=old if self.sampler_logprobs else draw.rollout.logprobs)

    def trained(self, step: int, record: StepRecord) -> None:
        super().trained(step, record)
        self.pending.pop(step, None)
        self.version = step
        if step + self.K + 1 <= self.max_steps:
            self.submit(step + self.K + 1)

    def wait(self, job: Job):
        """The worker's result for `job`, waited for in short slices; every failure is a RolloutWorkerError."""
        with self.cond:
            while job.step not in self.done:
                if not self.thread.is_alive():
                    raise RolloutWorkerError(f"the rollout worker thread has exited ({self.doing})")
                busy = time.monotonic() - self.since if self.since else 0.0
                if busy > self.timeout:
                    frame = sys._current_frames().get(self.thread.ident)
                    where = "".join(traceback.format_stack(frame)[-4:]) if frame is not None else ""
                    raise RolloutWorkerError(
                        f"the rollout worker has been {self.doing} for {busy:.0f} s, past train.rollout_timeout="
                        f"{self.timeout:g} (a hung engine, reward function or environment? raise the timeout if it "
                        f"is only slow). It is at:\n{where}"
                    )
                self.cond.wait(0.25)
            out = self.done.pop(job.step)
        if isinstance(out, BaseException):
            raise RolloutWorkerError(
                f"the rollout worker failed while sampling the batch of step {job.step} (policy version "
                f"{job.version}): {type(out).__name__}: {out}"
            ) from out
        return out

    def state(self) -> dict:
        pending = [{"step": j.step, "version": j.version, "prompts": j.prompts} for j in self.pending.values()]
        return {"sampler": self.sampler.state_dict(), "rollout_pending": pending}

    def tensors(self) -> dict:
        """The weights of every pending batch's version, saved with the checkpoint (LoRA tensors, K+1 versions)."""
        named = {f"{j.version}/{n}": t.contiguous() for j in self.pending.values() for n, t in j.weights.items()}
        return {SNAPSHOTS: named} if named else {}

    def load_state(self, state: dict, path: Path) -> None:
        super().load_state(state, path)
        saved = {}
        if (path / SNAPSHOTS).is_file():
            from safetensors.torch import load_file

            saved = load_file(str(path / SNAPSHOTS))
        for p in state.get("rollout_pending", []):
            prefix = f"{p['version']}/"
            weights = {k[len(prefix) :]: t for k, t in saved.items() if k.startswith(prefix)} or None
            self.resumed[int(p["step"])] = (int(p["version"]), weights)

    @contextlib.contextmanager
    def evaluation(self) -> Iterator[None]:
        """The engine for the held-out evaluation, on the current weights, while the worker waits."""
        with self.turn:
            load_weights(self.twin, snapshot(self.peft_model))
            self.collector.engine.weights_updated()
            yield

    def close(self) -> None:
        """Drop the queued batches and let the worker end; a batch in flight is not waited for past a few seconds
        (the thread is a daemon), so a stop request still ends the run in time."""
        with contextlib.suppress(queue.Empty):
            while True:
                self.jobs.get_nowait()
        self.jobs.put(None)
        if self.thread.is_alive():
            self.thread.join(timeout=2.0)

    # ------------------------------------------------------------------------------------------ the worker's side
    def work(self) -> None:
        while (job := self.jobs.get()) is not None:
            with self.turn:
                self.since = time.monotonic()
                try:
                    out = self.produce(job)
                except BaseException as e:  # handed to the trainer, which raises it with what was being done
                    out = e
                self.since, doing = 0.0, self.doing
            with self.cond:
                self.done[job.step] = out
                self.doing = "idle" if not isinstance(out, BaseException) else doing
                self.cond.notify_all()

    def produce(self, job: Job):
        """Steps 1-3 of one batch with its version's weights and generator; the sampling version's log-probs."""
        what = f"batch of step {job.step} ({len(job.prompts)} prompts, policy version {job.version})"
        self.doing = f"loading the weights for the {what}"
        load_weights(self.twin, job.weights)
        self.collector.engine.weights_updated()
        self.doing = f"generating and scoring the {what}"
        draw = self.worker.draw_prompts(job.prompts, batch_generator(self.seed, job.step, self.rank))
        old = None
        if self.sampler_logprobs:
            self.doing = f"computing the sampling version's log-probs of the {what}"
            old, _ = self.worker.scored(draw.rollout, self.worker.policy)
        return draw, old


def cut_trained_prompts(path: Path, step: int) -> None:
    """Keep the lines of steps <= step (a line cut short by a kill is dropped)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("step", step + 1) <= step:
            kept.append(line)
    path.write_text("".join(k + "\n" for k in kept))


def build_rollouts(cfg, accelerator, collector: Collector, sampler, peft_model, twin, policy) -> Rollouts:
    """The recipe's rollouts: synchronous, or a worker `train.max_staleness` steps ahead (`twin`: its model)."""
    out, is_main, t = Path(cfg.output_dir), accelerator.is_main_process, cfg.train
    if not t.max_staleness:
        return Rollouts(collector, sampler, out, is_main)
    return AsyncRollouts(
        collector, sampler, out, is_main, peft_model=peft_model, twin=twin, policy=accelerator.unwrap_model(policy),
        max_staleness=t.max_staleness, max_steps=t.max_steps, seed=cfg.seed, timeout=t.rollout_timeout,
        rank=accelerator.process_index,
        sampler_logprobs=tis_cap(cfg.algorithm.tis_cap, t.max_staleness) is not None,
    )  # fmt: skip
