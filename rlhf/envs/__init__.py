"""Environments for multi-turn episodes: the interface, the single-turn and tool-using built-ins, the table."""

from rlhf.envs.base import Environment, SingleTurnEnv, StepResult
from rlhf.envs.registry import ENVIRONMENTS, build_env, env_factory, resolve_env

__all__ = ["ENVIRONMENTS", "Environment", "SingleTurnEnv", "StepResult", "build_env", "env_factory", "resolve_env"]
