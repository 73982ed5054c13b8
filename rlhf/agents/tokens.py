"""Token in, token out for an agent's requests: the prompt ids of a call, reusing the ids already sampled.

An agent sends its history as chat messages (or as prompt text). Encoding that history afresh would give the policy
ids it never produced (decode -> encode is not bijective, a chat template may render a turn otherwise, and a reply
cut at a stop string comes back without it). So when a request's messages start with an earlier call's messages
followed by the reply that call returned, the new prompt is that call's prompt + response ids, then the chat
template's rendering of the new messages only (`ObservationTokens`: the end of the assistant turn, the new turns,
the next assistant header). Assistant replies match when equal up to surrounding whitespace (agents often strip).
A history that matches no earlier call is encoded afresh: the trace then starts a new chain (`rlhf.agents.traces`).

`/v1/completions` prompts work the same way on text: a prompt that starts with an earlier call's prompt text + reply
text reuses that call's ids and encodes only the rest; a prompt given as token ids is taken as is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rlhf.rollout.episodes import ObservationTokens


class RequestError(Exception):
    """A request the endpoint refuses: an HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def content_text(content) -> str:
    """A message's content as text: a string, None (""), or OpenAI content parts (their `text` joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type", "text") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise RequestError(400, f"only text content parts are supported, got {part!r:.120}")
            parts.append(part["text"])
        return "".join(parts)
    raise RequestError(400, f"a message's content must be a string or a list of text parts, got {content!r:.120}")


def normalise(messages) -> list[dict]:
    """Request messages as plain dicts: role, content as text, and the other keys that are set (tool_calls, name,
    tool_call_id, ...)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "`messages` must be a non-empty list of {role, content} objects")
    out = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError(400, f"every message needs a string `role`, got {m!r:.120}")
        extra = {k: v for k, v in m.items() if k not in ("role", "content") and v not in (None, [], "")}
        out.append({"role": m["role"], "content": content_text(m.get("content")), **extra})
    return out


def _key(message: dict) -> tuple:
    """What two messages must share to be the same turn (assistant text compared without surrounding whitespace)."""
    text = message["content"].strip() if message["role"] == "assistant" else message["content"]
    calls = message.get("tool_calls")
    return message["role"], text, json.dumps(calls, sort_keys=True, default=str) if calls else None


@dataclass
class CallHistory:
    """What a recorded call leaves for later requests of its episode to extend."""

    messages: list[dict] | None  # the request's messages + the returned assistant reply (chat calls)
    texts: tuple[str, ...]  # prompt text + the whole reply, prompt text + the reply as returned (text prompts)
    ids: list[int]  # prompt + response ids
    last_id: int | None  # the last sampled id (None: nothing sampled)


class PromptIds:
    """Prompt ids of chat and completion requests with the tokenizer's chat template."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.render = ObservationTokens(tokenizer)

    def fresh_chat(self, messages: list[dict], tools: list | None = None) -> list[int]:
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            return list(tok("\n".join(m["content"] for m in messages), add_special_tokens=True)["input_ids"])
        kwargs = {"tools": tools} if tools else {}
        try:
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kwargs)
        except Exception as e:  # the template rejected the conversation (e.g. roles out of order)
            raise RequestError(400, f"the chat template cannot render these messages: {e}") from e
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def chat(self, messages: list[dict], tools: list | None, history: list[CallHistory]) -> list[int]:
        """[P] ids of a chat request: the newest earlier call whose messages + reply the request starts with, then
        the new messages; else the whole conversation encoded afresh."""
        keys = [_key(m) for m in messages]
        for h in reversed(history):
            if h.messages is None:
                continue
            n = len(h.messages)
            if len(keys) > n and keys[:n] == [_key(m) for m in h.messages]:
                try:
                    return h.ids + self.render(messages[n:], h.last_id)
                except ValueError as e:
                    raise RequestError(400, str(e)) from e
        return self.fresh_chat(messages, tools)

    def completion(self, prompt, history: list[CallHistory]) -> tuple[list[int], str | None]:
        """([P] ids, the prompt text or None for an id prompt) of a completion request."""
        vocab = len(self.tokenizer)
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            if not all(0 <= t < vocab for t in prompt):
                raise RequestError(400, f"prompt token ids must be in [0, {vocab})")
            return list(prompt), None
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise RequestError(400, "`prompt` must be one non-empty string or a list of token ids (batches: one each)")
        for h in reversed(history):
            head = next((t for t in h.texts if prompt.startswith(t)), None)
            if head is not None:
                rest = prompt[len(head) :]
                return h.ids + (
                    list(self.tokenizer(rest, add_special_tokens=False)["input_ids"]) if rest else []
                ), prompt
        return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"]), prompt


def reply_text(tokenizer, ids: list[int], stop: tuple[str, ...]) -> tuple[str, bool]:
    """(the reply as an OpenAI server returns it: special tokens dropped, cut before the first stop string; whether
    a stop string was found)."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)
