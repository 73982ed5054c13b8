"""Rollout engines: anything that turns prompts into a `Rollout` and hears when the weights change.

The interface (`Engine`) is three methods; `ENGINES` maps `rollout.engine` names to classes, and an import path
`package.module:Class` names an engine outside the project. Add an engine as one new file here plus one row.
"""

from rlhf.rollout.builtin import BuiltinEngine, generate, generate_batched
from rlhf.rollout.engine import ENGINES, Engine, build_engine, engine_options, resolve_engine
from rlhf.rollout.sampling import StopChecker, _sample_categorical, sample_next
from rlhf.rollout.types import Rollout, SamplingParams, concat_rollouts

__all__ = [
    "ENGINES",
    "BuiltinEngine",
    "Engine",
    "Rollout",
    "SamplingParams",
    "StopChecker",
    "_sample_categorical",
    "build_engine",
    "concat_rollouts",
    "engine_options",
    "generate",
    "generate_batched",
    "resolve_engine",
    "sample_next",
]
