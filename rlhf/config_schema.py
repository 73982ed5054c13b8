"""The recipe's sections as typed dataclasses: every knob defined once, with its meaning, its default and (where one
exists) the paper that introduced it. `docs/CONFIG.md` is generated from these docstrings and field documents;
`rlhf.config` reads a recipe into them and validates it.

It is longer than the other modules (over 400 lines) on purpose: it holds data only (dataclass fields and their
documents; reading and validating are in `rlhf.config`), and one file is the one place a reader looks up any knob;
splitting it by section would scatter the reference without separating ideas.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A recipe problem a person can fix: the message names the key and the fix."""


def doc(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its documentation attached (rendered into the configuration reference)."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass
class LoraConfig:
    """Low-rank adapters (Hu et al. 2021, arXiv:2106.09685). Only these weights train."""

    r: int = doc("Adapter rank.", 16)
    alpha: float = doc("Scaling numerator: the update is scaled by alpha / r.", 32.0)
    dropout: float = doc("Dropout on the adapter input.", 0.0)
    target_modules: list[str] | str = doc(
        "Module names to adapt, or `all-linear` for every linear layer except the output head.", "all-linear"
    )
    compute_dtype: Literal["base", "float32"] = doc(
        "Dtype of the adapters' matmuls in training: `base` runs them in the frozen base's dtype under autocast (the "
        "adapter weights, their gradients and the optimizer stay float32; ~15% faster updates on a bfloat16 base), "
        "`float32` casts every adapted layer's input to float32 (PEFT's default). Same thing on a float32 base.",
        "base",
    )


@dataclass
class ModelConfig:
    """The policy. The reference policy is the same model with the adapter disabled (no second copy)."""

    path: str = doc(
        "Hub id, local directory, or the short name `smollm2-135m-instruct` (the packaged GGUF, "
        "converted once to a safetensors cache).",
        "smollm2-135m-instruct",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = doc(
        "Weight dtype of the frozen base (and of a separate critic). Adapters and log-probabilities stay float32. "
        "`auto`: bfloat16 where the device computes it natively (CUDA with bf16, a CPU with AVX512_BF16 or AMX), "
        "float32 where it would be emulated (~50x slower on an AVX2-only CPU); `rlhf.dtypes` says how it decides. "
        "The run logs the choice and records the resolved dtype in config.yaml.",
        "auto",
    )
    attn_implementation: str | None = doc(
        "Attention kernel of the policy (and of a separate critic or a teacher): `eager`, `sdpa`, "
        "`flash_attention_2`, ...; none = the transformers default (sdpa). On CPU with sequences of ~60 tokens "
        "`eager` measured ~15% faster than sdpa in bfloat16 with AMX, and ~10% slower in float32 on AVX2.",
        None,
    )
    lora: LoraConfig = doc("Adapter settings.", factory=LoraConfig)
    gradient_checkpointing: bool = doc("Recompute activations in the backward pass to save memory.", False)
    trust_remote_code: bool = doc("Allow model code from the hub (only for models you trust).", False)


@dataclass
class ArithmeticConfig:
    """The built-in procedural task: `Compute a <op> b.` with disjoint, seeded train and eval problems."""

    min_operand: int = doc("Smallest operand.", 10)
    max_operand: int = doc("Largest operand.", 99)
    min_operand_b: int | None = doc("Smallest second operand b; none = min_operand (e.g. 3-digit x 2-digit).", None)
    max_operand_b: int | None = doc("Largest second operand b; none = max_operand.", None)
    operators: list[str] = doc("Operators to draw from, any of `+ - *`.", factory=lambda: ["+"])
    template: str = doc(
        "Question wording; `{a}`, `{op}`, `{b}` are filled in.", "Compute {a} {op} {b}. Reply with only the number."
    )
    num_train: int = doc("Training problems.", 2000)
    num_eval: int = doc("Held-out problems (never in the training set).", 200)

    @property
    def operand_b_range(self) -> tuple[int, int]:
        """(smallest, largest) second operand."""
        lo = self.min_operand if self.min_operand_b is None else self.min_operand_b
        return lo, self.max_operand if self.max_operand_b is None else self.max_operand_b


@dataclass
class DataConfig:
    """Where prompts come from and how they become chat messages."""

    path: str = doc(
        "`arithmetic` (built-in), a hub dataset id, a local .jsonl/.json/.parquet/.csv file, or "
        "`reasoning_gym:TASK?key=value&...` (a procedurally generated reasoning-gym task; `make install-reasoning`).",
        "arithmetic",
    )
    name: str | None = doc("Hub dataset configuration name.", None)
    split: str = doc("Split to train on.", "train")
    prompt_column: str = doc("Column with the prompt: plain text, or a list of chat messages.", "prompt")
    rename_columns: dict[str, str] = doc(
        "Columns to rename before use, e.g. {solution: answer} so a MATH solution reaches rewards as `answer`.",
        factory=dict,
    )
    system_prompt: str | None = doc("System message put before every prompt (none: the template's default).", None)
    prompt_template: str | None = doc(
        "Format string applied to text prompts; `{prompt}` and any column name are filled in.", None
    )
    max_prompt_tokens: int = doc("Prompts longer than this (after the chat template) are dropped and counted.", 512)
    shuffle: bool = doc("Shuffle the prompt order each epoch (seeded).", True)
    arithmetic: ArithmeticConfig = doc("Settings of the built-in arithmetic task.", factory=ArithmeticConfig)


@dataclass
class VLLMConfig:
    """Settings of `rollout.engine: vllm` (vLLM's offline engine in the training process, Kwon et al. 2023,
    arXiv:2309.06180). Needs the extra environment: `make install-vllm`."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = doc(
        "vLLM's weight dtype; `auto` = the policy's (model.dtype).", "auto"
    )
    sync: Literal["auto", "merged", "lora"] = doc(
        "How weights reach vLLM after every optimizer step. merged: the LoRA delta folded into the base weights and "
        "the full state dict reloaded in process; lora: the adapter alone through vLLM's LoRA path; auto: merged on "
        "CPU (faster there, measured), lora on CUDA.",
        "auto",
    )
    kv_cache_gib: float = doc("Memory for vLLM's KV cache, in GiB (CPU or GPU).", 1.0)
    gpu_memory_utilization: float = doc(
        "On CUDA: the share of GPU memory vLLM may take for weights, activations and KV cache; training keeps the "
        "rest (colocated). Unused on CPU.",
        0.3,
    )
    max_model_len: int = doc("Longest prompt + completion vLLM plans for; 0 = the model's context length.", 0)
    enforce_eager: bool = doc(
        "Run eagerly: no torch.compile or CUDA graphs (compiling takes minutes on CPU; on CUDA, false is faster).", True
    )


@dataclass
class RolloutConfig:
    """The rollout engine: G sampled completions per prompt."""

    num_generations: int = doc("Completions per prompt (the GRPO group size G).", 8)
    max_new_tokens: int = doc("Longest completion; longer ones are cut and flagged truncated.", 64)
    temperature: float = doc("Sampling temperature; log-probabilities are taken at the same temperature.", 1.0)
    top_p: float = doc("Nucleus sampling threshold (Holtzman et al. 2019); 1.0 = off.", 1.0)
    top_k: int = doc("Sample only among the k most likely tokens; 0 = off.", 0)
    stop: list[str] = doc(
        "Strings that end a completion (kept in it), besides the EOS token; held-out evaluation stops at them too.",
        factory=list,
    )
    mask_truncated: bool = doc(
        "Leave completions that hit max_new_tokens out of the loss (DAPO overlong filtering, arXiv:2503.14476).",
        False,
    )
    batch_size: int = doc("Sequences generated at once (memory budget); 0 = all of a step's at once.", 0)
    engine: str = doc(
        "Rollout engine: a name in `rlhf.rollout.ENGINES` (`builtin`: cached decoding with the training model; `vllm`: "
        "vLLM's offline engine in process, settings under `rollout.vllm`) or an import path `package.module:Class` "
        "implementing `rlhf.rollout.Engine`. Training, evaluation and "
        "`python -m rlhf.evaluate` all generate through it.",
        "builtin",
    )
    merge_adapter: bool = doc(
        "Fold the adapter into the base weights while generating (faster); the base weights are restored "
        "bit-exactly afterwards.",
        True,
    )
    vllm: VLLMConfig = doc("Settings of the vLLM engine (`engine: vllm`).", factory=VLLMConfig)


@dataclass
class RewardSpec:
    """One reward function; several are summed with their weights and logged separately."""

    fn: str = doc("Import path `pkg.module:name` or `path/to/file.py:name` (a function or a class).", "")
    weight: float = doc("Weight in the sum of rewards.", 1.0)
    kwargs: dict[str, Any] = doc(
        "Keyword arguments: passed to every call (function) or to the constructor (class).", factory=dict
    )
    on_error: Literal["raise", "zero"] = doc(
        "When the function raises or times out: stop the run with the row and exception, or score 0 and count it "
        "in `reward/<name>/errors`.",
        "raise",
    )
    timeout: float = doc("Seconds one call (one batch) may take before it counts as hung.", 120.0)
    name: str | None = doc("Name in the metrics (`reward/<name>`); defaults to the function's name.", None)
    batch_size: int = doc(
        "Rows per call: 0 = every row of the rank's batch in one call (TRL's convention), k = calls of at most k rows "
        "(1 = one call per row, each with one-element lists); the timeout is per call.",
        0,
    )
    max_concurrency: int = doc(
        "An `async def` reward function's calls in flight at once (its batch_size chunks, and the row-by-row retry "
        "of a failed call), awaited concurrently in one event loop as TRL awaits async rewards; 0 = no limit. "
        "Synchronous functions run one call at a time.",
        0,
    )


@dataclass
class EnvConfig:
    """Multi-turn episodes: an environment answers the policy between turns (tool results, user turns), up to
    max_turns policy turns and max_tokens episode tokens. Observation tokens carry no loss (action mask 0). Unset
    name = the single-turn path (one completion per prompt)."""

    name: str | None = doc(
        "A name in `rlhf.envs.ENVIRONMENTS` (`tools`: the policy calls `env.tools` by writing calls, a turn without a "
        "call is its answer; `single_turn`: one turn and done) or an import path `pkg.module:Class` / "
        "`file.py:Class` implementing `rlhf.envs.Environment`; none = single-turn episodes without an environment.",
        None,
    )
    factory: str | dict[str, str] | None = doc(
        "An environment class written for TRL's `environment_factory` (GRPOTrainer), used unchanged: `pkg.module:Class`"
        " / `file.py:Class` (one instance per episode, made with env.kwargs; `reset(**row)`, its other public methods "
        "are the tools, optional `get_reward()` and `close()`), or a mapping {name: path} with a dataset column "
        "`environment` naming each row's; excludes env.name and env.tools (rlhf/envs/factory.py).",
        None,
    )
    kwargs: dict[str, Any] = doc(
        "Keyword arguments of the environment's constructor (one instance per episode).", factory=dict
    )
    tools: list[Any] = doc(
        "Tools for the `tools` environment (`rlhf.tools.build_tools` specs: `calculator`, `python`, "
        "`pkg.module:Class`, or {fn: ..., kwargs: {...}}); passed to the constructor as `tools` when given. The "
        "`python` tool runs code under bubblewrap, else in unshare user+pid+net namespaces, and logs which at "
        "start-up; its kwargs: `timeout` (s), `memory_mb`, `max_output_bytes`, `isolation` (`auto`, `bwrap`, "
        "`unshare`, `guard`) and `allow_unsafe` (default false: a run where only the in-process socket guard works "
        "refuses to start; `{name: python, kwargs: {allow_unsafe: true}}` accepts it).",
        factory=list,
    )
    max_turns: int = doc("Policy turns per episode at most (each is one engine call for all running episodes).", 3)
    max_tokens: int = doc(
        "Token budget of an episode after the prompt (sampled and observation tokens); each turn also stops at "
        "rollout.max_new_tokens.",
        256,
    )
    reward_weight: float = doc(
        "Weight of the environment's reward (summed over the episode's turns) in the episode's score, added to the "
        "weighted reward functions, which score the last turn's text.",
        1.0,
    )


@dataclass
class AgentConfig:
    """A black-box agent program trained through an OpenAI-compatible endpoint the trainer serves (the proxy design
    of TRL's async trainer with OpenEnv, verifiers, AReaL's OpenAIProxyWorkflow, SkyRL's proxy_url and ART). Each
    episode is one call `run(base_url, row, api_key=..., model=...)`; its requests to `base_url` are sampled from the
    current policy through `rollout.engine` and recorded token by token (rlhf/agents/). A section of its own, beside
    `env`, because it replaces the episode loop, not the engine: the engine still samples. Unset run = off."""

    run: str | None = doc(
        "The agent: an import path `pkg.module:run_agent` or `file.py:run_agent` of a function "
        "`run_agent(base_url, row, api_key, model=..., **kwargs) -> reward | None` (use `OpenAI(base_url=base_url, "
        "api_key=api_key)`); `row` holds the dataset columns, `prompt` and `messages`. Its reward adds to the reward "
        "functions' (which score its last reply) with reward_weight; None adds nothing. Excludes env.name.",
        None,
    )
    kwargs: dict[str, Any] = doc("Keyword arguments passed to every call of the agent.", factory=dict)
    timeout_s: float = doc(
        "Wall-clock seconds one agent run may take; past it the episode fails (agent/timeouts) and its calls are "
        "refused.",
        120.0,
    )
    max_workers: int = doc("Agent runs at once on each rank (threads); the others wait for a free one.", 16)
    max_calls: int = doc("Endpoint calls one episode may make; later ones are refused (HTTP 429).", 8)
    max_tokens: int = doc(
        "Token budget of an episode's sequence after its first prompt (sampled and inserted tokens); a call past it "
        "is refused (HTTP 400), and each call's max_tokens is cut to what is left and to rollout.max_new_tokens.",
        512,
    )
    reward_weight: float = doc("Weight of the reward the agent returns, added to the reward functions'.", 1.0)
    save_traces: bool = doc(
        "Append every draw's traces to <output_dir>/traces/rank<r>.jsonl: per episode the contract (prompt_ids, "
        "response_ids, loss_mask, response_logprobs, model_version, reward), its replies and its failure, and the "
        "draw's engine calls.",
        False,
    )


@dataclass
class TRPOConfig:
    """Natural-gradient step by conjugate gradient on Fisher-vector products, scaled to a KL radius, with a
    backtracking line search (Schulman et al. 2015, arXiv:1502.05477)."""

    max_kl: float = doc("Trust-region radius delta: mean per-token KL(pi_old || pi_new) of the accepted step.", 0.01)
    cg_iters: int = doc("Conjugate-gradient iterations.", 10)
    damping: float = doc("Added to the Fisher matrix (F + damping * I) for a well-posed solve.", 0.1)
    fisher_fraction: float = doc(
        "Share of the batch's sequences (whole groups) whose KL Hessian gives the Fisher-vector products; the "
        "gradient and the line search use all of them (the paper subsamples the same way).",
        0.25,
    )
    backtrack_steps: int = doc("Line-search tries before the step is rejected.", 10)
    backtrack_ratio: float = doc("Step shrink factor per line-search try.", 0.5)


@dataclass
class TeacherConfig:
    """The teacher of on-policy distillation (algorithm.name = distill): the student samples, the teacher scores the
    same tokens, and the per-token advantage is -(log pi_student - log pi_teacher), the negative reverse KL (as in the
    Tinker cookbook, Qwen3 and GKD, arXiv:2306.13649). It must share the student's tokenizer."""

    path: str | None = doc("The teacher model: hub id, local directory or short name; none = the student's base.", None)
    adapter: str | None = doc("A PEFT adapter folded onto the teacher (e.g. a run's `adapter/` directory).", None)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = doc(
        "The teacher's weight dtype (`auto` as model.dtype).", "auto"
    )


@dataclass
class AlgorithmConfig:
    """Advantage estimator and policy loss."""

    name: str = doc(
        "Advantage estimator, policy loss and update: a row of the algorithm table (`rlhf/algorithms.py: "
        "ALGORITHMS`); every row, what it does and the keys it reads are listed at the end of this page.",
        "grpo",
    )
    gamma: float = doc("Discount of returns (REINFORCE estimators, GAE); 1.0 = undiscounted.", 1.0)
    lam: float = doc(
        "GAE lambda (Schulman et al. 2016, arXiv:1506.02438): 1 = Monte-Carlo return minus V, 0 = one-step TD error.",
        0.95,
    )
    beta: float = doc(
        "KL-to-reference coefficient; 0 skips all reference work. A loss term or a per-token reward penalty (the "
        "initial value when kl_target is set), as the algorithm's row says (`KL to reference` in the table below).",
        0.0,
    )
    kl_target: float | None = doc(
        "Adaptive KL coefficient (Ziegler et al. 2019, arXiv:1909.08593): beta is scaled each step towards this "
        "per-sequence KL; none = fixed beta. ppo/actor_critic/trpo only.",
        None,
    )
    kl_horizon: int = doc("Horizon of the adaptive KL controller, in sequences.", 10000)
    missing_eos_penalty: float = doc(
        "Subtracted from the score of a completion that hit max_new_tokens without an EOS (ppo/actor_critic/trpo).",
        0.0,
    )
    reward_norm: Literal["none", "batch", "running"] = doc(
        "Normalise sequence scores before the KL penalty (ppo/actor_critic/trpo): over this step's batch, or with "
        "running mean/std over all steps so far.",
        "none",
    )
    whiten_advantages: bool = doc("Whiten GAE advantages over the global batch (ppo/actor_critic/trpo).", True)
    target_kl: float | None = doc(
        "Early stop: skip this step's remaining minibatch updates once the approximate KL to the rollout policy "
        "exceeds this (ppo); none = off.",
        None,
    )
    kl_estimator: Literal["k1", "k2", "k3"] | None = doc(
        "Per-token estimator of KL(pi || pi_ref) (Schulman, 'Approximating KL divergence', 2020); none = k3 where "
        "the row puts KL in the loss, k1 where it is a reward penalty.",
        None,
    )
    scale_by_std: bool = doc("Divide advantages by the std of the rewards; false = Dr. GRPO (arXiv:2503.20783).", True)
    std_level: Literal["group", "batch"] = doc("Std over each prompt's group, or over the whole batch.", "group")
    clip_low: float = doc("Lower clip of the importance ratio: 1 - clip_low (PPO, arXiv:1707.06347).", 0.2)
    clip_high: float = doc("Upper clip: 1 + clip_high; larger than clip_low = DAPO clip-higher.", 0.2)
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "seq-mean-token-sum"] = doc(
        "Loss aggregation: mean over all tokens of the batch (global count), mean of per-sequence means, per-"
        "sequence sums divided by max_new_tokens (Dr. GRPO), or per-sequence sums averaged over sequences.",
        "token-mean",
    )
    clip_ratio_c: float | None = doc(
        "Dual-clip (Ye et al. 2020, arXiv:1912.09729): the loss of a token with a negative advantage is bounded by "
        "-c * A, so a huge ratio cannot blow it up; 3.0 is usual, > 1; none = off.",
        None,
    )
    tau_pos: float = doc("SAPO's gate temperature for positive advantages (arXiv:2511.20347).", 1.0)
    tau_neg: float = doc("SAPO's gate temperature for negative advantages (arXiv:2511.20347).", 1.05)
    entropy_coef: float = doc(
        "Entropy bonus: the loss subtracts coef * the policy's entropy over action tokens, aggregated like the loss "
        "(Williams & Peng 1991; Mnih et al. 2016); 0 = off. Keep it small: 0.005 drove SmolLM2-135M's entropy on the "
        "arithmetic demo from 2.3 to 10 nats (near uniform) within 60 steps; 1e-3 on the demo recipe held it near 0.3 "
        "(0.05 without) but lengthened completions, and did not raise accuracy reliably.",
        0.0,
    )
    tis_cap: float | None = doc(
        "Off-policy correction between the sampler and the trainer (truncated importance sampling, Yao et al. 2025, "
        "'Your efficient RL framework secretly brings you off-policy RL training'): each token's loss is weighted by "
        "min(exp(old_logp - behaviour_logp), cap); none = off (2.0 with train.max_staleness >= 1), 0 = off always. The "
        "mismatch is logged either way (rollout/mismatch_*).",
        None,
    )
    tis_seq_threshold: float | None = doc(
        "With tis_cap: a sequence whose mean k3 KL between the sampler's and the trainer's log-probs exceeds this is "
        "left out of the loss; none = keep every sequence.",
        None,
    )
    dynamic_sampling: bool = doc(
        "Dynamic sampling (DAPO, arXiv:2503.14476): drop groups whose rewards are all equal (each reward within "
        "1e-6 of the group's first) and draw more prompts until the step has its batch; see max_refills.",
        False,
    )
    max_refills: int = doc(
        "Dynamic sampling: extra draws per step at most; a rank still short trains on the informative groups it has "
        "(the rest fill the batch with no loss) and a warning says so.",
        4,
    )
    draw_prompts: int = doc(
        "Dynamic sampling: prompts generated per draw over all ranks (DAPO's generation batch); more than "
        "train.prompts_per_step x num_minibatches fills a step in fewer, larger engine calls, and informative groups "
        "beyond the step's batch are dropped; 0 = train.prompts_per_step x num_minibatches.",
        0,
    )
    num_iterations: int = doc("Passes (mu) over each rollout batch against stored old log-probabilities.", 1)
    num_minibatches: int = doc(
        "Optimizer steps per pass: a rollout step generates prompts_per_step x num_minibatches prompts.", 1
    )
    trpo: TRPOConfig = doc("Trust-region step (algorithm.name = trpo).", factory=TRPOConfig)
    teacher: TeacherConfig = doc("On-policy distillation's teacher (algorithm.name = distill).", factory=TeacherConfig)


@dataclass
class ValueConfig:
    """The value model of ppo/actor_critic/trpo."""

    model: Literal["head", "separate"] = doc(
        "head: a scalar head on the policy's last hidden state, sharing its LoRA trunk (one forward gives log-probs "
        "and values); separate: a critic with its own trunk and LoRA.",
        "head",
    )
    init_from: str | None = doc(
        "Separate critic only: a reward model saved by `python -m reward_models.train_rm` (its trunk and score "
        "head); none = the policy's base weights with a zero head.",
        None,
    )
    lr: float | None = doc("Learning rate of the value parameters; none = optim.lr.", None)
    coef: float = doc("Weight of the value loss in the total loss.", 0.1)
    clip: float = doc("Value clip range around the rollout-time values (PPO2); 0 = unclipped.", 0.2)
    warmup_steps: int = doc("First steps that train only the value model (the policy is left unchanged).", 0)


@dataclass
class OptimConfig:
    """AdamW on the adapter weights."""

    lr: float = doc("Peak learning rate.", 1e-4)
    weight_decay: float = doc("Decoupled weight decay.", 0.0)
    betas: list[float] = doc("Adam betas.", factory=lambda: [0.9, 0.999])
    eps: float = doc("Adam epsilon.", 1e-8)
    warmup_steps: int = doc("Linear warm-up optimizer steps.", 0)
    schedule: Literal["constant", "linear", "cosine"] = doc("Decay after warm-up, to 0 at the last step.", "constant")
    max_grad_norm: float = doc("Clip the global gradient norm; 0 = off.", 1.0)
    lora_plus_ratio: float = doc(
        "LoRA+ (Hayou et al. 2024, arXiv:2402.12354): the adapters' B matrices learn at this multiple of lr (the paper "
        "uses 16 with Adam); 1 = one learning rate for all.",
        1.0,
    )


@dataclass
class TrainConfig:
    """The outer loop."""

    max_steps: int = doc("Rollout + update steps.", 100)
    max_minutes: float | None = doc(
        "Wall-clock budget of the training steps (step-0 evaluation not counted): the run ends after the step that "
        "crosses it, with the final evaluation, checkpoint and adapter as at max_steps; none = no limit.",
        None,
    )
    prompts_per_step: int = doc("Prompts per optimizer step over all ranks.", 4)
    micro_batch_size: int = doc(
        "Sequences per forward/backward on one rank (gradient accumulation). A multiple of rollout.num_generations "
        "lets a prompt's G completions share one encoding of the prompt.",
        32,
    )
    save_every: int = doc("Save a checkpoint every N steps (and at the end); 0 = only at the end.", 0)
    resume_from: str | None = doc(
        "`latest` or a checkpoint directory to resume from. The checkpoint's config is compared first: a changed "
        "model, adapter shape, algorithm family, value model, group size, batch or data is refused with the diff; "
        "other changes (learning rate, max_steps, logging, ...) are applied and recorded in `history.jsonl`.",
        None,
    )
    overwrite: bool = doc(
        "Clear the files an earlier run left in output_dir (checkpoints, metrics, adapter, samples, plots) before "
        "starting; without it a fresh run into such a folder is refused.",
        False,
    )
    keep_last: int = doc("Checkpoints kept on disk (older ones are deleted once a newer one is complete).", 2)
    max_bad_steps: int = doc(
        "Steps in a row whose loss or gradient is not finite (each skipped, weights untouched) before the run stops.",
        3,
    )
    max_staleness: int = doc(
        "Asynchronous rollouts: while step t trains, a rollout worker generates the batches of the next steps from a "
        "snapshot of the weights, so a batch is trained on weights at most this many steps newer than those it was "
        "sampled with (bounded staleness: AReaL, Fu et al. 2025, arXiv:2505.24298; verl's one-step-off trainer; "
        "prime-rl's max_async_level). 0 = generate then train (synchronous). With >= 1 the clip ratio is taken "
        "against the sampling policy and algorithm.tis_cap defaults to 2 (README: Asynchronous rollouts).",
        0,
    )
    rollout_timeout: float = doc(
        "With max_staleness >= 1: seconds one batch may spend in the rollout worker before the run stops with an "
        "error naming what the worker was doing (a hung engine, reward or environment never hangs the run).",
        1800.0,
    )


@dataclass
class EvalConfig:
    """Held-out evaluation: greedy completions scored by the reward functions."""

    every: int = doc("Evaluate every N steps, at step 0 and at the end; 0 = off.", 0)
    num_samples: int = doc("Held-out prompts (0 = all of the split).", 200)
    split: str = doc(
        "Evaluation split: of a hub dataset, or the sibling file of a local training file (`train.jsonl` -> "
        "`test.jsonl`). With neither, a seeded slice of num_samples rows (a tenth when 0) is held out of the training "
        "file, so evaluation never scores training rows; the log says which. The arithmetic task has its own.",
        "test",
    )
    path: str | None = doc("A separate evaluation file or hub dataset (its `split`); none = as described above.", None)
    max_new_tokens: int | None = doc("Longest eval completion; none = rollout.max_new_tokens.", None)
    batch_size: int = doc("Prompts generated at once.", 64)
    success_threshold: float = doc("A completion counts as correct when its weighted reward is at least this.", 1.0)


@dataclass
class LoggingConfig:
    """What a person sees."""

    every: int = doc("Console line every N steps.", 1)
    report_to: list[str] = doc(
        "Trackers through accelerate: tensorboard, wandb, trackio, mlflow.", factory=lambda: ["tensorboard"]
    )
    samples_every: int = doc("Print and save a few sample completions every N steps; 0 = off.", 10)
    progress_bar: bool = doc("Show a progress bar.", True)


@dataclass
class Config:
    """A whole recipe."""

    output_dir: str = doc("Where metrics, checkpoints and the adapter go.", "runs/default")
    seed: int = doc("Seed of python, numpy and torch RNGs and of the data order.", 0)
    model: ModelConfig = doc("Policy model.", factory=ModelConfig)
    data: DataConfig = doc("Prompt data.", factory=DataConfig)
    rollout: RolloutConfig = doc("Generation.", factory=RolloutConfig)
    rewards: list[RewardSpec] = doc(
        "Reward functions.", factory=lambda: [RewardSpec(fn="reward_models.numeric:numeric_answer_reward")]
    )
    env: EnvConfig = doc("Multi-turn environment (none = single-turn).", factory=EnvConfig)
    agent: AgentConfig = doc("An agent program over the OpenAI-compatible endpoint (none = off).", factory=AgentConfig)
    algorithm: AlgorithmConfig = doc("Algorithm.", factory=AlgorithmConfig)
    value: ValueConfig = doc("Value model (ppo, actor_critic, trpo).", factory=ValueConfig)
    optim: OptimConfig = doc("Optimizer.", factory=OptimConfig)
    train: TrainConfig = doc("Loop.", factory=TrainConfig)
    eval: EvalConfig = doc("Evaluation.", factory=EvalConfig)
    logging: LoggingConfig = doc("Logging.", factory=LoggingConfig)
