"""Async reward functions: awaited concurrently (one event loop) under `max_concurrency`, with the synchronous
functions' timeout and failure rules, and the same numbers as their synchronous twins in a seeded run.

(Before this, an `async def` reward returned a coroutine where a list was due: the run stopped at its first step with
"reward function ... returned coroutine for N completions; return one per completion".)"""

import functools
import json
import time
from pathlib import Path

import pytest

from rlhf.config import RewardSpec, load_config
from rlhf.reward_function import is_async_callable
from rlhf.rewards import RewardError, build_reward_functions, score
from tests.async_reward_fixtures import AsyncDigitReward, async_length_reward
from tests.conftest import tiny_run

REPO = Path(__file__).resolve().parents[1]
ASYNC_FIX = REPO / "tests" / "async_reward_fixtures.py"
SYNC_FIX = REPO / "tests" / "reward_fixtures.py"
RECIPE = REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"
VOLATILE = ("time/", "throughput/")

BODY = """
import asyncio, time
PEAK = {"now": 0, "max": 0}

async def sleepy(completions, **kw):
    PEAK["now"] += 1
    PEAK["max"] = max(PEAK["max"], PEAK["now"])
    await asyncio.sleep(0.2)
    PEAK["now"] -= 1
    return [1.0] * len(completions)

def sleepy_sync(completions, **kw):
    time.sleep(0.3)
    return [2.0] * len(completions)

def hang(completions, **kw):
    time.sleep(5)

async def ahang(completions, **kw):
    await asyncio.sleep(5)

async def blocks_the_loop(completions, **kw):
    time.sleep(3)

def bad(completions, **kw):
    if "c2" in completions:
        raise ValueError(f"bad row {completions.index('c2')}")
    return [1.0] * len(completions)

async def abad(completions, **kw):
    return bad(completions)
"""


def _module(tmp_path) -> Path:
    f = tmp_path / f"async_rewards_{len(list(tmp_path.glob('async_rewards_*.py')))}.py"
    f.write_text(BODY)
    return f


def _fn(path: Path, fn: str, **spec):
    return build_reward_functions([RewardSpec(fn=f"{path}:{fn}", **spec)])[0]


def _score(fns, n: int = 8):
    return score(fns, [f"p{i}" for i in range(n)], [f"c{i}" for i in range(n)], {})


@pytest.mark.parametrize("limit, low, high", [(2, 0.75, 1.6), (4, 0.38, 1.0), (0, 0.19, 0.6)])
def test_calls_overlap_up_to_the_limit(tmp_path, limit, low, high):
    """8 one-row calls sleeping 0.2 s take ~0.2 s x 8 / limit (all at once without a limit); never more than `limit`
    are in flight."""
    path = _module(tmp_path)
    fn = _fn(path, "sleepy", batch_size=1, max_concurrency=limit)
    assert fn.is_async
    start = time.monotonic()
    total, per_fn = _score([fn])
    elapsed = time.monotonic() - start
    assert per_fn["sleepy"].tolist() == [1.0] * 8
    assert low <= elapsed < high, elapsed
    assert fn.fn.__globals__["PEAK"]["max"] == (limit or 8)


def test_async_functions_overlap_each_other_and_the_sync_ones(tmp_path):
    """Two async functions (0.2 s) and a synchronous one (0.3 s) in one scoring: ~0.3 s, not 0.7 s; the total is
    summed in the recipe's order."""
    path = _module(tmp_path)
    fns = build_reward_functions(
        [
            RewardSpec(fn=f"{path}:sleepy", name="a"),
            RewardSpec(fn=f"{path}:sleepy_sync", name="s", weight=0.5),
            RewardSpec(fn=f"{path}:sleepy", name="b", weight=2.0),
        ]
    )
    start = time.monotonic()
    total, per_fn = _score(fns, 4)
    assert time.monotonic() - start < 0.6
    assert total.tolist() == [4.0] * 4 and list(per_fn) == ["a", "s", "b"]


@pytest.mark.parametrize("on_error", ["raise", "zero"])
def test_timeouts_fail_like_the_sync_path(tmp_path, on_error):
    path = _module(tmp_path)
    outcomes = []
    for name in ("hang", "ahang"):
        fn = _fn(path, name, name="judge", timeout=0.2, on_error=on_error)
        if on_error == "raise":
            with pytest.raises(RewardError) as err:
                _score([fn], 4)
            outcomes.append(str(err.value).split("; the call")[0])
        else:
            outcomes.append((_score([fn], 4)[1]["judge"].tolist(), fn.errors))
    assert outcomes[0] == outcomes[1]
    if on_error == "raise":
        assert outcomes[0] == (
            "reward function 'judge' failed on the batch of 4 rows (rows 0-3, the first prompt 'p0'): TimeoutError: "
            "took longer than its timeout of 0.2s (rewards[].timeout)"
        )
    else:
        assert outcomes[0] == ([0.0] * 4, 4)


@pytest.mark.parametrize("on_error", ["raise", "zero"])
def test_raising_calls_fail_like_the_sync_path(tmp_path, on_error):
    """A batch that raises is retried row by row: the error names row 2, or only row 2 scores 0."""
    path = _module(tmp_path)
    outcomes = []
    for name in ("bad", "abad"):
        fn = _fn(path, name, name="judge", on_error=on_error)
        if on_error == "raise":
            with pytest.raises(RewardError) as err:
                _score([fn], 4)
            outcomes.append(str(err.value))
        else:
            outcomes.append((_score([fn], 4)[1]["judge"].tolist(), fn.errors))
    assert outcomes[0] == outcomes[1]
    expected = "reward function 'judge' failed on row 2 (prompt 'p2'): ValueError: bad row 0"
    if on_error == "zero":
        assert outcomes[0] == ([1.0, 1.0, 0.0, 1.0], 1)
    else:
        assert outcomes[0].startswith(expected)


def test_a_coroutine_that_blocks_the_loop_fails_its_batch(tmp_path):
    path = _module(tmp_path)
    fn = _fn(path, "blocks_the_loop", timeout=0.1, on_error="zero")
    start = time.monotonic()
    assert _score([fn], 2)[1]["blocks_the_loop"].tolist() == [0.0, 0.0] and fn.errors == 2
    assert time.monotonic() - start < 2.9  # the loop was abandoned before the coroutine woke up


def test_what_counts_as_async():
    assert is_async_callable(async_length_reward) and is_async_callable(AsyncDigitReward())
    assert is_async_callable(functools.partial(async_length_reward, [])) and not is_async_callable(AsyncDigitReward)
    assert not is_async_callable(len) and not is_async_callable(lambda c: c)


def _run(tiny: str, out: Path, rewards: list[str]) -> list[dict]:
    from rlhf.trainer import Trainer

    specs = ", ".join(rewards)
    over = [*tiny_run(tiny, out), "train.max_steps=2", f"rewards=[{specs}]"]
    Trainer(load_config(RECIPE, over)).train()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def test_async_and_mixed_rewards_train_like_their_sync_twins(tiny_model_dir, tmp_path):
    """Seeded 2-step runs: sync rewards, their async twins, and a sync/async mix write the same metrics.jsonl."""
    length = {"sync": f"{SYNC_FIX}:length_reward", "async": f"{ASYNC_FIX}:async_length_reward"}
    digits = {"sync": f"{ASYNC_FIX}:digit_reward", "async": f"{ASYNC_FIX}:AsyncDigitReward"}
    runs = {}
    for kind, (a, b) in {"sync": ("sync", "sync"), "async": ("async", "async"), "mix": ("async", "sync")}.items():
        rewards = [f"{{fn: '{length[a]}', name: length}}", f"{{fn: '{digits[b]}', name: digits, weight: 0.5}}"]
        runs[kind] = _run(tiny_model_dir, tmp_path / kind, rewards)
    assert len(runs["sync"]) == 2 and "reward/length/mean" in runs["sync"][0]
    assert runs["async"] == runs["sync"] and runs["mix"] == runs["sync"]
