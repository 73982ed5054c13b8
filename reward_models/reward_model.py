"""A learned reward model as a reward function: a sequence classifier with one output scores (prompt, completion).

The reward model of RLHF (Ziegler et al. 2019, arXiv:1909.08593; Ouyang et al. 2022, arXiv:2203.02155) is the
language model with its LM head swapped for a scalar head, read at the last token of prompt + completion. Any
`AutoModelForSequenceClassification` with `num_labels=1` fits: a hub id, a local directory, the directory written by
`python -m reward_models.train_rm`, optionally with a PEFT adapter merged on load. In a recipe:

    rewards:
      - fn: reward_models.reward_model:RewardModelScorer
        kwargs: {path: runs/rm_arithmetic_smollm2/model, batch_size: 16}

The text is built exactly as in training (`encode_pair`, shared with `train_rm`): the tokenizer's chat template with
the prompt as the user turn and the completion as the assistant turn, else plain text; a reward model scored on a
different format than it was trained on gives numbers that mean nothing.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from rlhf.dtypes import DTYPES, resolve_dtype
from rlhf.models import resolve_model_path

log = logging.getLogger(__name__)

Text = str | list[dict]  # plain text, or chat messages [{role, content}, ...]


# ---------------------------------------------------------------------------------------------------------------------
# text -> token ids (shared with training so the two can never drift apart)


def _as_messages(value: Text | None, role: str) -> list[dict]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise ValueError(f"expected text or a list of chat messages {{role, content}}, got {type(value).__name__}")


def build_messages(prompt: Text | None, completion: Text) -> list[dict]:
    """The conversation a reward model reads. A completion that is a message list holding a non-assistant turn is a
    whole conversation already (the Anthropic-HH / UltraFeedback layout, where `chosen` repeats the prompt), so the
    prompt is not put before it a second time."""
    done = _as_messages(completion, "assistant")
    if any(m["role"] != "assistant" for m in done):
        return done
    return _as_messages(prompt, "user") + done


def pair_text(tokenizer, prompt: Text | None, completion: Text) -> tuple[str, bool]:
    """(text, has_special_tokens): the chat template when the tokenizer has one and there is a conversation, else the
    message contents joined by newlines (a base model's plain concatenation)."""
    messages = build_messages(prompt, completion)
    if getattr(tokenizer, "chat_template", None) and (prompt is not None or not isinstance(completion, str)):
        return tokenizer.apply_chat_template(messages, tokenize=False), True
    return "\n".join(m["content"] for m in messages), False


def encode_pair(tokenizer, prompt: Text | None, completion: Text, max_length: int | None = None) -> list[int]:
    """Token ids of prompt + completion; beyond `max_length` the oldest tokens (the start of the prompt) are cut, so
    the completion and the last token, where the score is read, always stay."""
    text, templated = pair_text(tokenizer, prompt, completion)
    ids = list(tokenizer(text, add_special_tokens=not templated)["input_ids"])
    if max_length is not None and len(ids) > max_length:
        ids = ids[-max_length:]
    return ids


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right padding: input_ids [B, T] long and attention_mask [B, T] long (1 on tokens). The sequence classifiers of
    transformers read the score at the rightmost non-pad token, which right padding keeps at each row's end."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def ensure_pad_token(tokenizer, model=None) -> None:
    """Decoder-only tokenizers often have no pad token; batching needs one, and the classifier needs its id in the
    config to find each row's last real token."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token; set one before scoring")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


def default_device() -> str:
    """cuda (this process's GPU under a launcher) when there is one, else cpu."""
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def load_reward_model(
    path: str,
    adapter: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
    tokenizer_path: str | None = None,
):
    """(model in eval mode on `device`, tokenizer with a pad token). A PEFT adapter is merged in float32 first, so the
    merged weights are the exact sum before any cast to `dtype`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    dtype = resolve_dtype(dtype, device or default_device()).dtype  # a ValueError names the choices
    resolved = resolve_model_path(path)
    if tokenizer_path is None:
        has_own = adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file()
        tokenizer_path = adapter if has_own else resolved
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(tokenizer_path), trust_remote_code=trust_remote_code)
    load_dtype = torch.float32 if adapter else DTYPES[dtype]
    model = AutoModelForSequenceClassification.from_pretrained(
        resolved, num_labels=1, dtype=load_dtype, trust_remote_code=trust_remote_code
    )
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        model = model.to(DTYPES[dtype])
    if model.config.num_labels != 1:
        raise ValueError(
            f"{path}: a reward model has one output (num_labels=1), this one has {model.config.num_labels}"
        )
    ensure_pad_token(tokenizer, model)
    model.to(device or default_device()).eval()
    return model, tokenizer


def save_reward_model(model, tokenizer, path: str | Path, dtype: str = "float32", metrics: dict | None = None) -> Path:
    """Write what `load_reward_model` reads: a plain sequence classifier (a LoRA adapter merged first, exactly, in
    float32, so no peft is needed to load it), its tokenizer, and metrics.json (whose reward_mean / reward_std
    `normalize="fixed"` uses)."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model = model.to(DTYPES[dtype])
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    (Path(path) / "metrics.json").write_text(json.dumps(metrics or {}, indent=2))
    return Path(path)


def _saved_stats(path: str) -> dict[str, Any]:
    file = Path(path) / "metrics.json"
    return json.loads(file.read_text()) if file.is_file() else {}


class RewardModelScorer:
    """Scores completions with a learned reward model; called by the reward plumbing as
    `scorer(prompts, completions, **columns) -> list[float]` (extra dataset columns are ignored).

    normalize: `none` returns the raw scalar; `fixed` returns (r - mean) / std with the given `mean`/`std` (default:
    the statistics of the held-out completions that `train_rm` saves in metrics.json), which keeps reward scales
    comparable when a reward model is summed with other rewards; `batch` standardises within each call. GRPO
    normalises within each prompt's group anyway (Shao et al. 2024, arXiv:2402.03300), so for a lone reward model
    `none` is usually enough.
    """

    def __init__(
        self,
        path: str,
        adapter: str | None = None,
        batch_size: int = 16,
        device: str | None = None,
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        max_length: int = 1024,
        normalize: Literal["none", "batch", "fixed"] = "none",
        mean: float | None = None,
        std: float | None = None,
        trust_remote_code: bool = False,
        tokenizer: str | None = None,
    ) -> None:
        if normalize not in ("none", "batch", "fixed"):
            raise ValueError(f"normalize={normalize!r}: use none, batch or fixed")
        if batch_size < 1 or max_length < 1:
            raise ValueError("batch_size and max_length must be >= 1")
        self.device = torch.device(device or default_device())
        self.model, self.tokenizer = load_reward_model(
            path, adapter, dtype, str(self.device), trust_remote_code, tokenizer
        )
        self.batch_size, self.max_length, self.normalize = batch_size, max_length, normalize
        if normalize == "fixed":
            stats = _saved_stats(path)
            mean = stats.get("reward_mean", 0.0) if mean is None else mean
            std = stats.get("reward_std", 1.0) if std is None else std
            if not std or std <= 0:
                raise ValueError(f"normalize=fixed needs std > 0, got {std}")
        self.mean, self.std = float(mean or 0.0), float(std or 1.0)

    @torch.inference_mode()
    def score_ids(self, seqs: list[list[int]]) -> Tensor:
        """Raw rewards [N] float32 of token-id sequences, `batch_size` at a time, longest first (little padding)."""
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        out = torch.empty(len(seqs), dtype=torch.float32)
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            ids, mask = pad_right([seqs[i] for i in idx], self.tokenizer.pad_token_id)
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            out[idx] = logits[:, 0].float().cpu()
        return out

    def __call__(self, prompts: list[Text], completions: list[Text], **columns: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        if not completions:
            return []
        seqs = [encode_pair(self.tokenizer, p, c, self.max_length) for p, c in zip(prompts, completions)]
        r = self.score_ids(seqs)
        if self.normalize == "fixed":
            r = (r - self.mean) / self.std
        elif self.normalize == "batch":
            r = r - r.mean()
            if len(r) > 1:
                r = r / (r.std() + 1e-6)
        return r.tolist()
