"""The three seams: an algorithm added through the table alone, an engine plugged in through `rollout.engine`, and
episodes whose action mask has gaps (tokens an environment inserted) trained end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_run
from engine_fixtures import gapped

from rlhf import algorithms
from rlhf.algorithms import ALGORITHMS, Algorithm
from rlhf.config import ConfigError, load_config
from rlhf.losses import aggregate, masked_mean

REPO = Path(__file__).resolve().parents[1]
GRPO = REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"
PPO = REPO / "recipes" / "ppo_arithmetic_smollm2.yaml"
ENGINES = REPO / "tests" / "engine_fixtures.py"


def vanilla_pg_loss(logprobs, old_logprobs, advantages, mask, *, agg="token-mean", num_tokens=None, max_len=None,
                    num_seqs=None, scale=1.0):  # fmt: skip
    """A toy policy loss: plain REINFORCE, -scale * A * log pi, in the shared signature."""
    per_token = -scale * advantages * logprobs
    loss = aggregate(per_token, mask, agg, num_tokens, max_len, num_seqs)
    zero = torch.zeros(())
    return loss, {"clipfrac": zero, "approx_kl": masked_mean(0.5 * (logprobs - old_logprobs).detach() ** 2, mask)}


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_an_algorithm_added_by_one_row_trains(tiny_model_dir, tmp_path, monkeypatch):
    """A toy policy loss in the shared signature (`rlhf.objective.PolicyLoss`) and its row: nothing else changes
    (the micro-batch loss calls the row's loss; the update only slices, steps and accounts)."""
    from rlhf.trainer import Trainer

    calls = {"n": 0}

    def counted_loss(*args, **kwargs):
        calls["n"] += 1
        return vanilla_pg_loss(*args, **kwargs)

    row = Algorithm(ALGORITHMS["rloo"].estimator, policy_loss=counted_loss, loss_knobs=(), min_group=2)
    monkeypatch.setitem(ALGORITHMS, "toy_pg", row)
    out = tmp_path / "run"
    cfg = load_config(GRPO, [*tiny_run(tiny_model_dir, out), "algorithm.name=toy_pg", "train.max_steps=2"])
    trainer = Trainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.peft_model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert calls["n"] == 4  # two micro-batches of 4 sequences per step
    assert [r["step"] for r in rows(out)] == [1, 2]
    assert all(r["optim/updates"] == 1 and r["policy/clipfrac"] == 0.0 for r in rows(out))
    moved = [n for n, p in trainer.peft_model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert moved, "the toy loss did not move the adapter"


def test_an_estimator_with_a_new_input_needs_the_record_and_the_estimator_only(tiny_model_dir, tmp_path, monkeypatch):
    """As distillation needed the teacher's log-probs: the input is computed once per step into the step record
    (here through the row's `inputs`, landing in `StepRecord.extra`) and the estimator reads it; the trainer, the
    collector's code and the update are untouched."""
    from rlhf.estimators import Advantages
    from rlhf.step_record import StepRecord
    from rlhf.trainer import Trainer

    seen: dict = {}

    def episode_lengths(collector, rollout):
        """[B] sampled tokens per episode."""
        return rollout.action_mask.sum(-1).float()

    def shorter_is_better(inp, stats):
        seq = -inp.extra["lengths"]
        seen["lengths"] = inp.extra["lengths"]
        return Advantages((seq - seq.mean())[:, None] * inp.loss_mask.float())

    row = Algorithm(shorter_is_better, policy_loss=vanilla_pg_loss, loss_knobs=(), inputs={"lengths": episode_lengths})
    monkeypatch.setitem(ALGORITHMS, "toy_short", row)
    records = []
    real = Trainer.advantages
    monkeypatch.setattr(Trainer, "advantages", lambda self, record: records.append(record) or real(self, record))
    out = tmp_path / "run"
    over = [*tiny_run(tiny_model_dir, out), "algorithm.name=toy_short", "train.max_steps=2"]
    trainer = Trainer(load_config(GRPO, over))
    trainer.train()
    assert isinstance(records[0], StepRecord) and set(records[0].extra) == {"lengths"}
    assert torch.equal(seen["lengths"], records[-1].rollout.action_mask.sum(-1).float())
    assert all(r["optim/updates"] == 1 for r in rows(out))


def test_knob_the_algorithm_ignores_is_an_error_naming_its_users(tiny_model_dir, tmp_path):
    over = tiny_run(tiny_model_dir, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"algorithm.reward_norm is not read by algorithm.name=grpo.*ppo, actor"):
        load_config(GRPO, [*over, "algorithm.reward_norm=batch"])
    with pytest.raises(ConfigError, match=r"algorithm.scale_by_std is not read by algorithm.name=ppo.*grpo"):
        load_config(PPO, [*over, "algorithm.scale_by_std=false"])
    with pytest.raises(ConfigError, match=r"value.clip is not read by algorithm.name=trpo.*used by ppo"):
        load_config(REPO / "recipes" / "trpo_arithmetic_smollm2.yaml", [*over, "value.clip=0.5"])
    with pytest.raises(ConfigError, match=r"algorithm.whiten_advantages is not read by algorithm.name=rloo"):
        load_config(GRPO, [*over, "algorithm.name=rloo", "algorithm.whiten_advantages=false"])
    # at its default a knob changes nothing, so a saved config.yaml (every key written out) loads again
    load_config(GRPO, [*over, "algorithm.reward_norm=none", "value.clip=0.2"])
    with pytest.raises(ConfigError, match="did you mean `rloo`"):
        load_config(GRPO, [*over, "algorithm.name=rlo"])


@pytest.mark.parametrize(
    "override, words",
    [
        ("logging.every=0", "logging.every must be >= 1"),
        ("model.lora.dropout=2", "model.lora.dropout must be in [0, 1)"),
        ("eval.num_samples=-1", "eval.num_samples must be >= 0"),
        ("rewards.fn=x:y", "`rewards` is a list; give an item's index"),
        ("model.path.sub=1", "`model.path` is a value, not a section"),
    ],
)
def test_bad_values_are_one_line_errors(override, words, tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(GRPO, [*tiny_run(tiny_model_dir, tmp_path / "run"), override])
    assert words in str(e.value)


def test_num_generations_checked_for_every_algorithm(tiny_model_dir, tmp_path):
    over = tiny_run(tiny_model_dir, tmp_path / "run")
    for n in (0, -2):
        with pytest.raises(ConfigError, match="rollout.num_generations must be >= 1"):
            load_config(GRPO, [*over, "algorithm.name=reinforce", f"rollout.num_generations={n}"])
    with pytest.raises(ConfigError, match="must be >= 2 for grpo"):
        load_config(GRPO, [*over, "rollout.num_generations=1"])


def test_an_engine_plugged_in_by_import_path_hears_every_optimizer_step(tiny_model_dir, tmp_path):
    from rlhf.trainer import Trainer

    out = tmp_path / "run"
    over = [
        *tiny_run(tiny_model_dir, out),
        f"rollout.engine={ENGINES}:CountingEngine",
        "algorithm.num_minibatches=2",
        "train.max_steps=2",
        "eval.every=2",
        "eval.num_samples=3",
    ]
    trainer = Trainer(load_config(GRPO, over))
    trainer.train()
    engine = trainer.engine
    train_rows = [r for r in rows(out) if "optim/updates" in r]
    assert engine.weights_updates == sum(r["optim/updates"] for r in train_rows) == 4
    assert engine.generate_calls == 2 + 2  # a rollout per step; evaluations at steps 0 and 2
    assert engine.closes == 1


def test_unknown_engine_is_an_error_with_the_choices(tiny_model_dir, tmp_path):
    from rlhf.rollout import resolve_engine

    with pytest.raises(ValueError, match="did you mean `builtin`"):
        resolve_engine("bultin")
    with pytest.raises(ValueError, match="rollout.engine='nowhere.py:X'"):
        resolve_engine("nowhere.py:X")


@pytest.mark.parametrize("recipe", [GRPO, PPO], ids=["grpo", "ppo"])
def test_gapped_episodes_train_on_action_tokens_only(recipe, tiny_model_dir, tmp_path, monkeypatch):
    """An engine whose episodes have inserted tokens in the middle: the trainer's log-probs of the sampled tokens
    agree with the sampler's, nothing is computed on inserted tokens, and the run trains."""
    from rlhf.trainer import Trainer

    seen = {}
    real = Trainer.advantages

    def spy(self, record):
        est = real(self, record)
        seen["action"], seen["adv"] = record.rollout.action_mask.clone(), est.advantages.clone()
        seen["returns"] = None if est.returns is None else est.returns.clone()
        return est

    monkeypatch.setattr(Trainer, "advantages", spy)
    out = tmp_path / "run"
    over = [*tiny_run(tiny_model_dir, out), f"rollout.engine={ENGINES}:GappedEngine", "train.max_steps=2"]
    over += ["rollout.max_new_tokens=9", "algorithm.num_iterations=1"]  # the gap is measured before any step
    trainer = Trainer(load_config(recipe, over))
    trainer.train()
    assert gapped(seen["action"]), "the fixture engine made no gaps"
    off = seen["action"] == 0
    assert (seen["adv"][off] == 0).all()
    if seen["returns"] is not None:
        assert (seen["returns"][off] == 0).all()
    for r in rows(out):
        assert r["policy/rollout_logprob_gap"] < 1e-4  # recomputed = sampled, on action tokens
        assert torch.isfinite(torch.tensor(r["loss/policy"]))


def test_algorithm_rows_are_complete():
    for name, row in ALGORITHMS.items():
        assert isinstance(row.kl, algorithms.KLPlace) and isinstance(row.update, algorithms.UpdateKind), name
        assert callable(row.estimator) and callable(row.policy_loss), name
        assert row.summary, f"{name} has no summary for the configuration reference"
    # every claimed key is a real config key
    from rlhf.config import Config, flat_items, to_dict

    keys = set(flat_items(to_dict(Config())))
    assert algorithms.all_knobs() <= keys, algorithms.all_knobs() - keys


def test_the_builtin_engine_works_without_an_accelerator(tiny_model_dir, tokenizer):
    """As a library (the demo's reworded evaluation, a notebook): no accelerator, a PEFT model, greedy."""
    from rlhf.models import load_policy, merged_adapter
    from rlhf.rollout import BuiltinEngine, SamplingParams, generate_batched

    model = load_policy(tiny_model_dir, "float32")
    prompts = [tokenizer.encode("Compute 1 + 2."), tokenizer.encode("Hi")]
    params = SamplingParams(max_new_tokens=5, greedy=True)
    out = BuiltinEngine(model, tokenizer).generate(prompts, 1, params)
    from rlhf.data import left_pad

    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    with merged_adapter(model):
        want = generate_batched(model.get_base_model(), tokenizer, ids, mask, 1, params)
    assert torch.equal(out.completion_ids, want.completion_ids) and out.group_size == 1
