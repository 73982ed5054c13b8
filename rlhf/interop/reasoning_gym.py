"""reasoning-gym tasks as data + reward: procedurally generated problems scored by their own `score_answer`.

reasoning-gym (`pip install -e ".[reasoning]"`, https://github.com/open-thought/reasoning-gym) generates over a
hundred task families (arithmetic, logic puzzles, graphs, games, ...) from a seed, each with its own scorer. This
module turns one into prompt rows and scores completions with that scorer, three ways to use it:

- in a recipe: `data.path: reasoning_gym:leg_counting?size=2000&min_animals=3` (`load_reasoning_gym`): the part
  after `?` is the task's config (`size` and `seed` included; values read as YAML, so `operators=[+,*]` is a list);
  the evaluation split is drawn with another seed, questions already in the training rows removed;
- offline as files: `python -m rlhf.interop.reasoning_gym leg_counting --size 2000 --test-size 200 --out-dir data`
  writes `leg_counting_train.jsonl` and `leg_counting_test.jsonl` (the trainer finds the test file next to the train
  file on its own);
- the reward: `rewards: [{fn: rlhf.interop.reasoning_gym:ReasoningGymReward}]` reads the answer from the completion
  (by default the last `<answer>...</answer>`, reasoning-gym's own convention) and returns the task's score in [0, 1].

Row columns: `prompt` (the question), `answer` (the reference answer as text, for rewards that read it; empty for
tasks that check a solution instead of comparing with one), `rg_dataset` (the task name), `rg_config` (JSON of the
task config the row was drawn with, seed and size included) and `rg_index` (the entry's index). The reward rebuilds
the entry from these three rather than reading it back from JSON: scorers compare metadata of exact Python types
(ARC grids are tuples of tuples, which JSON would turn into lists and score 0.05 instead of 1)."""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path
from typing import Any

import yaml

PREFIX = "reasoning_gym:"
COLUMNS = ("prompt", "answer", "rg_dataset", "rg_config", "rg_index")
DEFAULT_SIZE = 1000


def _require():
    try:
        import reasoning_gym
    except ImportError as e:
        raise ImportError(
            "reasoning-gym is not installed: `pip install -e '.[reasoning]'` (or `make install-reasoning`)"
        ) from e
    return reasoning_gym


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`reasoning_gym:NAME?key=value&key=value` (the prefix optional) -> (NAME, {key: YAML value})."""
    text = spec[len(PREFIX) :] if spec.startswith(PREFIX) else spec
    name, _, query = text.partition("?")
    if not name:
        raise ValueError(f"reasoning-gym spec {spec!r}: write reasoning_gym:TASK?key=value&... (e.g. leg_counting)")
    config = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"reasoning-gym spec {spec!r}: {item!r} is not key=value")
        config[key] = _value(value)
    return name, config


def _value(text: str) -> Any:
    """A YAML value; text YAML cannot read (`*` is an alias there) stays text, and `[a,b]` a list of such values."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        if text.startswith("[") and text.endswith("]"):
            return [_value(item.strip()) for item in text[1:-1].split(",")]
        return text


def split_seed(seed: int, split: str) -> int:
    """The training split keeps `seed`; any other split gets a seed derived from its name (fixed across runs)."""
    return seed if split == "train" else (seed + zlib.crc32(split.encode())) % 2**32


def reasoning_gym_rows(
    name: str, size: int = DEFAULT_SIZE, seed: int = 0, split: str = "train", **config
) -> list[dict]:
    """`size` rows of task `name` drawn with the split's seed; a non-training split drops questions that the training
    split of the same task, config and size holds (so evaluation never scores a training question)."""
    rg = _require()
    rows = _draw(rg, name, size, split_seed(seed, split), config)
    if split != "train":
        seen = {r["prompt"] for r in _draw(rg, name, size, seed, config)}
        rows = [r for r in rows if r["prompt"] not in seen]
        if not rows:
            raise ValueError(
                f"reasoning-gym task {name!r}: every {split!r} question is a training question; the task's space is "
                "too small for this size, lower `size` or widen its config"
            )
    return rows


def _draw(rg, name: str, size: int, seed: int, config: dict) -> list[dict]:
    full = {**config, "size": size, "seed": seed}
    try:
        dataset = rg.create_dataset(name, **full)
    except (ValueError, TypeError, AssertionError) as e:
        known = ", ".join(sorted(rg.factory.DATASETS)) if "not registered" in str(e) else ""
        raise ValueError(
            f"reasoning-gym task {name!r} with {config}: {e}" + (f" (tasks: {known})" if known else "")
        ) from e
    config_json = json.dumps(full, default=_jsonable, sort_keys=True)
    return [
        {
            "prompt": entry["question"],
            "answer": "" if entry["answer"] is None else str(entry["answer"]),
            "rg_dataset": name,
            "rg_config": config_json,
            "rg_index": index,
        }
        for index, entry in enumerate(dataset)
    ]


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def load_reasoning_gym(path: str, split: str = "train") -> list[dict]:
    """The data source behind `data.path: reasoning_gym:TASK?...` (called by `rlhf.data.load_rows`)."""
    name, config = parse_spec(path)
    size = int(config.pop("size", DEFAULT_SIZE))
    seed = int(config.pop("seed", 0))
    return reasoning_gym_rows(name, size, seed, split, **config)


class ReasoningGymReward:
    """Scores each completion with its task's own `score_answer(answer, entry)` (a float in [0, 1]).

    `answer_tag`: the answer is the last `<TAG>...</TAG>` in the completion (no tag: scored with answer None, which
    every task scores 0); `None` passes the whole completion, stripped. The entry is rebuilt from `rg_dataset`,
    `rg_config` and `rg_index` (task instances and entries are cached); when the row has an `answer` column the
    rebuilt entry's answer must match it (else the rows came from another reasoning-gym version: an error says so)."""

    def __init__(self, answer_tag: str | None = "answer"):
        self.answer_tag = answer_tag
        self._datasets: dict[tuple[str, str], Any] = {}
        self._entries: dict[tuple[str, str, int], dict] = {}
        self._extract = _require().utils.extract_answer

    def __call__(
        self, completions: list, rg_dataset: list[str], rg_config: list[str], rg_index: list[int], **columns
    ) -> list[float]:
        from rlhf.rewards import as_text

        answers = columns.get("answer") or [None] * len(completions)
        scores = []
        for completion, name, config, index, reference in zip(
            completions, rg_dataset, rg_config, rg_index, answers, strict=True
        ):
            entry = self.entry(name, config, int(index), reference)
            text = as_text(completion)
            answer = self._extract(text, self.answer_tag) if self.answer_tag else text.strip()
            scores.append(float(self._dataset(name, config).score_answer(answer, entry)))
        return scores

    def entry(self, name: str, config: str, index: int, reference: str | None = None) -> dict:
        """The task's entry `index` as generated, checked against the row's reference answer when given."""
        key = (name, config, index)
        if key not in self._entries:
            entry = self._dataset(name, config)[index]
            expected = "" if entry["answer"] is None else str(entry["answer"])
            if reference is not None and reference != expected:
                raise ValueError(
                    f"reasoning-gym task {name!r} entry {index}: its answer is now {expected[:80]!r}, the row says "
                    f"{str(reference)[:80]!r}; the rows were written by another reasoning-gym version, write them again"
                )
            self._entries[key] = entry
        return self._entries[key]

    def _dataset(self, name: str, config: str):
        key = (name, config)
        if key not in self._datasets:
            self._datasets[key] = _require().create_dataset(name, **json.loads(config))
        return self._datasets[key]


def export(name: str, size: int, test_size: int, seed: int, out_dir: Path, config: dict) -> list[Path]:
    """Write NAME_train.jsonl (`size` rows) and NAME_test.jsonl (up to `test_size` rows, no training question)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train = reasoning_gym_rows(name, size, seed, "train", **config)
    seen = {r["prompt"] for r in train}
    test = [
        r for r in reasoning_gym_rows(name, max(size, test_size), seed, "test", **config) if r["prompt"] not in seen
    ]
    test = test[:test_size]
    paths = []
    for split, rows in (("train", train), ("test", test)):
        path = out_dir / f"{name}_{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write a reasoning-gym task as train/test JSON-lines files.")
    p.add_argument("task", help="task name, optionally with its config: leg_counting?min_animals=3")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="training rows")
    p.add_argument("--test-size", type=int, default=200, help="held-out rows (never a training question)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=Path("data"))
    args = p.parse_args(argv)
    name, config = parse_spec(args.task)
    for path in export(name, args.size, args.test_size, args.seed, args.out_dir, config):
        print(path)


if __name__ == "__main__":
    main()
