"""Prompts: rows (from `rlhf.data_sources`: the hub, a local file, or the built-in arithmetic task) chat-templated and
tokenized once, and the seeded sampler that draws them. The row sources are importable from here too.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlhf.data_sources import (
    LOCAL_FORMATS,
    DataError,
    arithmetic_problems,
    load_eval_rows,
    load_rows,
    preview,
    sibling_split_file,
)

__all__ = [
    "LOCAL_FORMATS",
    "DataError",
    "PromptSampler",
    "PromptSet",
    "arithmetic_problems",
    "build_prompt_set",
    "encode_prompt",
    "left_pad",
    "load_eval_rows",
    "load_rows",
    "rename_columns",
    "sibling_split_file",
    "to_messages",
]

log = logging.getLogger(__name__)


def rename_columns(rows: list[dict], mapping: dict[str, str]) -> list[dict]:
    """Rename columns (old -> new) in every row; a name missing from the data is an error that lists the columns."""
    if not mapping or not rows:
        return rows
    missing = [old for old in mapping if old not in rows[0]]
    if missing:
        raise DataError(
            f"data.rename_columns names {missing} which are not columns (columns: {', '.join(sorted(rows[0]))})"
        )
    clash = [new for old, new in mapping.items() if new in rows[0] and new not in mapping]
    if clash:
        raise DataError(f"data.rename_columns would overwrite the existing columns {clash}; rename those too")
    return [{mapping.get(k, k): v for k, v in row.items()} for row in rows]


def to_messages(row: dict, prompt_column: str, system_prompt: str | None, prompt_template: str | None) -> list[dict]:
    """A row's prompt as chat messages: a text prompt (optionally formatted by the template) or a message list."""
    if prompt_column not in row:
        raise DataError(
            f"prompt column {prompt_column!r} not in the dataset (columns: {', '.join(sorted(row))}); "
            "set data.prompt_column"
        )
    value = row[prompt_column]
    if isinstance(value, list):
        messages = [dict(m) for m in value]
        if not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise DataError(f"column {prompt_column!r} holds a list that is not chat messages ({{role, content}})")
    elif isinstance(value, str):
        text = value
        if prompt_template:
            try:
                text = prompt_template.format(**{**row, "prompt": value})
            except KeyError as e:
                raise DataError(f"data.prompt_template names {e} which is not a column") from None
        messages = [{"role": "user", "content": text}]
    else:
        raise DataError(f"column {prompt_column!r} must be text or chat messages, got {type(value).__name__}")
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


def encode_prompt(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """[P] prompt ids: the chat template's rendering with the generation prompt (`tools`: JSON schemas the template
    describes, when given), or the messages' text joined by newlines for a tokenizer without a template."""
    if getattr(tokenizer, "chat_template", None):
        extra = {"tools": tools} if tools else {}
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **extra)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    text = "\n".join(m["content"] for m in messages)
    return tokenizer(text, add_special_tokens=True)["input_ids"]


@dataclass
class PromptSet:
    """Tokenized prompts plus every other column (what reward functions receive)."""

    prompt_ids: list[list[int]]
    texts: list[str]  # the prompt as text (the last message's content): logs, samples, error messages
    columns: dict[str, list[Any]]
    dropped: int = 0  # rows left out: empty prompts and prompts longer than max_prompt_tokens
    empty: int = 0  # of which empty prompts
    # Per prompt, the chat messages the model is prompted with (data.system_prompt first when set) when the prompt
    # column held a message list (a conversational dataset), else None. Reward functions then get these as `prompts`
    # and each completion as [{"role": "assistant", "content": text}], as TRL passes them (rlhf.rewards).
    prompt_messages: list[list[dict] | None] | None = None

    def __post_init__(self) -> None:
        if self.prompt_messages is None:
            self.prompt_messages = [None] * len(self.prompt_ids)
        if len(self.prompt_messages) != len(self.prompt_ids):
            raise ValueError(f"{len(self.prompt_messages)} prompt_messages for {len(self.prompt_ids)} prompts")

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def select(self, idx: list[int]) -> PromptSet:
        return PromptSet(
            [self.prompt_ids[i] for i in idx],
            [self.texts[i] for i in idx],
            {k: [v[i] for i in idx] for k, v in self.columns.items()},
            prompt_messages=[self.prompt_messages[i] for i in idx],
        )


def _is_empty(value: Any) -> bool:
    """An empty text prompt, or a message list without any content."""
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list):
        return all(not (isinstance(m, dict) and str(m.get("content") or "").strip()) for m in value)
    return False


def build_prompt_set(
    rows: list[dict],
    tokenizer,
    prompt_column: str = "prompt",
    system_prompt: str | None = None,
    prompt_template: str | None = None,
    max_prompt_tokens: int = 512,
) -> PromptSet:
    """Chat-templated, tokenized prompts. Empty prompts and prompts longer than max_prompt_tokens are dropped and
    counted (PromptSet.dropped, .empty); a null prompt or one of the wrong type is an error naming the row. A prompt
    column holding chat messages keeps them, per prompt, in PromptSet.prompt_messages (None for a text prompt)."""
    if not rows:
        raise DataError("the dataset is empty")
    ids, texts, kept, conversations = [], [], [], []
    too_long = empty = 0
    for i, row in enumerate(rows):
        if prompt_column in row and row[prompt_column] is None:
            raise DataError(
                f"row {i + 1} of {len(rows)} has no prompt: column {prompt_column!r} is null ({preview(row)}); "
                "fill it in or delete the row"
            )
        if prompt_column in row and _is_empty(row[prompt_column]):
            empty += 1
            continue
        try:
            messages = to_messages(row, prompt_column, system_prompt, prompt_template)
        except DataError as e:
            if prompt_column not in row:
                raise
            raise DataError(f"row {i + 1} of {len(rows)}: {e} ({preview(row)})") from None
        enc = encode_prompt(tokenizer, messages)
        if len(enc) > max_prompt_tokens:
            too_long += 1
            continue
        ids.append(enc)
        texts.append(messages[-1]["content"])
        conversations.append(messages if isinstance(row[prompt_column], list) else None)
        kept.append(row)
    dropped = too_long + empty
    if dropped:
        log.warning(
            "dropped %d of %d prompts: %d empty, %d longer than data.max_prompt_tokens=%d",
            dropped,
            len(rows),
            empty,
            too_long,
            max_prompt_tokens,
        )
    if not kept:
        if not empty:
            raise DataError(f"every prompt is longer than data.max_prompt_tokens={max_prompt_tokens}; raise it")
        if not too_long:
            raise DataError(f"every prompt is empty (column {prompt_column!r}); check data.prompt_column")
        raise DataError(
            f"no prompt is left: {empty} are empty and {too_long} longer than data.max_prompt_tokens="
            f"{max_prompt_tokens}; raise it or check data.prompt_column"
        )
    columns = {k: [r.get(k) for r in kept] for k in kept[0] if k != prompt_column}
    return PromptSet(ids, texts, columns, dropped, empty, conversations)


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """[N, P] ids and mask, padded on the left so every prompt ends at the same column."""
    P = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), P), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, P - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, P - len(s) :] = 1
    return ids, mask


class PromptSampler:
    """Seeded, epoch-wise shuffled order over prompt indices; its position is part of a checkpoint.

    `queued` holds prompts drawn before a checkpoint but not trained on (asynchronous rollouts run ahead of the
    update, `rlhf.async_rollout`); take() hands them out first, so a resumed run trains each exactly once."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.pos = 0, 0
        self.queued: list[int] = []
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(self.n))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out = self.queued[:k]
        self.queued = self.queued[k:]
        while len(out) < k:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._make_order()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, **({"queued": list(self.queued)} if self.queued else {})}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self.queued = [int(i) for i in state.get("queued", [])]
        self._order = self._make_order()
