"""The rollout-engine interface and the table of engines.

The trainer, in-training evaluation and `python -m rlhf.evaluate` all generate through an `Engine`:

- `generate(prompts, group_size, sampling, batch_size=None) -> Rollout`: `prompts` are token-id lists (the chat
  template already applied); the result holds `group_size` episodes per prompt, a prompt's consecutive, with the
  sampled tokens exactly as sampled (no decode -> re-encode), their behaviour log-probs at `sampling.temperature`
  before top-k / top-p truncation, `group_size` and `temperature` set, and `action_mask` marking sampled tokens.
- `weights_updated()`: called after every optimizer step (and after TRPO's step): an engine holding its own copy of
  the weights syncs them here; one that reads the live weights does nothing.
- `close()`: release what the engine holds (processes, memory); called once when the run ends.

Engines are built by `build_engine(name, model=..., tokenizer=..., accelerator=..., merge_adapter=...,
batch_size=...)`: a name in `ENGINES` or an import path `package.module:Class` whose constructor takes those keywords;
an engine with a config section `rollout.<name>` (`rollout.vllm`) also gets its fields as keywords (`engine_options`).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from rlhf.rollout.builtin import BuiltinEngine
from rlhf.rollout.types import Rollout, SamplingParams


def _vllm_engine(**kwargs):
    """`rollout.engine: vllm`, imported only when chosen (the main environment has no vLLM)."""
    from rlhf.rollout.vllm import VLLMEngine

    return VLLMEngine(**kwargs)


@runtime_checkable
class Engine(Protocol):
    def generate(
        self, prompts: list[list[int]], group_size: int, sampling: SamplingParams, batch_size: int | None = None
    ) -> Rollout: ...

    def weights_updated(self) -> None: ...

    def close(self) -> None: ...


# name -> engine class: one row per engine
ENGINES: dict[str, Callable[..., Engine]] = {
    "builtin": BuiltinEngine,
    "vllm": _vllm_engine,
}


def resolve_engine(name: str) -> type:
    """The engine class for `rollout.engine`: a name in ENGINES or `package.module:Class` / `file.py:Class`."""
    if name in ENGINES:
        return ENGINES[name]
    if ":" in name:
        from rlhf.rewards import import_object

        return import_object(name, f"rollout.engine={name!r}", ValueError)
    close = difflib.get_close_matches(name, list(ENGINES), n=1)
    hint = f"did you mean `{close[0]}`?" if close else "or give an import path `package.module:Class`"
    raise ValueError(f"rollout.engine={name!r} is not one of {', '.join(ENGINES)}; {hint}")


def engine_options(name: str, rollout) -> dict:
    """The engine's own settings: the fields of `rollout.<name>` (e.g. `rollout.vllm`) when that section exists."""
    section = getattr(rollout, name, None) if name.isidentifier() else None
    return dataclasses.asdict(section) if dataclasses.is_dataclass(section) else {}


def build_engine(name: str, **kwargs) -> Engine:
    engine = resolve_engine(name)(**kwargs)
    missing = [m for m in ("generate", "weights_updated", "close") if not callable(getattr(engine, m, None))]
    if missing:
        raise TypeError(f"rollout.engine={name!r} lacks {', '.join(missing)}: an engine implements rlhf.rollout.Engine")
    return engine
