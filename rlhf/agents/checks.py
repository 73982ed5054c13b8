"""The `agent:` section's checks, run when a recipe is read (`rlhf.config.validate`): each error names the key and
the fix."""

from __future__ import annotations

import dataclasses
import importlib.util

from rlhf.config_schema import AgentConfig, ConfigError


def check_agent_config(cfg) -> None:
    """Combinations of `agent.*` (and `env.*`) that cannot work, before anything loads."""
    a = cfg.agent
    if a.run is None:
        default = AgentConfig()
        changed = [f.name for f in dataclasses.fields(AgentConfig) if getattr(a, f.name) != getattr(default, f.name)]
        if changed:
            raise ConfigError(
                f"agent.{changed[0]} is set but agent.run is not: name the agent (agent.run=pkg.module:run_agent)"
            )
        return
    checks = [
        (":" in a.run, f"agent.run={a.run!r}: write it as `package.module:run_agent` or `file.py:run_agent`"),
        (
            cfg.env.name is None and getattr(cfg.env, "factory", None) is None,
            "agent.run and env.name / env.factory all drive the episodes: keep one (an agent runs its own loop and "
            "tools)",
        ),
        (a.timeout_s > 0, f"agent.timeout_s must be > 0 seconds, got {a.timeout_s}"),
        (a.max_workers >= 1, f"agent.max_workers must be >= 1, got {a.max_workers}"),
        (a.max_calls >= 1, f"agent.max_calls must be >= 1, got {a.max_calls}"),
        (a.max_tokens >= 1, f"agent.max_tokens must be >= 1, got {a.max_tokens}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"agent.run serves an OpenAI-compatible endpoint, which needs {' and '.join(missing)}: "
            "pip install -e '.[agents]' (`make install` installs it)"
        )
