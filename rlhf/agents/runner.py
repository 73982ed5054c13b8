"""Agent episodes: G runs of a user's agent program per prompt, their endpoint calls sampled through the run's engine
in batches, the recorded calls turned into the same `Episodes` the multi-turn runner returns.

`AgentRunner.run` is called where `EpisodeRunner.run` is (training draws and the held-out evaluation) and:

1. opens one episode per (prompt, g) on the endpoint and starts the agents in daemon threads, at most
   `agent.max_workers` at once; an agent past `agent.timeout_s` fails and its episode is closed (a thread cannot be
   killed: it is left to end on its own, and its later calls are refused);
2. on this thread, takes the waiting calls in batches (a batch is complete when every running agent waits on a call,
   or 50 ms after the first one), one `engine.generate` per distinct stop list, and answers them;
3. builds each episode's sequence from its calls (`rlhf.agents.traces`), with its reward and its failure.

Failures: an agent that raises, times out, returns something that is neither a finite number nor None, or makes no
call costs only its own episode. The episode is left out of the loss (its action mask is all 0), its final text is
empty and its agent reward 0, so in its group's statistics it counts as what the reward functions give an empty
answer (0 for the shipped verifiers); `agent/failed` (and `agent/timeouts`, `agent/errors`, `agent/bad_reward`,
`agent/no_calls`) count it, and one warning names the row and the reason. The step goes on.

Lockstep: under DeepSpeed an engine call may be a collective (ZeRO-3 gathers the weights), so every rank makes the
same number of them. Each round, the ranks agree (`agree`, an all-gather) on whether any rank still has agents or
calls, and on the most engine calls any rank needs this round; a rank with fewer makes one-token dummy calls. A rank
whose agents are slow therefore holds the others in the same rounds, never out of step.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import numbers
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from rlhf.agents.hub import Hub, Pending
from rlhf.agents.tokens import reply_text
from rlhf.agents.traces import Segment, Trace, episode_trace
from rlhf.rollout.episodes import Episodes, episode_rollout
from rlhf.rollout.types import SamplingParams

log = logging.getLogger("rlhf")

WAIT_S = 0.05  # a round waits this long for a first call (or an agent ending)
GATHER_S = 0.05  # then this long for the other running agents' calls
FAILURES = ("timeouts", "errors", "bad_reward", "no_calls")


@dataclass(frozen=True)
class AgentSettings:
    """agent.* as plain values."""

    timeout_s: float = 120.0
    max_workers: int = 16
    max_calls: int = 8
    max_tokens: int = 512
    reward_weight: float = 1.0


@dataclass
class AgentEpisodes(Episodes):
    """Episodes, plus each one's trace (the contract tuple and what happened)."""

    traces: list[Trace] = field(default_factory=list)


def check_reward(value) -> float | None:
    """The agent's return value as a reward; ValueError names what is wrong with it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"returned {value!r:.80} (a {type(value).__name__}), not a number or None")
    if not math.isfinite(float(value)):
        raise ValueError(f"returned {value!r}, not a finite number")
    return float(value)


class AgentRunner:
    """Runs `agent(base_url, row, **call_kwargs)` for every episode. `agree(live, calls) -> (any rank live, most
    calls)` keeps ranks in lockstep (None: this process alone)."""

    def __init__(
        self,
        agent: Callable,
        tokenizer,
        settings: AgentSettings,
        call_kwargs: dict | None = None,
        system_prompt: str | None = None,
        agree: Callable[[bool, int], tuple[bool, int]] | None = None,
        model_name: str = "policy",
        traces_path: Path | None = None,
    ):
        self.agent, self.tokenizer, self.s = agent, tokenizer, settings
        self.call_kwargs, self.system_prompt, self.agree = dict(call_kwargs or {}), system_prompt, agree
        self.model_name, self.traces_path = model_name, traces_path
        self.reward_weight = settings.reward_weight
        self.hub = Hub(tokenizer, settings.max_calls, settings.max_tokens)
        self.endpoint = None
        self.version = 0  # training draws completed: the policy version of the next draw's calls

    def start(self):
        """The endpoint, started on first use and kept for the run."""
        if self.endpoint is None:
            from rlhf.agents.server import Endpoint

            self.endpoint = Endpoint(self.hub, self.tokenizer, self.model_name)
            self._stop = weakref.finalize(self, self.endpoint.close)  # a runner dropped unclosed stops its server
        return self.endpoint

    def close(self) -> None:
        """Stop the endpoint (the runner starts it again if used later)."""
        if self.endpoint is not None:
            self._stop()
            self.endpoint = None

    def rows(self, prompts) -> list[dict]:
        """A PromptSet's rows as agents see them: the dataset columns, `prompt` and `messages`."""
        out = []
        for i, text in enumerate(prompts.texts):
            messages = prompts.prompt_messages[i]
            if messages is None:
                system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
                messages = [*system, {"role": "user", "content": text}]
            row = {k: v[i] for k, v in prompts.columns.items()}
            out.append({**row, "prompt": text, "messages": [dict(m) for m in messages]})
        return out

    # ------------------------------------------------------------------------------------------------ one draw
    def run(self, engine, prompts, group_size: int, sampling: SamplingParams, batch_size: int | None = None):
        """`group_size` agent runs for each prompt of the PromptSet `prompts` -> AgentEpisodes (B = prompts x G)."""
        endpoint, rows, G = self.start(), self.rows(prompts), group_size
        ids = [uuid.uuid4().hex for _ in range(len(rows) * G)]
        self.hub.open_draw(ids, sampling.max_new_tokens)
        outcomes: dict[int, tuple[str, object]] = {}
        calls = 0
        try:
            calls = self.serve(engine, endpoint, rows, G, ids, outcomes, sampling, batch_size)
        finally:
            self.hub.close_all("the draw ended")
        traces = [self.trace(b, eid, rows[b // G], prompts.prompt_ids[b // G], outcomes.get(b)) for b, eid in
                  enumerate(ids)]  # fmt: skip
        if self.traces_path is not None:
            save_traces(self.traces_path, traces, calls, self.version, sampling.greedy)
        if not sampling.greedy:
            self.version += 1
        return assemble(traces, G, sampling.logprob_temperature, self.tokenizer, calls)

    def serve(self, engine, endpoint, rows, G, ids, outcomes, sampling, batch_size) -> int:
        """Steps 1-2: agents in threads, their calls answered in rounds until no rank has work. Returns the engine
        calls made."""
        queue, running, calls = list(range(len(ids))), {}, 0
        while True:
            while queue and len(running) < self.s.max_workers:
                b = queue.pop(0)
                running[b] = time.monotonic()
                self.hub.started(+1)
                url = endpoint.base_url(ids[b])
                threading.Thread(
                    target=self._agent, args=(b, url, rows[b // G], endpoint.token, outcomes), daemon=True
                ).start()
            now = time.monotonic()
            for b, t0 in list(running.items()):
                with self.hub.cond:
                    if b not in outcomes and now - t0 > self.s.timeout_s:
                        outcomes[b] = ("timeouts", f"timed out after agent.timeout_s={self.s.timeout_s:g}s")
                        self.hub.active -= 1
                    done = b in outcomes
                if done:
                    del running[b]
                    self.hub.close(ids[b], "the agent returned" if outcomes[b][0] == "done" else outcomes[b][1])
            pending = self.hub.take(WAIT_S, GATHER_S) if running else []
            groups: dict[tuple[str, ...], list[Pending]] = {}
            for p in pending:
                groups.setdefault(p.stop, []).append(p)
            live = bool(queue or running or pending)
            any_live, n = self.agree(live, len(groups)) if self.agree is not None else (live, len(groups))
            if not any_live:
                return calls
            batches = list(groups.values())
            for k in range(n):
                if k < len(batches):
                    self.sample(engine, batches[k], sampling, batch_size)
                else:  # lockstep: another rank samples this round, and the call may be a collective
                    eos = self.tokenizer.eos_token_id
                    engine.generate([[eos]], 1, replace(sampling, stop=[], max_new_tokens=1))
                calls += 1

    def _agent(self, b: int, base_url: str, row: dict, token: str, outcomes: dict) -> None:
        try:
            outcome = ("done", self.agent(base_url, row, api_key=token, **self.call_kwargs))
        except BaseException as e:  # noqa: BLE001 - whatever the agent raises costs only its episode
            outcome = ("errors", f"raised {type(e).__name__}: {str(e)[:300]}")
        with self.hub.cond:
            if b not in outcomes:  # not timed out meanwhile
                outcomes[b] = outcome
                self.hub.active -= 1
            self.hub.cond.notify_all()

    def sample(self, engine, batch: list[Pending], sampling: SamplingParams, batch_size: int | None) -> None:
        """One engine call for calls sharing a stop list; each reply cut to its own max_tokens."""
        stop = tuple(dict.fromkeys([*sampling.stop, *batch[0].stop]))  # the request's and the recipe's rollout.stop
        params = replace(sampling, stop=list(stop), max_new_tokens=max(p.max_new_tokens for p in batch))
        roll = engine.generate([p.prompt_ids for p in batch], 1, params, batch_size)
        for j, p in enumerate(batch):
            m = roll.completion_mask[j].bool()
            ids, logps = roll.completion_ids[j][m].tolist(), roll.logprobs[j][m].tolist()
            cut = len(ids) > p.max_new_tokens
            ids, logps = ids[: p.max_new_tokens], logps[: p.max_new_tokens]
            text, _ = reply_text(self.tokenizer, ids, stop)
            finish = "length" if cut or bool(roll.truncated[j]) else "stop"
            self.hub.answer(p, Segment(p.prompt_ids, ids, logps, self.version, finish, text))

    def trace(self, b: int, eid: str, row: dict, first_prompt: list[int], outcome) -> Trace:
        """Step 3: episode b's sequence, reward and failure (logged once)."""
        segments, refused = self.hub.segments(eid)
        t = episode_trace(segments, first_prompt, self.tokenizer.eos_token_id)
        kind, value = outcome if outcome is not None else ("errors", "did not finish")
        if kind == "done":
            try:
                t.reward = check_reward(value)
            except ValueError as e:
                kind, value = "bad_reward", str(e)
            else:
                if not segments:
                    kind, value = "no_calls", "made no call to the endpoint"
        t.refused_calls = refused
        if kind != "done":
            t.failure, t.failure_kind, t.reward, t.final_text = str(value), kind, None, ""
            t.loss_mask = [0] * len(t.loss_mask)
            prompt = str(row.get("prompt", ""))[:80]
            log.warning("agent episode failed: row %r (episode %d of the draw): %s", prompt, b, value)
        return t


def assemble(traces: list[Trace], G: int, temperature: float, tokenizer, calls: int) -> AgentEpisodes:
    """Traces -> AgentEpisodes: a Rollout of B = len(traces) rows (a prompt's G consecutive), the texts the reward
    functions score, the agents' rewards and the per-episode `agent/*` numbers."""
    roll = episode_rollout(
        [t.prompt_ids for t in traces], [t.response_ids for t in traces], [t.loss_mask for t in traces],
        [t.response_logprobs for t in traces], [t.truncated for t in traces], G, temperature, tokenizer,
    )  # fmt: skip
    return AgentEpisodes(
        rollout=roll,
        final_texts=[t.final_text for t in traces],
        env_rewards=torch.tensor([t.reward or 0.0 for t in traces], dtype=torch.float32),
        stats=episode_stats(traces),
        engine_calls=calls,
        traces=traces,
    )


def episode_stats(traces: list[Trace]) -> dict[str, torch.Tensor]:
    """{key: [B] float32}: per episode, the calls in its sequence (and `multi_call`, 1 when two or more: a ReAct
    agent used a tool), the calls left untrained and re-templated, the tokens the agent inserted, refused calls, and
    1/0 for failed and for each failure kind."""
    kind = [t.failure_kind for t in traces]
    stats = {
        "agent/calls": [t.calls for t in traces],
        "agent/multi_call": [t.calls >= 2 for t in traces],
        "agent/untrained_calls": [t.untrained_calls for t in traces],
        "agent/retemplated": [t.retemplated for t in traces],
        "agent/inserted_tokens": [t.inserted_tokens for t in traces],
        "agent/refused_calls": [t.refused_calls for t in traces],
        "agent/failed": [t.failure is not None for t in traces],
    }
    stats |= {f"agent/{k}": [x == k for x in kind] for k in FAILURES}
    return {k: torch.tensor([float(x) for x in v], dtype=torch.float32) for k, v in stats.items()}


def call_keywords(agent: Callable, label: str, model: str, kwargs: dict) -> dict:
    """The keywords each call passes besides api_key: `model` when the agent takes it, and agent.kwargs. Raises
    TypeError naming what the agent's signature lacks."""
    try:
        params = inspect.signature(agent).parameters
    except (TypeError, ValueError):
        return {"model": model, **kwargs}
    varkw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(p.kind is p.VAR_POSITIONAL for p in params.values()):
        raise TypeError(f"{label} must take (base_url, row, api_key, ...), got {inspect.signature(agent)}")
    missing = [k for k in ("api_key", *kwargs) if k not in params and not varkw]
    if missing:
        raise TypeError(
            f"{label} does not take {', '.join(missing)}: write it as run_agent(base_url, row, api_key, "
            "model='policy', **kwargs) and pass api_key to OpenAI(base_url=base_url, api_key=api_key)"
        )
    return ({"model": model} if "model" in params or varkw else {}) | dict(kwargs)


def save_traces(path: Path, traces: list[Trace], engine_calls: int, version: int, evaluation: bool) -> None:
    """Append one JSON line for a draw: its episodes' traces (every field of `Trace`) and its engine calls."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"version": version, "evaluation": evaluation, "engine_calls": engine_calls}
    line["episodes"] = [dataclasses.asdict(t) for t in traces]
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")
