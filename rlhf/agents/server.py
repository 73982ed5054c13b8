"""The OpenAI-compatible endpoint an agent program talks to: FastAPI served by uvicorn in a daemon thread, bound to
127.0.0.1 on a free port, with a bearer token made for the run.

Routes, under each episode's own base URL `http://127.0.0.1:PORT/episodes/<episode id>/v1` (the path names the
episode, so an unmodified client needs nothing but that base_url and the token as its api_key):

- `POST .../chat/completions`: `messages` (text content, optional `tools` passed to the chat template), `max_tokens`
  / `max_completion_tokens`, `stop`, `logprobs`; the reply is `choices[0].message.content`, cut before a stop string
  as OpenAI's API does. `n` must be 1 and `stream` false.
- `POST .../completions`: `prompt` as one string or a list of token ids; the same limits.
- `GET .../models`: the one served model.

Sampling follows the run (rollout.temperature, top_p, top_k; greedy in evaluation): a request's own temperature,
top_p, seed, ... are ignored, since the trainer recomputes log-probs at the run's temperature. Besides OpenAI's
fields a reply carries the token ids, as vLLM's server can: `prompt_token_ids` and `choices[0].token_ids`. A request
without `Authorization: Bearer <token>` gets 401, one from another address 403; errors use OpenAI's error body.
Imported only when a recipe names an agent (fastapi and uvicorn are the `agents` extra).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import threading
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from rlhf.agents.hub import Hub
from rlhf.agents.tokens import RequestError

log = logging.getLogger("rlhf")

LOOPBACK = {"127.0.0.1", "::1"}


def _error(status: int, message: str) -> JSONResponse:
    kind = "authentication_error" if status == 401 else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def _logprobs(tokenizer, seg) -> dict:
    tokens = [tokenizer.decode([t]) for t in seg.response_ids]
    return {
        "content": [
            {"token": t, "logprob": lp, "bytes": None, "top_logprobs": []} for t, lp in zip(tokens, seg.logprobs)
        ]
    }


def reply(kind: str, model: str, seg, with_logprobs: bool, tokenizer) -> dict:
    """The OpenAI response body of a recorded call (`kind` "chat" or "completion")."""
    usage = {"prompt_tokens": len(seg.prompt_ids), "completion_tokens": len(seg.response_ids)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    choice = {"index": 0, "finish_reason": seg.finish_reason, "token_ids": list(seg.response_ids)}
    choice["logprobs"] = _logprobs(tokenizer, seg) if with_logprobs else None
    if kind == "chat":
        choice["message"] = {"role": "assistant", "content": seg.text}
        obj, prefix = "chat.completion", "chatcmpl"
    else:
        choice["text"] = seg.text
        obj, prefix = "text_completion", "cmpl"
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage,
        "prompt_token_ids": list(seg.prompt_ids),
    }


def create_app(hub: Hub, token: str, model: str, tokenizer):
    """The FastAPI application: auth and address checks, then the three routes."""
    app = FastAPI(title="rlhf policy endpoint", docs_url=None, redoc_url=None, openapi_url=None)
    expected = f"Bearer {token}".encode()

    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = request.client.host if request.client else None
        if host not in LOOPBACK:
            return _error(403, "this endpoint only serves 127.0.0.1")
        given = request.headers.get("authorization", "").encode()
        if not secrets.compare_digest(given, expected):
            return _error(401, "missing or wrong bearer token: pass the api_key your run was given")
        return await call_next(request)

    async def complete(kind: str, episode: str, request: Request):
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the request body is not JSON")
        try:
            future = hub.submit(episode, kind, body)
            seg = await asyncio.wrap_future(future)
        except RequestError as e:
            return _error(e.status, e.message)
        return reply(kind, model, seg, bool(body.get("logprobs")), tokenizer)

    @app.post("/episodes/{episode}/v1/chat/completions")
    async def chat(episode: str, request: Request):
        return await complete("chat", episode, request)

    @app.post("/episodes/{episode}/v1/completions")
    async def completions(episode: str, request: Request):
        return await complete("completion", episode, request)

    @app.get("/episodes/{episode}/v1/models")
    async def models(episode: str):
        return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "rlhf"}]}

    return app


class Endpoint:
    """The running server. `base_url(episode)` is what an agent gets; `token` its api_key; `close()` stops it."""

    def __init__(self, hub: Hub, tokenizer, model: str = "policy", start_timeout_s: float = 30.0):
        import uvicorn

        self.token = secrets.token_urlsafe(32)
        self.model = model
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))  # a free port, chosen by the kernel and held from here on
        self.port = sock.getsockname()[1]
        app = create_app(hub, self.token, model, tokenizer)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=30,
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name="rlhf-agent-endpoint", daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the agent endpoint did not start on 127.0.0.1:{self.port}")
            time.sleep(0.01)
        log.info("agent endpoint serving on http://127.0.0.1:%d (bearer token per run)", self.port)

    def base_url(self, episode: str) -> str:
        return f"http://127.0.0.1:{self.port}/episodes/{episode}/v1"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
