"""Where prompt rows come from: the hub, a local file (JSON lines, JSON, Parquet, CSV) or the built-in arithmetic task,
with a held-out split; errors name the file, the row and the fix. `rlhf.data` turns the rows into prompts.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
OPERATORS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


class DataError(ValueError):
    """A dataset problem a person can fix."""


def arithmetic_problems(
    min_operand: int,
    max_operand: int,
    operators: list[str],
    num_train: int,
    num_eval: int,
    template: str,
    seed: int = 0,
    b_range: tuple[int, int] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Disjoint train and eval problems drawn without replacement from every (a, op, b) in range, seeded. The second
    operand b ranges over `b_range` (smallest, largest) when given, else over the same range as a.

    Rows: {"prompt": question text, "answer": the result as a string, "a", "op", "b"}."""
    space = [
        (a, op, b)
        for op in operators
        for a in range(min_operand, max_operand + 1)
        for b in range(*((b_range[0], b_range[1] + 1) if b_range else (min_operand, max_operand + 1)))
    ]
    random.Random(seed).shuffle(space)
    if num_train + num_eval > len(space):
        raise DataError(f"arithmetic task has only {len(space)} distinct problems; ask for fewer")

    def row(a: int, op: str, b: int) -> dict:
        return {
            "prompt": template.format(a=a, op=op, b=b),
            "answer": str(OPERATORS[op](a, b)),
            "a": a,
            "op": op,
            "b": b,
        }

    eval_rows = [row(*p) for p in space[:num_eval]]
    train_rows = [row(*p) for p in space[num_eval : num_eval + num_train]]
    return train_rows, eval_rows


def preview(value: Any, width: int = 100) -> str:
    """`value` as JSON, cut to `width` characters (for error messages that quote a row)."""
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."


def _where(path: str | Path) -> str:
    return str(path) if Path(path).expanduser().is_absolute() else f"{path} (relative to {Path.cwd()})"


def _check_json_lines(path: Path) -> None:
    """Each non-blank line is a JSON object; the first that is not is named by its line number. A .json file that
    parses whole (a list of rows) is left to the loader."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8 JSON lines") from None
    if not text.strip():
        raise DataError(
            f"data file {path} is empty: it holds no rows; give one JSON object per line, e.g. " + '{"prompt": "..."}'
        )
    if path.suffix.lower() == ".json":
        try:
            json.loads(text)
            return
        except ValueError:
            pass  # not one JSON document: JSON lines, checked below
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DataError(
                f"data file {path}, line {n}: not valid JSON ({getattr(e, 'msg', e)} at column "
                f"{getattr(e, 'colno', '?')}): {preview(line[:80])}; fix or delete the line (one JSON object per line)"
            ) from None
        if not isinstance(row, dict):
            raise DataError(
                f"data file {path}, line {n}: a JSON {type(row).__name__}, not an object; each line must be one row "
                'like {"prompt": "..."}; fix or delete that line'
            )


_OFFLINE_MARKERS = (
    "ConnectionError",
    "OfflineModeIsEnabled",
    "LocalEntryNotFoundError",
    "ConnectTimeout",
    "ReadTimeout",
    "MaxRetryError",
    "NameResolutionError",
    "Couldn't reach",
)


def _unreachable(e: BaseException) -> bool:
    """The hub could not be reached (offline mode, no network), anywhere in the exception chain."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = f"{type(e).__name__} {e}"
        if isinstance(e, ConnectionError) or any(m in text for m in _OFFLINE_MARKERS):
            return True
        e = e.__cause__ or e.__context__
    return False


def _innermost(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def load_rows(path: str, name: str | None = None, split: str = "train") -> list[dict]:
    """Rows of a local JSONL/JSON/Parquet/CSV file or of a hub dataset split.

    A bad local file is named with what is wrong in one line: missing, empty, or (JSON lines) the first line that is
    not a JSON object, by number. A hub dataset that cannot be reached says how to use a local file instead."""
    if str(path).startswith("reasoning_gym:"):  # generated tasks: rlhf/interop/reasoning_gym.py
        from rlhf.interop.reasoning_gym import load_reasoning_gym

        return load_reasoning_gym(path, split)
    import datasets

    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if suffix in LOCAL_FORMATS:
        if not p.is_file():
            raise DataError(
                f"data file {_where(path)} not found"
                + (" (it is a folder)" if p.is_dir() else "")
                + "; check data.path / eval.path"
            )
        if p.stat().st_size == 0:
            raise DataError(f"data file {p} is empty: it holds no rows")
        if LOCAL_FORMATS[suffix] == "json":
            _check_json_lines(p)
        try:
            ds = datasets.load_dataset(LOCAL_FORMATS[suffix], data_files=str(p), split="train")
        except Exception as e:  # pyarrow / datasets raise many types; the user needs the file and the reason
            raise DataError(f"could not read data file {p}: {_innermost(e)}") from e
        if len(ds) == 0:
            raise DataError(f"data file {p} is empty: it holds no rows")
        return [dict(r) for r in ds]
    if p.is_file():
        raise DataError(
            f"data file {p} has an unsupported format {suffix or '(no suffix)'!r}; use one of "
            f"{', '.join(LOCAL_FORMATS)} (e.g. JSON lines: one object per line in a .jsonl file)"
        )
    if str(path).startswith((".", "/", "~")) and not p.exists():
        raise DataError(f"data path {_where(path)} not found; check data.path / eval.path")
    try:
        ds = datasets.load_dataset(path, name, split=split)
    except Exception as e:  # the hub raises many types; the user needs the path and the reason
        if _unreachable(e):
            raise DataError(
                f"dataset {path!r} is not a local file and the hub cannot be reached ({_innermost(e)}); use a local "
                "JSON-lines file instead: data.path=path/to/file.jsonl (one object per line with the prompt column)"
            ) from e
        raise DataError(f"could not load dataset {path!r} (name={name!r}, split={split!r}): {e}") from e
    return [dict(r) for r in ds]


def sibling_split_file(path: str | Path, split: str, eval_split: str) -> Path | None:
    """The file next to a local training file named after the evaluation split, when it exists: the split name in the
    file name replaced (data/train.jsonl -> data/test.jsonl, gsm8k_train.jsonl -> gsm8k_test.jsonl)."""
    p = Path(path).expanduser()
    word = re.compile(rf"(?<![A-Za-z0-9]){re.escape(split)}(?![A-Za-z0-9])")
    if not split or split == eval_split or not word.search(p.stem):
        return None
    candidate = p.with_name(word.sub(eval_split, p.stem) + p.suffix)
    return candidate if candidate.is_file() and candidate.resolve() != p.resolve() else None


def load_eval_rows(
    train_rows: list[dict],
    path: str,
    name: str | None = None,
    split: str = "train",
    eval_split: str = "test",
    eval_path: str | None = None,
    num_eval: int = 0,
    seed: int = 0,
) -> tuple[list[dict], list[dict], str]:
    """Evaluation rows that training never sees: (training rows, evaluation rows, a description for the log).

    The first that applies:
      1. eval_path: that file (or hub dataset, its eval_split);
      2. a local training file: the sibling file named after eval_split (`sibling_split_file`);
      3. a hub dataset: its eval_split, when it differs from the training split;
      4. otherwise a seeded held-out slice of num_eval rows (0: a tenth) taken out of train_rows, so the training rows
         returned no longer hold them.
    num_eval > 0 keeps the first num_eval rows of a file or split (1-3)."""
    local = Path(path).suffix.lower() in LOCAL_FORMATS

    def cap(rows: list[dict]) -> list[dict]:
        return rows[:num_eval] if num_eval > 0 else rows

    if eval_path:
        if (
            Path(eval_path).suffix.lower() in LOCAL_FORMATS
            and local
            and Path(eval_path).resolve() == Path(path).resolve()
        ):
            raise DataError(
                f"eval.path {eval_path} is the training file: evaluation would score training rows; give a separate "
                "file, or leave eval.path unset to hold rows out of the training file"
            )
        rows = cap(load_rows(eval_path, None, eval_split))
        return train_rows, rows, f"{len(rows)} rows of {eval_path} (eval.path)"
    if local:
        sibling = sibling_split_file(path, split, eval_split)
        if sibling is not None:
            rows = cap(load_rows(str(sibling)))
            return train_rows, rows, f"{len(rows)} rows of {sibling} (the {eval_split!r} file next to {path})"
    elif eval_split != split:
        rows = cap(load_rows(path, name, eval_split))
        return train_rows, rows, f"{len(rows)} rows of {path} split {eval_split!r}"
    n = num_eval if num_eval > 0 else max(1, len(train_rows) // 10)
    if n >= len(train_rows):
        raise DataError(
            f"{path} has {len(train_rows)} rows: too few to hold out {n} for evaluation and still train; lower "
            "eval.num_samples, give an evaluation file with eval.path=path/to/test.jsonl, or set eval.every=0"
        )
    order = list(range(len(train_rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:n])
    eval_rows = [r for i, r in enumerate(train_rows) if i in held]
    rest = [r for i, r in enumerate(train_rows) if i not in held]
    why = f"no {eval_split!r} file next to it" if local else f"the eval split is the training split {split!r}"
    return (
        rest,
        eval_rows,
        f"{n} rows held out of {path} ({why}; seed {seed}), training on the other {len(rest)}",
    )
