"""Agents trained through the OpenAI-compatible endpoint, with the official openai client: the endpoint's guard,
episodes built from the recorded calls (token in, token out: the trainer's log-probs equal the sampler's), failures
that cost only their own episode, the trainer on agent episodes, and config errors."""

import itertools
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="the agent endpoint needs the `agents` extra: pip install -e '.[agents]'")
pytest.importorskip("uvicorn", reason="the agent endpoint needs the `agents` extra: pip install -e '.[agents]'")
pytest.importorskip("openai", reason="the test agents use the openai client: pip install -e '.[agents]'")

from rlhf.agents import AgentRunner, AgentSettings, build_agent_runner  # noqa: E402
from rlhf.agents.hub import Hub  # noqa: E402
from rlhf.agents.runner import call_keywords  # noqa: E402
from rlhf.agents.server import Endpoint, create_app  # noqa: E402
from rlhf.config import ConfigError, load_config  # noqa: E402
from rlhf.rollout import SamplingParams  # noqa: E402
from tests import agent_fixtures  # noqa: E402
from tests.conftest import tiny_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "grpo_agent_arithmetic_smollm2.yaml"
AGENTS = REPO / "tests" / "agent_fixtures.py"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """(PEFT model, tokenizer, built-in engine) on the tiny model."""
    from rlhf.models import load_policy, load_tokenizer
    from rlhf.rollout import BuiltinEngine

    tok = load_tokenizer(tiny_model_dir)
    model = load_policy(tiny_model_dir, "float32", lora_r=4, lora_alpha=8)
    return model, tok, BuiltinEngine(model, tok)


def prompts(tok, n: int):
    from rlhf.data import build_prompt_set

    rows = [{"prompt": f"Compute {10 + i} + {20 + i}.", "answer": str(30 + 2 * i), "a": i} for i in range(n)]
    return build_prompt_set(rows, tok)


def runner(agent, tok, **settings) -> AgentRunner:
    return AgentRunner(agent, tok, AgentSettings(**settings), call_keywords(agent, "agent", "policy", {}))


def post(url: str, body: dict, token: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_endpoint_binds_loopback_and_refuses_requests_without_the_token(tiny):
    from fastapi.testclient import TestClient

    _, tok, _ = tiny
    hub = Hub(tok, max_calls=2, max_tokens=64)
    hub.open_draw(["ep"], max_new_tokens=4)
    endpoint = Endpoint(hub, tok)
    try:
        assert endpoint.server.servers[0].sockets[0].getsockname()[0] == "127.0.0.1"
        url = endpoint.base_url("ep") + "/chat/completions"
        body = {"model": "policy", "messages": [{"role": "user", "content": "hi"}]}
        assert post(url, body, None)[0] == 401
        status, err = post(url, body, "wrong")
        assert status == 401 and "bearer token" in err["error"]["message"]
        assert post(endpoint.base_url("nope") + "/chat/completions", body, endpoint.token)[0] == 404
        status, err = post(url, {**body, "n": 2}, endpoint.token)
        assert status == 400 and "n must be 1" in err["error"]["message"]
        assert post(url, {**body, "stream": True}, endpoint.token)[0] == 400
        assert not hub.pending  # nothing refused reached the engine's queue
    finally:
        endpoint.close()
    # a request from another address (the test client's is "testclient") is refused before anything else
    client = TestClient(create_app(hub, "secret", "policy", tok))
    r = client.post("/episodes/ep/v1/chat/completions", json=body, headers={"Authorization": "Bearer secret"})
    assert r.status_code == 403


def test_openai_client_episodes_token_in_token_out(tiny):
    """Two chat calls per episode through the real client: one sequence each, action mask 1 exactly on the sampled
    ids, the recorded log-probs equal to the policy's recomputed ones, the agent's reward carried."""
    from rlhf.policy import Policy, score

    model, tok, engine = tiny
    run = runner(agent_fixtures.two_call_agent, tok)
    try:
        ep = run.run(engine, prompts(tok, 3), 2, SamplingParams(max_new_tokens=5))
    finally:
        run.close()
    roll = ep.rollout
    assert roll.completion_ids.shape[0] == 6 and roll.group_size == 2 and ep.engine_calls >= 2
    for b, t in enumerate(ep.traces):
        assert (t.calls, t.retemplated, t.failure) == (2, 0, None)
        n = len(t.response_ids)
        assert roll.action_mask[b, :n].tolist() == t.loss_mask and roll.completion_mask[b, :n].sum() == n
        zeros = [i for i, v in enumerate(t.loss_mask) if v == 0]  # the inserted turn: one run, between two replies
        assert len(zeros) == t.inserted_tokens > 0 and zeros == list(range(zeros[0], zeros[0] + len(zeros)))
        assert 0 < zeros[0] and zeros[-1] < n - 1 and n - len(zeros) <= 9
        assert "result: 7" in tok.decode(t.response_ids)
    assert ep.env_rewards.tolist() == [0.5] * 6
    assert ep.stats["agent/calls"].tolist() == [2.0] * 6 and ep.stats["agent/failed"].sum() == 0
    with torch.no_grad():
        recomputed = score(Policy(model), roll).logprobs
    m = roll.action_mask.bool()
    assert (recomputed[m] - roll.logprobs[m]).abs().max() < 1e-4
    assert (roll.logprobs[~m] == 0).all()


def test_completions_and_retemplated_histories(tiny):
    _, tok, engine = tiny
    run = runner(agent_fixtures.completions_agent, tok)
    try:
        ep = run.run(engine, prompts(tok, 2), 2, SamplingParams(max_new_tokens=4))
        assert [(t.calls, t.retemplated) for t in ep.traces] == [(2, 0)] * 4
        assert ep.env_rewards.tolist() == [1.0] * 4
        run.agent = agent_fixtures.retemplating_agent
        ep = run.run(engine, prompts(tok, 2), 2, SamplingParams(max_new_tokens=4))
    finally:
        run.close()
    assert [(t.calls, t.untrained_calls, t.retemplated) for t in ep.traces] == [(1, 1, 1)] * 4
    assert ep.stats["agent/retemplated"].tolist() == [1.0] * 4 and ep.env_rewards.tolist() == [0.0] * 4


def test_failures_cost_only_their_own_episode(tiny, caplog):
    """10 episodes: 2 raise, 2 hang past the timeout, 2 return nonsense, 2 make no call, 2 behave."""
    _, tok, engine = tiny
    agent_fixtures._count = itertools.count()
    run = runner(agent_fixtures.mixed_agent, tok, timeout_s=3.0)
    try:
        with caplog.at_level(logging.WARNING, logger="rlhf"):
            ep = run.run(engine, prompts(tok, 5), 2, SamplingParams(max_new_tokens=3))
    finally:
        run.close()
    s = {k: v.sum().item() for k, v in ep.stats.items()}
    assert (s["agent/failed"], s["agent/timeouts"], s["agent/errors"]) == (8, 2, 2)
    assert (s["agent/bad_reward"], s["agent/no_calls"]) == (2, 2)
    ok = [b for b, t in enumerate(ep.traces) if t.failure is None]
    assert len(ok) == 2 and all(ep.traces[b].calls == 2 for b in ok)
    for b in range(len(ep.traces)):
        assert bool(ep.rollout.action_mask[b].any()) == (b in ok)  # failed episodes train nothing
        assert ep.env_rewards[b].item() == (1.0 if b in ok else 0.0) and (b in ok or ep.final_texts[b] == "")
    lines = [r.getMessage() for r in caplog.records if "agent episode failed" in r.getMessage()]
    assert len(lines) == 8 and all("row 'Compute" in line for line in lines)
    reasons = " ".join(lines)
    for why in ("timed out after agent.timeout_s=3s", "RuntimeError: the agent's tool crashed", "not a number or None",
                "made no call"):  # fmt: skip
        assert why in reasons


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("agent", ["example", "two_call"])
def test_trainer_trains_agent_episodes(agent, tiny_model_dir, tmp_path):
    """Two steps of the recipe on the tiny model, with the example agent and with a two-call agent: the trainer's
    log-probs of the sampled tokens equal the recorded ones, agent metrics are logged, traces are saved."""
    from rlhf.trainer import Trainer

    out = tmp_path / "run"
    over = [*tiny_run(tiny_model_dir, out), "train.max_steps=2", "eval.every=2", "eval.num_samples=3"]
    over += ["agent.save_traces=true", "agent.timeout_s=60"]
    if agent == "two_call":
        over += [f"agent.run={AGENTS}:two_call_agent", "agent.kwargs={}"]
    Trainer(load_config(RECIPE, over)).train()
    rows = _metrics(out)
    train = [r for r in rows if "loss/policy" in r]
    assert [r["step"] for r in train] == [1, 2]
    for r in train:
        assert r["rollout/mismatch_abs_max"] < 1e-4 and r["agent/failed"] == 0.0
        assert r["agent/calls"] >= 1.0 and torch.isfinite(torch.tensor(r["loss/policy"]))
    if agent == "two_call":
        assert all(r["agent/calls"] == 2.0 and r["agent/inserted_tokens"] > 0 for r in train)
        assert all(r["env/reward"] == 0.5 for r in train)
    assert "eval/agent/calls" in rows[-1] and "eval/accuracy" in rows[-1]
    draws = [json.loads(line) for line in (out / "traces" / "rank0.jsonl").read_text().splitlines()]
    training = [d for d in draws if not d["evaluation"]]
    assert [d["version"] for d in training] == [0, 1] and len(training[0]["episodes"]) == 8
    keys = {"prompt_ids", "response_ids", "loss_mask", "response_logprobs", "model_version", "reward"}
    assert keys <= set(training[0]["episodes"][0])


def test_agent_config_errors(tokenizer):
    plain = REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"
    with pytest.raises(ConfigError, match="agent.timeout_s is set but agent.run is not"):
        load_config(plain, ["agent.timeout_s=5"])
    with pytest.raises(ConfigError, match="did you mean `agent.timeout_s`"):
        load_config(RECIPE, ["agent.timeout=5"])
    with pytest.raises(ConfigError, match="agent.run and env.name"):
        load_config(RECIPE, ["env.name=tools"])
    with pytest.raises(ConfigError, match="agent.max_calls must be >= 1"):
        load_config(RECIPE, ["agent.max_calls=0"])
    with pytest.raises(ConfigError, match="package.module:run_agent"):
        load_config(RECIPE, ["agent.run=run_agent"])
    with pytest.raises(ConfigError, match="does not take api_key"):
        build_agent_runner(load_config(RECIPE, [f"agent.run={AGENTS}:no_api_key_agent"]), tokenizer)
    with pytest.raises(ConfigError, match="has no attribute"):
        build_agent_runner(load_config(RECIPE, [f"agent.run={AGENTS}:missing"]), tokenizer)
    with pytest.raises(ConfigError, match="does not take temperature"):
        build_agent_runner(load_config(RECIPE, ["agent.kwargs={temperature: 1}"]), tokenizer)


def test_readme_agent_example_is_the_file_and_trains(tiny_model_dir, tmp_path):
    """The README's agent is examples/minimal_agent.py, and the README's command trains it (one tiny-model step)."""
    from rlhf.trainer import Trainer

    readme = (REPO / "README.md").read_text()
    section = readme.split("### An agent program over the OpenAI-compatible endpoint", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert block == (REPO / "examples" / "minimal_agent.py").read_text()
    assert "agent.run=examples/minimal_agent.py:run_agent" in section
    out = tmp_path / "run"
    over = [*tiny_run(tiny_model_dir, out), "train.max_steps=1", "agent.kwargs={}"]
    Trainer(load_config(RECIPE, [*over, f"agent.run={REPO / 'examples' / 'minimal_agent.py'}:run_agent"])).train()
    (row,) = [r for r in _metrics(out) if "loss/policy" in r]
    assert row["agent/calls"] == 2.0 and row["agent/failed"] == 0.0 and row["rollout/mismatch_abs_max"] < 1e-4


def test_calls_past_the_limits_are_refused_and_counted(tiny):
    _, tok, engine = tiny
    for limits, calls in (({"max_calls": 2}, 2), ({"max_tokens": 6}, 1)):
        run = runner(agent_fixtures.three_call_agent, tok, **limits)
        try:
            ep = run.run(engine, prompts(tok, 1), 2, SamplingParams(max_new_tokens=4))
        finally:
            run.close()
        # max_calls: the third call gets 429; max_tokens: the first reply and the inserted turn exceed 6 tokens
        assert [(t.calls, t.refused_calls, t.failure) for t in ep.traces] == [(calls, 1, None)] * 2, limits
        assert ep.stats["agent/refused_calls"].tolist() == [1.0, 1.0]


def test_evaluate_command_runs_the_recipes_agent(tiny_model_dir, tmp_path):
    """`python -m rlhf.evaluate --recipe` with an agent recipe runs the agent over the endpoint on held-out rows."""
    from rlhf.evaluate import main

    out = tmp_path / "eval"
    args = ["--recipe", str(RECIPE), "--model", tiny_model_dir, "--dtype", "float32", "--limit", "3"]
    assert main([*args, "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["num_prompts"] == 3 and results["metrics"]["agent/failed"] == 0.0
    assert results["metrics"]["agent/calls"] >= 1.0
