"""Where the endpoint's threads and the trainer's thread meet: the open episodes, their recorded calls, and the
requests waiting for the engine.

The server (its own thread) turns a request into a `Pending` call with its prompt ids and limits (`submit`) and
waits on its future; the trainer's thread takes the waiting calls in batches (`take`), samples them through the
engine and answers (`answer`), which records the call as a `Segment` of its episode. Closing an episode (its agent
timed out, or the draw ended) fails its waiting calls and refuses later ones. Every method holds one lock.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from rlhf.agents.tokens import CallHistory, PromptIds, RequestError, normalise
from rlhf.agents.traces import Segment


@dataclass
class Pending:
    """A call waiting for the engine."""

    episode: str
    prompt_ids: list[int]  # [P]
    max_new_tokens: int  # the call's own limit (<= rollout.max_new_tokens and the episode's budget)
    stop: tuple[str, ...]
    future: Future  # resolves to the recorded Segment
    chain_prompt: int  # length of the first prompt of the chain this call continues (or starts)
    messages: list[dict] | None = None  # chat calls: the normalised request messages
    prompt_text: str | None = None  # completion calls with a text prompt


@dataclass
class EpisodeState:
    index: int  # the episode's row in the draw
    segments: list[Segment] = field(default_factory=list)
    history: list[CallHistory] = field(default_factory=list)
    chain_prompt: int = 0
    requests: int = 0  # calls made, refused ones included
    refused: int = 0
    closed: str | None = None


class Hub:
    """Open episodes and waiting calls, for one draw at a time. max_new_tokens is the draw's rollout.max_new_tokens;
    max_calls and max_tokens are agent.max_calls and agent.max_tokens."""

    def __init__(self, tokenizer, max_calls: int, max_tokens: int):
        self.tokenizer, self.max_calls, self.max_tokens = tokenizer, max_calls, max_tokens
        self.prompts = PromptIds(tokenizer)
        self.cond = threading.Condition()
        self.episodes: dict[str, EpisodeState] = {}
        self.pending: list[Pending] = []
        self.max_new_tokens = 1
        self.active = 0  # agents running now: a batch is complete once each of them waits on a call

    # ----------------------------------------------------------------------------------- the trainer's thread
    def open_draw(self, episode_ids: list[str], max_new_tokens: int) -> None:
        with self.cond:
            self.episodes = {eid: EpisodeState(i) for i, eid in enumerate(episode_ids)}
            self.max_new_tokens, self.active = max_new_tokens, 0

    def close(self, eid: str, reason: str) -> None:
        """Refuse the episode's waiting and later calls (HTTP 410) with `reason`."""
        with self.cond:
            ep = self.episodes.get(eid)
            if ep is None or ep.closed:
                return
            ep.closed = reason
            for p in [p for p in self.pending if p.episode == eid]:
                self.pending.remove(p)
                p.future.set_exception(RequestError(410, f"this episode is closed: {reason}"))
            self.cond.notify_all()

    def close_all(self, reason: str) -> None:
        for eid in list(self.episodes):
            self.close(eid, reason)

    def started(self, delta: int) -> None:
        """An agent started (+1) or stopped (-1)."""
        with self.cond:
            self.active += delta
            self.cond.notify_all()

    def take(self, wait_s: float, gather_s: float) -> list[Pending]:
        """The waiting calls: waits up to wait_s for a first one (or for an agent to stop), then up to gather_s more
        while some running agent has not sent its call yet."""
        with self.cond:
            active = self.active
            self.cond.wait_for(lambda: self.pending or self.active != active, timeout=wait_s)
            if self.pending:
                self.cond.wait_for(lambda: len(self.pending) >= self.active, timeout=gather_s)
            out, self.pending = self.pending, []
            return out

    def answer(self, p: Pending, seg: Segment) -> None:
        """Record the call's segment and hand it to the waiting request (unless its episode closed meanwhile)."""
        with self.cond:
            ep = self.episodes.get(p.episode)
            if ep is None or ep.closed:
                if not p.future.done():
                    p.future.set_exception(RequestError(410, f"this episode is closed: {ep.closed if ep else 'gone'}"))
                return
            ep.segments.append(seg)
            ep.chain_prompt = p.chain_prompt
            last = seg.response_ids[-1] if seg.response_ids else None
            reply = {"role": "assistant", "content": seg.text}
            whole = self.tokenizer.decode(seg.response_ids, skip_special_tokens=True)
            texts = () if p.prompt_text is None else (p.prompt_text + whole, p.prompt_text + seg.text)
            messages = None if p.messages is None else [*p.messages, reply]
            ep.history.append(CallHistory(messages, texts, seg.ids, last))
            p.future.set_result(seg)

    def segments(self, eid: str) -> tuple[list[Segment], int]:
        """(the episode's recorded calls, how many of its calls were refused)."""
        with self.cond:
            ep = self.episodes[eid]
            return list(ep.segments), ep.refused

    # ----------------------------------------------------------------------------------- the server's threads
    def submit(self, eid: str, kind: str, body: dict) -> Future:
        """Check a request (`kind` "chat" or "completion") and queue it; the future resolves to its Segment.
        Raises RequestError for a request the endpoint refuses."""
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        if body.get("stream"):
            raise RequestError(400, "streaming is not supported: set stream=false")
        if body.get("n", 1) != 1:
            raise RequestError(400, "n must be 1: one call samples one reply (a GRPO group is G agent runs)")
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise RequestError(400, f"max_tokens must be a positive integer, got {limit!r}")
        stop = body.get("stop") or ()
        stop = (stop,) if isinstance(stop, str) else stop
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
            raise RequestError(400, "stop must be a string or a list of strings")
        with self.cond:
            ep = self.episodes.get(eid)
            if ep is None:
                raise RequestError(404, f"no episode {eid!r} in this draw (use the base_url your run was given)")
            if ep.closed:
                raise RequestError(410, f"this episode is closed: {ep.closed}")
            ep.requests += 1
            if ep.requests > self.max_calls:
                ep.refused += 1
                raise RequestError(429, f"this episode made agent.max_calls={self.max_calls} calls already")
            history = list(ep.history)
        # tokenising outside the lock: the trainer's thread is not held up by it
        messages, text = None, None
        if kind == "chat":
            messages = normalise(body.get("messages"))
            prompt = self.prompts.chat(messages, body.get("tools"), history)
        else:
            prompt, text = self.prompts.completion(body.get("prompt"), history)
        with self.cond:
            if ep.closed:
                raise RequestError(410, f"this episode is closed: {ep.closed}")
            last = ep.segments[-1].ids if ep.segments else None
            chain = ep.chain_prompt if last is not None and prompt[: len(last)] == last else len(prompt)
            room = self.max_tokens - (len(prompt) - chain)
            if room < 1:
                ep.refused += 1
                raise RequestError(400, f"this episode used its token budget, agent.max_tokens={self.max_tokens}")
            n = min(self.max_new_tokens, room, limit or self.max_new_tokens)
            fut: Future = Future()
            self.pending.append(Pending(eid, prompt, n, tuple(s for s in stop if s), fut, chain, messages, text))
            self.cond.notify_all()
            return fut
