"""A ReAct calculator agent written with the official `openai` client, trained unchanged with `agent.run`.

The agent owns its loop, its prompt and its two tools (`add`, `multiply`, called in a text protocol); the trainer only
serves the OpenAI-compatible endpoint it talks to. Train it (recipes/grpo_agent_arithmetic_smollm2.yaml):

    python -m rlhf.train recipes/grpo_agent_arithmetic_smollm2.yaml

or point it at any OpenAI-compatible server:

    python examples/calculator_agent.py --base-url http://localhost:8000/v1 --api-key KEY --model NAME

It returns None: the recipe's reward functions score its last reply (the number it answers).
"""

from __future__ import annotations

import argparse
import re

from openai import OpenAI

SYSTEM = (
    "You can use two tools. Write <add>a, b</add> to get a + b, or <multiply>a, b</multiply> to get a * b, and "
    "wait for the result. When you know the answer, reply with only the number."
)
# one worked exchange, so that a small model sees the protocol once
EXAMPLE = [
    {"role": "user", "content": "Compute 413 * 27."},
    {"role": "assistant", "content": "<multiply>413, 27</multiply>"},
    {"role": "user", "content": "result: 11151"},
    {"role": "assistant", "content": "11151"},
]
TOOLS = {"add": lambda a, b: a + b, "multiply": lambda a, b: a * b}
CALL = re.compile(r"<(add|multiply)>\s*(-?\d+)\s*,\s*(-?\d+)")
STOP = ["</add>", "</multiply>"]  # a call ends the reply; the endpoint returns it without the closing tag


def run_agent(base_url: str, row: dict, api_key: str, model: str = "policy", max_turns: int = 3) -> float | None:
    """One episode: reply, run the tool the reply calls, send its result back, until a reply calls no tool."""
    conversation(
        OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120), model, row["prompt"], max_turns
    )
    return None


def conversation(client: OpenAI, model: str, prompt: str, max_turns: int = 3) -> list[dict]:
    """The episode's messages, the agent's own prompt first."""
    messages = [{"role": "system", "content": SYSTEM}, *EXAMPLE, {"role": "user", "content": prompt}]
    for _ in range(max_turns):
        reply = client.chat.completions.create(model=model, messages=messages, stop=STOP, max_tokens=32)
        text = reply.choices[0].message.content or ""
        messages.append({"role": "assistant", "content": text})
        call = CALL.search(text)
        if call is None:  # no tool: this reply is the answer
            break
        name, a, b = call.group(1), int(call.group(2)), int(call.group(3))
        messages.append({"role": "user", "content": f"result: {TOOLS[name](a, b)}"})
    return messages


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--model", default="policy")
    parser.add_argument("--prompt", default="Compute 37 * 54.")
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    for message in conversation(client, args.model, args.prompt)[1 + len(EXAMPLE) :]:
        print(f"{message['role']:>9}: {message['content']}")
