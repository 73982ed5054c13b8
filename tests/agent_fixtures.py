"""Agent programs the tests name by file path in `agent.run`, as a user would: each talks to the endpoint with the
official openai client."""

from __future__ import annotations

import itertools
import os
import threading
import time

from openai import OpenAI

_count = itertools.count()
_lock = threading.Lock()


def _client(base_url: str, api_key: str) -> OpenAI:
    return OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60)


def two_call_agent(base_url: str, row: dict, api_key: str, model: str = "policy", reward: float = 0.5) -> float:
    """Two chat calls: the second sends the history back with the reply and a tool result, as a ReAct loop does."""
    client = _client(base_url, api_key)
    messages = [{"role": "user", "content": row["prompt"]}]
    first = client.chat.completions.create(model=model, messages=messages, max_tokens=5)
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "result: 7"},
    ]
    client.chat.completions.create(model=model, messages=messages, max_tokens=4)
    return reward


def retemplating_agent(base_url: str, row: dict, api_key: str, model: str = "policy") -> None:
    """Two calls; the second rewrites the first reply, so its prompt does not extend the first call's ids."""
    client = _client(base_url, api_key)
    messages = [{"role": "user", "content": row["prompt"]}]
    client.chat.completions.create(model=model, messages=messages, max_tokens=4)
    messages += [{"role": "assistant", "content": "an edited reply"}, {"role": "user", "content": "go on"}]
    client.chat.completions.create(model=model, messages=messages, max_tokens=4)
    return None


def completions_agent(base_url: str, row: dict, api_key: str, model: str = "policy") -> float:
    """Two /v1/completions calls on text: the second prompt is the first prompt + its reply + more text."""
    client = _client(base_url, api_key)
    prompt = f"Q: {row['prompt']}\nA:"
    first = client.completions.create(model=model, prompt=prompt, max_tokens=4)
    client.completions.create(model=model, prompt=prompt + first.choices[0].text + "\nQ: again?\nA:", max_tokens=3)
    return 1.0


def mixed_agent(base_url: str, row: dict, api_key: str, model: str = "policy") -> float | str | None:
    """Episode k (in start order) of a process: k % 5 == 0 raises after a call, 1 hangs, 2 returns nonsense, 3 makes
    no call, 4 behaves (two calls, reward 1)."""
    with _lock:
        k = next(_count) % 5
    if k == 3:
        return 1.0
    client = _client(base_url, api_key)
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": row["prompt"]}], max_tokens=3)
    if k == 0:
        raise RuntimeError("the agent's tool crashed")
    if k == 1:
        time.sleep(3600)
    if k == 2:
        return "not a reward"
    return two_call_agent(base_url, row, api_key, model, reward=1.0)


def slow_on_rank1_agent(base_url: str, row: dict, api_key: str, model: str = "policy") -> float:
    """two_call_agent, waiting 1 s before each call on the process with LOCAL_RANK 1."""
    if os.environ.get("LOCAL_RANK") == "1":
        time.sleep(1.0)
    return two_call_agent(base_url, row, api_key, model)


def no_api_key_agent(base_url: str, row: dict) -> None:
    """Lacks the api_key parameter: refused when the run is built."""


def three_call_agent(base_url: str, row: dict, api_key: str, model: str = "policy") -> float:
    """Three chat calls, each sending the history back; a refused call (an openai.APIStatusError) ends the loop."""
    import openai

    client = _client(base_url, api_key)
    messages = [{"role": "user", "content": row["prompt"]}]
    for _ in range(3):
        try:
            reply = client.chat.completions.create(model=model, messages=messages, max_tokens=4)
        except openai.APIStatusError:
            break
        messages += [
            {"role": "assistant", "content": reply.choices[0].message.content},
            {"role": "user", "content": "more"},
        ]
    return 1.0
