"""Prompts: from the hub, a local file, or the built-in arithmetic task; chat-templated and tokenized once."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
OPERATORS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


class DataError(ValueError):
    """A dataset problem a person can fix."""


def arithmetic_problems(
    min_operand: int,
    max_operand: int,
    operators: list[str],
    num_train: int,
    num_eval: int,
    template: str,
    seed: int = 0,
) -> tuple[list[dict], list[dict]]:
    """Disjoint train and eval problems drawn without replacement from every (a, op, b) in range, seeded.

    Rows: {"prompt": question text, "answer": the result as a string, "a", "op", "b"}."""
    space = [
        (a, op, b)
        for op in operators
        for a in range(min_operand, max_operand + 1)
        for b in range(min_operand, max_operand + 1)
    ]
    random.Random(seed).shuffle(space)
    if num_train + num_eval > len(space):
        raise DataError(f"arithmetic task has only {len(space)} distinct problems; ask for fewer")

    def row(a: int, op: str, b: int) -> dict:
        return {
            "prompt": template.format(a=a, op=op, b=b),
            "answer": str(OPERATORS[op](a, b)),
            "a": a,
            "op": op,
            "b": b,
        }

    eval_rows = [row(*p) for p in space[:num_eval]]
    train_rows = [row(*p) for p in space[num_eval : num_eval + num_train]]
    return train_rows, eval_rows


def load_rows(path: str, name: str | None = None, split: str = "train") -> list[dict]:
    """Rows of a local JSONL/JSON/Parquet/CSV file or of a hub dataset split."""
    import datasets

    suffix = Path(path).suffix.lower()
    if suffix in LOCAL_FORMATS:
        if not Path(path).is_file():
            raise DataError(f"data file {path!r} not found")
        ds = datasets.load_dataset(LOCAL_FORMATS[suffix], data_files=str(path), split="train")
    else:
        try:
            ds = datasets.load_dataset(path, name, split=split)
        except Exception as e:  # the hub raises many types; the user needs the path and the reason
            raise DataError(f"could not load dataset {path!r} (name={name!r}, split={split!r}): {e}") from e
    return [dict(r) for r in ds]


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


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    text = "\n".join(m["content"] for m in messages)
    return tokenizer(text, add_special_tokens=True)["input_ids"]


@dataclass
class PromptSet:
    """Tokenized prompts plus every other column (what reward functions receive)."""

    prompt_ids: list[list[int]]
    texts: list[str]  # the prompt as the reward functions see it (the last user message)
    columns: dict[str, list[Any]]
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def select(self, idx: list[int]) -> PromptSet:
        return PromptSet(
            [self.prompt_ids[i] for i in idx],
            [self.texts[i] for i in idx],
            {k: [v[i] for i in idx] for k, v in self.columns.items()},
        )


def build_prompt_set(
    rows: list[dict],
    tokenizer,
    prompt_column: str = "prompt",
    system_prompt: str | None = None,
    prompt_template: str | None = None,
    max_prompt_tokens: int = 512,
) -> PromptSet:
    if not rows:
        raise DataError("the dataset is empty")
    ids, texts, kept = [], [], []
    dropped = 0
    for row in rows:
        messages = to_messages(row, prompt_column, system_prompt, prompt_template)
        enc = encode_prompt(tokenizer, messages)
        if len(enc) > max_prompt_tokens:
            dropped += 1
            continue
        ids.append(enc)
        texts.append(messages[-1]["content"])
        kept.append(row)
    if dropped:
        log.warning(
            "dropped %d of %d prompts longer than data.max_prompt_tokens=%d", dropped, len(rows), max_prompt_tokens
        )
    if not kept:
        raise DataError(f"every prompt is longer than data.max_prompt_tokens={max_prompt_tokens}; raise it")
    columns = {k: [r.get(k) for r in kept] for k in kept[0] if k != prompt_column}
    return PromptSet(ids, texts, columns, dropped)


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
    """Seeded, epoch-wise shuffled order over prompt indices; its position is part of a checkpoint."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.pos = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(self.n))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._make_order()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._make_order()
