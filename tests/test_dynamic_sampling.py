"""Dynamic sampling (DAPO): uninformative groups dropped, more prompts drawn, ranks in lockstep, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ACCELERATE, FIXTURES, launch, tiny_run

from rlhf.config import load_config
from rlhf.dynamic_sampling import Draw, collect_informative
from rlhf.rollout import Rollout
from rlhf.sampling_filters import informative_groups

REPO = Path(__file__).resolve().parents[1]
DAPO = REPO / "recipes" / "dapo_arithmetic_smollm2.yaml"


def fake_draw(rewards: list[float], G: int, tag: int) -> Draw:
    B = len(rewards)
    ids = torch.full((B, 3), tag)
    roll = Rollout(
        ids, torch.ones(B, 3, dtype=torch.long), ids.clone(), torch.ones(B, 3, dtype=torch.long), torch.zeros(B, 3),
        torch.zeros(B, dtype=torch.bool), [f"{tag}-{i}" for i in range(B)], group_size=G,
    )  # fmt: skip
    r = torch.tensor(rewards)
    return Draw(roll, r, {"f": r.clone()}, [f"p{tag}"] * B, 0.5, 0.1)


def test_filter_is_robust_to_float_noise():
    keep = informative_groups(torch.tensor([1.0, 1.0 + 1e-9, 1.0, 1.0, 1.0, 0.0]), 3)
    assert keep.tolist() == [False, True]


def test_collect_keeps_informative_groups_and_counts_the_draws():
    draws = iter(
        [
            fake_draw([1, 1, 0, 1, 2, 2], 2, 0),  # groups: [1,1] drop, [0,1] keep, [2,2] drop
            fake_draw([3, 3, 5, 4, 0, 9], 2, 1),  # [3,3] drop, [5,4] keep, [0,9] keep
        ]
    )
    d, m = collect_informative(lambda: next(draws), 2, 4, any_rank=bool, total=float, pad_id=0)
    assert d.rewards.tolist() == [0, 1, 5, 4]  # the first two informative groups, whole and in order
    assert d.rollout.completion_ids[:, 0].tolist() == [0, 0, 1, 1]
    assert d.trainable.tolist() == [True] * 4
    assert m == {
        "dynamic/kept_frac": 3 / 6,
        "dynamic/extra_prompts": 4.0,  # 6 groups drawn for a batch of 2
        "dynamic/refills": 1.0,
        "dynamic/filler_groups": 0.0,
    }
    assert d.time_rollout == 1.0 and d.prompts == ["p0", "p0", "p1", "p1"]


def test_collect_fills_with_untrained_groups_when_refills_run_out(caplog):
    draws = iter([fake_draw([1, 1, 0, 1], 2, 0), fake_draw([2, 2, 3, 3], 2, 1)])
    d, m = collect_informative(lambda: next(draws), 2, 1, any_rank=bool, total=float, pad_id=0)
    assert d.rewards.tolist() == [0, 1, 1, 1]  # the one informative group, then the first dropped one as filler
    assert d.trainable.tolist() == [True, True, False, False]
    assert m["dynamic/filler_groups"] == 1.0 and m["dynamic/refills"] == 1.0
    assert "equal rewards after 1 extra draws" in caplog.text


def _rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))} for r in rows]


def _over(tiny: str, out: Path, *extra: str) -> list[str]:
    return [
        *tiny_run(tiny, out),
        f"rewards=[{{fn: '{FIXTURES}:odd_answers_only'}}]",
        "train.save_every=1",
        *extra,
    ]


def test_refilled_steps_train_and_resume_exactly(tiny_model_dir, tmp_path):
    from rlhf.trainer import Trainer

    full, part = tmp_path / "full", tmp_path / "part"
    Trainer(load_config(DAPO, _over(tiny_model_dir, full, "train.max_steps=4"))).train()
    rows = _rows(full)
    assert all(r["dynamic/extra_prompts"] >= 0 for r in rows)
    assert any(r["dynamic/refills"] > 0 for r in rows), "no step needed a refill: the fixture should force some"
    assert all(r["frac_reward_zero_std"] == 0.0 or r["dynamic/filler_groups"] > 0 for r in rows)
    Trainer(load_config(DAPO, _over(tiny_model_dir, part, "train.max_steps=2"))).train()
    Trainer(load_config(DAPO, _over(tiny_model_dir, part, "train.max_steps=4", "train.resume_from=latest"))).train()
    resumed = _rows(part)
    assert [r["step"] for r in resumed] == [r["step"] for r in rows]
    for a, b in zip(rows, resumed):
        for k, v in a.items():
            assert b[k] == pytest.approx(v, rel=1e-5, abs=1e-7), (a["step"], k)


def test_larger_draws_fill_the_step_in_fewer_calls_and_resume_exactly(tiny_model_dir, tmp_path):
    """algorithm.draw_prompts=6 for a batch of 2 prompts: one engine call per step covers what took refills, the
    sampler moves on by 6 prompts per draw, the step trains on 2 groups, and a resumed run repeats the metrics."""
    from rlhf.trainer import Trainer

    full, part = tmp_path / "full", tmp_path / "part"
    draws = ["algorithm.draw_prompts=6", "algorithm.max_refills=2"]
    trainer = Trainer(load_config(DAPO, _over(tiny_model_dir, full, "train.max_steps=4", *draws)))
    calls = []
    generate = trainer.engine.generate
    trainer.engine.generate = lambda ids, *a, **k: calls.append(len(ids)) or generate(ids, *a, **k)
    trainer.train()
    rows = _rows(full)
    assert calls and all(n == 6 for n in calls)
    assert len(calls) == len(rows) + sum(r["dynamic/refills"] for r in rows)  # one engine call per draw
    assert trainer.sampler.state_dict() == {"epoch": 0, "pos": 6 * len(calls)}
    for r in rows:
        assert r["dynamic/extra_prompts"] == 6 * (r["dynamic/refills"] + 1) - 2
    Trainer(load_config(DAPO, _over(tiny_model_dir, part, "train.max_steps=2", *draws))).train()
    Trainer(
        load_config(DAPO, _over(tiny_model_dir, part, "train.max_steps=4", "train.resume_from=latest", *draws))
    ).train()
    resumed = _rows(part)
    assert [r["step"] for r in resumed] == [r["step"] for r in rows]
    for a, b in zip(rows, resumed):
        for k, v in a.items():
            assert b[k] == pytest.approx(v, rel=1e-5, abs=1e-7), (a["step"], k)


def test_draw_prompts_is_checked():
    from rlhf.config import ConfigError

    with pytest.raises(ConfigError, match="dynamic_sampling=true"):
        load_config(REPO / "recipes" / "grpo_arithmetic_smollm2.yaml", ["algorithm.draw_prompts=8"])
    with pytest.raises(ConfigError, match="smaller than a step's batch"):
        load_config(DAPO, ["algorithm.draw_prompts=2"])


@pytest.mark.skipif(ACCELERATE is None, reason="accelerate launcher not installed")
def test_ranks_stay_in_lockstep_when_one_rank_has_no_informative_group(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    over = [
        *tiny_run(tiny_model_dir, out),
        f"rewards=[{{fn: '{FIXTURES}:constant_on_rank_one'}}]",
        "algorithm.dynamic_sampling=true",
        "algorithm.max_refills=2",
        "train.prompts_per_step=2",
        "train.max_steps=2",
    ]
    res = launch("ddp", "-m", "rlhf.train", REPO / "recipes" / "grpo_arithmetic_smollm2.yaml", *over)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["dynamic/refills"] == 2.0  # rank 1 stays short, so every rank draws the maximum
        assert r["dynamic/filler_groups"] == 1.0  # rank 1's one group per step fills with no loss
        assert torch.isfinite(torch.tensor(r["loss/policy"]))
