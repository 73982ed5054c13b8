"""`rollout.engine: vllm` on vLLM's CPU build: sampling parameters, behaviour log-probs, weight sync, seeded and resumed
runs, evaluation. These run in the vLLM environment (`make test-vllm`); elsewhere they skip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed here: `make install-vllm && make test-vllm` runs these")

from rlhf.config import load_config  # noqa: E402
from rlhf.models import load_policy, load_tokenizer  # noqa: E402
from rlhf.policy import Policy  # noqa: E402
from rlhf.rollout import BuiltinEngine, SamplingParams  # noqa: E402
from rlhf.rollout.vllm import VLLMEngine, resolve_sync, vllm_state_dict  # noqa: E402
from rlhf.trainer import Trainer  # noqa: E402
from tests.conftest import build_tiny_model, launch  # noqa: E402
from tests.test_resume import _metrics, _over  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"
PROMPTS = ["Compute 12 + 30. Reply with only the number.", "What is the sum of 41 and 17?"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return str(
        build_tiny_model(
            # conftest's tiny Llama with head_dim 32: vLLM's CPU attention has no kernel for head_dim 8
            tmp_path_factory.mktemp("tiny-llama-vllm"),
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return load_tokenizer(tiny_dir)


@pytest.fixture(scope="module")
def prompts(tok) -> list[list[int]]:
    return [tok(p)["input_ids"] for p in PROMPTS]


@pytest.fixture(scope="module")
def policy(tiny_dir):
    return load_policy(tiny_dir, "float32", 8, 16.0, 0.0, "all-linear")


@pytest.fixture(scope="module")
def engine(policy, tok):
    eng = VLLMEngine(policy, tok, sync="merged")
    yield eng
    eng.close()


def randomise_adapter(model, seed: int) -> None:
    """A trained-looking adapter: lora_B is zero at initialisation, so give it values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def recomputed(model, roll) -> torch.Tensor:
    """[B, C] the trainer's log-probs of the rollout's tokens at its temperature (0 off the mask)."""
    with torch.no_grad():
        out = Policy(model)(
            roll.prompt_ids, roll.prompt_mask, roll.completion_ids, roll.completion_mask, roll.temperature,
            group_size=roll.group_size,
        )  # fmt: skip
    lp = torch.zeros_like(roll.logprobs)
    lp[:, : out.logprobs.shape[1]] = out.logprobs
    return lp


def test_sampling_params_map_one_to_one(engine):
    s = SamplingParams(max_new_tokens=7, temperature=0.7, top_p=0.9, top_k=5, stop=["\n"])
    p = engine.sampling_params(s, n=4, seed=11)
    assert (p.n, p.temperature, p.top_p, p.top_k, p.max_tokens, p.seed) == (4, 0.7, 0.9, 5, 7, 11)
    assert p.stop == ["\n"] and p.include_stop_str_in_output and p.logprobs == 0
    off = engine.sampling_params(SamplingParams(greedy=True, top_k=0), n=1, seed=0)
    assert off.temperature == 0.0 and off.top_k in (-1, 0)  # vLLM's "off"


def test_sync_mode_by_device():
    assert resolve_sync("auto") == ("lora" if torch.cuda.is_available() else "merged")
    assert resolve_sync("lora") == "lora"
    with pytest.raises(ValueError, match="rollout.vllm.sync"):
        resolve_sync("adapter")


def test_rollout_has_the_builtin_engines_shape(engine, prompts, tok):
    torch.manual_seed(0)
    roll = engine.generate(prompts, 3, SamplingParams(max_new_tokens=5, temperature=0.8))
    B = len(prompts) * 3
    assert roll.completion_ids.shape[0] == B and roll.completion_ids.shape[1] <= 5
    assert roll.group_size == 3 and roll.temperature == 0.8
    assert roll.prompt_ids.shape == roll.prompt_mask.shape and roll.prompt_ids.shape[0] == B
    for i, ids in enumerate(prompts):  # left-padded, a prompt's rows consecutive
        for row in range(3 * i, 3 * i + 3):
            assert roll.prompt_ids[row][roll.prompt_mask[row].bool()].tolist() == ids
    lengths = roll.completion_mask.sum(-1)
    assert torch.equal(roll.truncated, lengths == 5)  # the random model never says EOS in 5 tokens
    assert (roll.logprobs[roll.completion_mask.bool()] < 0).all() and (
        roll.logprobs[~roll.completion_mask.bool()] == 0
    ).all()
    texts = [
        tok.decode(r[m.bool()].tolist(), skip_special_tokens=True)
        for r, m in zip(roll.completion_ids, roll.completion_mask)
    ]
    assert roll.texts == texts
    assert len({tuple(r.tolist()) for r in roll.completion_ids[:3]}) > 1  # the G samples of a group differ


def test_greedy_equals_builtin_greedy(engine, policy, prompts, tok):
    params = SamplingParams(max_new_tokens=8, greedy=True)
    ours = engine.generate(prompts, 1, params)
    builtin = BuiltinEngine(policy, tok).generate(prompts, 1, params)
    assert torch.equal(ours.completion_ids, builtin.completion_ids)  # float32: the same argmax
    assert ours.temperature == builtin.temperature == 1.0
    torch.testing.assert_close(ours.logprobs, builtin.logprobs, atol=1e-4, rtol=0)


def test_stop_string_ends_the_completion_and_is_kept(engine, prompts, tok):
    """With the same seed, the run with a stop string is the run without it, cut after the first token whose text
    completes the stop string (kept, as the built-in engine keeps it), and not flagged truncated."""
    sampled = SamplingParams(max_new_tokens=12, temperature=1.0)
    torch.manual_seed(2)
    full = engine.generate(prompts[:1], 1, sampled)
    ids = full.completion_ids[0].tolist()
    # a later token's text that the completion has not produced before: a stop string it reaches mid-way (not a
    # partial UTF-8 character, whose text vLLM's detokenizer holds back until the next token)
    k, stop = next(
        (k, t)
        for k in range(2, 12)
        if (t := tok.decode(ids[k : k + 1]).strip()) and "\ufffd" not in t and t not in tok.decode(ids[:k])
    )
    torch.manual_seed(2)
    cut = engine.generate(prompts[:1], 1, SamplingParams(max_new_tokens=12, temperature=1.0, stop=[stop]))
    assert cut.completion_ids[0][cut.completion_mask[0].bool()].tolist() == ids[: k + 1]
    assert cut.texts[0] == tok.decode(ids[: k + 1], skip_special_tokens=True) and stop in cut.texts[0]
    assert not cut.truncated[0] and full.truncated[0]


@pytest.mark.parametrize("top_k", [0, 20])
def test_behaviour_logprobs_against_the_trainers_recomputation(engine, policy, prompts, top_k):
    """Without truncation vLLM's processed log-probs are log softmax(logits / T), the trainer's quantity; with top-k
    they are renormalised over the kept tokens, so they exceed it (the log of the kept mass, about log(V / k) here)."""
    torch.manual_seed(1)
    roll = engine.generate(prompts, 4, SamplingParams(max_new_tokens=6, temperature=0.7, top_k=top_k))
    mask = roll.completion_mask.bool()
    diff = (roll.logprobs - recomputed(policy, roll))[mask]
    if top_k == 0:
        assert diff.abs().max() < 1e-4
    else:
        assert (diff > 1.0).all()


def test_seeded_calls_repeat_and_differ(engine, prompts):
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    torch.manual_seed(3)
    a = engine.generate(prompts, 2, params)
    torch.manual_seed(3)
    b = engine.generate(prompts, 2, params)
    c = engine.generate(prompts, 2, params)  # the generator moved on: a new seed
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.completion_ids, c.completion_ids)


@pytest.mark.parametrize("sync", ["merged", "lora"])
def test_weight_sync_follows_the_trainer(sync, tiny_dir, tok, prompts):
    """After the adapter changes, the engine's log-probs differ from before and agree with the trainer's."""
    model = load_policy(tiny_dir, "float32", 8, 16.0, 0.0, "all-linear")
    base = {k: v.clone() for k, v in vllm_state_dict(model).items()}
    eng = VLLMEngine(model, tok, sync=sync)
    try:
        params = SamplingParams(max_new_tokens=6, temperature=1.0)
        torch.manual_seed(4)
        before = eng.generate(prompts, 2, params)
        randomise_adapter(model, seed=int(sync == "lora"))
        stale = eng.generate(prompts, 2, params)
        eng.weights_updated()
        torch.manual_seed(4)
        after = eng.generate(prompts, 2, params)
        assert not torch.equal(before.completion_ids, after.completion_ids)
        gap_stale = (stale.logprobs - recomputed(model, stale))[stale.completion_mask.bool()].abs().max()
        gap_after = (after.logprobs - recomputed(model, after))[after.completion_mask.bool()].abs().max()
        assert gap_stale > 0.1 and gap_after < 1e-3, (gap_stale, gap_after)
        for k, v in vllm_state_dict(model).items():  # the trainer's frozen base is bit-identical
            assert torch.equal(v, base[k]), k
        assert len(eng.sync_seconds) == 2
    finally:
        eng.close()


def _overrides(tiny: str, out: Path, *extra: str) -> list[str]:
    """test_resume's tiny run through vLLM, with the old log-probs recomputed (so the mismatch metrics are logged)."""
    return _over(tiny, out, "rollout.engine=vllm", "algorithm.num_iterations=2", *extra)


_rows = _metrics  # metrics rows without the timings


def test_training_run_resumes_exactly_and_logs_the_mismatch(tiny_dir, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    Trainer(load_config(RECIPE, _overrides(tiny_dir, full, "train.max_steps=3"))).train()
    Trainer(load_config(RECIPE, _overrides(tiny_dir, part, "train.max_steps=2"))).train()
    Trainer(load_config(RECIPE, _overrides(tiny_dir, part, "train.max_steps=3", "train.resume_from=latest"))).train()
    a, b = _rows(full), _rows(part)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-6), (ra["step"], k)
    steps = [r for r in a if "loss/policy" in r]
    assert all(r["rollout/mismatch_abs_max"] < 1e-3 for r in steps)  # float32: vLLM and the trainer agree
    assert any("eval/accuracy" in r for r in a)


def test_engine_leaves_the_runs_generators_alone(policy, tok):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    VLLMEngine(policy, tok, sync="merged").close()  # vLLM seeds the global generators in process; we put them back
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("launcher", ["ddp", "zero3"])
def test_two_process_run(launcher, tiny_dir, tmp_path):
    """One engine per rank inside accelerate's process group (vLLM's external_launcher mode); under ZeRO-3 each sync
    gathers the shards once."""
    out = tmp_path / launcher
    proc = launch(launcher, "-m", "rlhf.train", RECIPE, *_overrides(tiny_dir, out, "train.max_steps=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(out)
    assert [r["step"] for r in rows if "loss/policy" in r] == [1, 2]
    assert rows[-1]["rollout/mismatch_abs_max"] < 1e-3


def test_evaluate_command_through_vllm(tiny_dir, tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "rlhf.evaluate", "--model", tiny_dir, "--engine", "vllm", "--limit", "4"]
    cmd += ["--max-new-tokens", "4", "--dtype", "float32", "--output-dir", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["num_prompts"] == 4


def test_multi_turn_episodes_through_vllm(tiny_dir, tmp_path):
    """The episode runner drives vLLM like any engine (later turns are prompts made of whole histories): training on
    episodes of 1-3 turns keeps the sampled tokens' log-probs equal to the trainer's, observation tokens masked out."""
    out = tmp_path / "episodes"
    envs = REPO / "tests" / "env_fixtures.py"
    extra = (
        "train.max_steps=2",
        f"env.name={envs}:CountdownEnv",
        "env.kwargs={turns: 3, by_row: true}",
        "env.max_tokens=24",
    )
    Trainer(load_config(RECIPE, _overrides(tiny_dir, out, *extra))).train()
    steps = [r for r in _rows(out) if "loss/policy" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["rollout/mismatch_abs_max"] < 1e-3 and r["env/turns"] >= 1 for r in steps)
    assert sum(r["env/observation_tokens"] for r in steps) > 0  # some episodes took more than one turn
    assert any("eval/env/turns" in r for r in _rows(out))  # held-out episodes ran through vLLM too
