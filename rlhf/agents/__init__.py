"""Black-box agent programs trained through an OpenAI-compatible endpoint the trainer serves (`agent.run`).

The trainer serves `/v1/chat/completions` and `/v1/completions` on 127.0.0.1 from the current policy through the
run's engine (`server.py`, `hub.py`), keeps the sampled token ids when an agent sends its history back (`tokens.py`),
records every call as a trace segment and builds each episode's sequence from them (`traces.py`), and runs the
agents, in lockstep over ranks, where the multi-turn runner would run environments (`runner.py`, `build.py`).
"""

from rlhf.agents.build import build_agent_runner
from rlhf.agents.checks import check_agent_config
from rlhf.agents.runner import AgentEpisodes, AgentRunner, AgentSettings
from rlhf.agents.traces import Segment, Trace, chains, episode_trace, extends

__all__ = [
    "AgentEpisodes",
    "AgentRunner",
    "AgentSettings",
    "Segment",
    "Trace",
    "build_agent_runner",
    "chains",
    "check_agent_config",
    "episode_trace",
    "extends",
]
