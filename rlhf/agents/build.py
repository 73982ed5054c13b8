"""The `agent:` section -> an `AgentRunner`: its checks (with the fix named), the agent's import and signature, and
the ranks' agreement that keeps their engine calls in lockstep."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from rlhf.agents.checks import check_agent_config
from rlhf.agents.runner import AgentRunner, AgentSettings, call_keywords
from rlhf.config_schema import ConfigError

MODEL_NAME = "policy"  # the model id the endpoint serves (requests may name any model; the policy answers)


def agree_over(accelerator):
    """(live, calls) -> (any rank live, the most calls of any rank), an all-gather; None for one process."""
    if accelerator is None or accelerator.num_processes == 1:
        return None
    from rlhf.distributed import all_gather_cat

    def agree(live: bool, calls: int) -> tuple[bool, int]:
        t = all_gather_cat(accelerator, torch.tensor([float(live), float(calls)])).view(-1, 2)
        return bool(t[:, 0].max() > 0), int(t[:, 1].max())

    return agree


def build_agent_runner(cfg, tokenizer, accelerator=None) -> AgentRunner:
    """The recipe's agent, checked and imported, as a runner the collector and the evaluation call like an
    EpisodeRunner."""
    from rlhf.rewards import import_object

    check_agent_config(cfg)
    a = cfg.agent
    # agents' clients log every call at INFO: one line per call would flood the console
    for name in ("httpx", "openai"):
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)
    label = f"agent.run={a.run!r}"
    agent = import_object(a.run, label, ConfigError)
    if not callable(agent) or isinstance(agent, type):
        raise ConfigError(f"{label} is not a function: give run_agent(base_url, row, api_key, ...)")
    try:
        kwargs = call_keywords(agent, label, MODEL_NAME, dict(a.kwargs))
    except TypeError as e:
        raise ConfigError(str(e)) from None
    settings = AgentSettings(a.timeout_s, a.max_workers, a.max_calls, a.max_tokens, a.reward_weight)
    rank = 0 if accelerator is None else accelerator.process_index
    traces = Path(cfg.output_dir) / "traces" / f"rank{rank}.jsonl" if a.save_traces else None
    return AgentRunner(
        agent, tokenizer, settings, kwargs, cfg.data.system_prompt, agree_over(accelerator), MODEL_NAME, traces
    )
