import json
from pathlib import Path

import pytest

from rlhf.data import (
    DataError,
    PromptSampler,
    arithmetic_problems,
    build_prompt_set,
    left_pad,
    load_eval_rows,
    load_rows,
    sibling_split_file,
)


def test_arithmetic_disjoint_seeded_and_correct():
    train, evals = arithmetic_problems(10, 99, ["+", "-", "*"], 500, 100, "Compute {a} {op} {b}.", seed=1)
    again, _ = arithmetic_problems(10, 99, ["+", "-", "*"], 500, 100, "Compute {a} {op} {b}.", seed=1)
    other, _ = arithmetic_problems(10, 99, ["+", "-", "*"], 500, 100, "Compute {a} {op} {b}.", seed=2)
    assert train == again and train != other
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}
    for r in train[:50]:
        assert r["answer"] == str(eval(f"{r['a']} {r['op']} {r['b']}"))
        assert r["prompt"] == f"Compute {r['a']} {r['op']} {r['b']}."


def test_local_jsonl_text_and_chat_prompts(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    rows = [
        {"question": "What is 2+2?", "answer": "4", "level": 1},
        {"question": [{"role": "user", "content": "What is 3+3?"}], "answer": "6", "level": 2},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows[:1]))
    loaded = load_rows(str(path))
    ps = build_prompt_set(
        loaded,
        tokenizer,
        prompt_column="question",
        system_prompt="Be brief.",
        prompt_template="Q: {prompt} (level {level})",
    )
    text = tokenizer.decode(ps.prompt_ids[0])
    assert "Be brief." in text and "Q: What is 2+2? (level 1)" in text and text.rstrip().endswith("assistant")
    assert ps.columns == {"answer": ["4"], "level": [1]}
    chat = build_prompt_set(rows[1:], tokenizer, prompt_column="question")
    assert "What is 3+3?" in tokenizer.decode(chat.prompt_ids[0]) and chat.texts == ["What is 3+3?"]


def test_conversational_jsonl_keeps_the_messages(tmp_path, tokenizer):
    """A prompt column of chat messages is kept per prompt (for the reward functions); text prompts give None."""
    conversations = [
        [{"role": "system", "content": "Answer with a number."}, {"role": "user", "content": "What is 2 + 3?"}],
        [{"role": "user", "content": "What is 4 + 4?"}],
        [{"role": "user", "content": "What is 1 + 6?"}],
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": m, "answer": str(a)}) for m, a in zip(conversations, [5, 8, 7])))
    ps = build_prompt_set(load_rows(str(path)), tokenizer)
    assert ps.prompt_messages == conversations
    assert ps.texts == ["What is 2 + 3?", "What is 4 + 4?", "What is 1 + 6?"]
    assert ps.columns == {"answer": ["5", "8", "7"]}  # the prompt column is not repeated as a column
    assert "Answer with a number." in tokenizer.decode(ps.prompt_ids[0])
    picked = ps.select([2, 0])
    assert picked.prompt_messages == [conversations[2], conversations[0]] and picked.texts[0] == "What is 1 + 6?"
    # data.system_prompt goes first, as the model is prompted
    briefed = build_prompt_set(load_rows(str(path)), tokenizer, system_prompt="Be brief.")
    assert briefed.prompt_messages[0] == conversations[0]  # it has a system message already
    assert briefed.prompt_messages[1] == [{"role": "system", "content": "Be brief."}, *conversations[1]]
    # text prompts (and a dropped row) keep the lists aligned with the prompts
    text = build_prompt_set([{"prompt": "What is 2+2?"}, {"prompt": ""}, {"prompt": conversations[1]}], tokenizer)
    assert text.prompt_messages == [None, conversations[1]] and len(text) == 2 and text.empty == 1
    assert text.select([0]).prompt_messages == [None]


def test_missing_column_is_named(tokenizer):
    with pytest.raises(DataError, match=r"prompt column 'prompt' not in the dataset \(columns: answer, question\)"):
        build_prompt_set([{"question": "x", "answer": "1"}], tokenizer)


def test_long_prompts_dropped_and_counted(tokenizer):
    rows = [{"prompt": "short"}, {"prompt": "long " * 400}, {"prompt": "also short"}]
    ps = build_prompt_set(rows, tokenizer, max_prompt_tokens=64)
    assert len(ps) == 2 and ps.dropped == 1
    with pytest.raises(DataError, match="every prompt is longer"):
        build_prompt_set(rows[1:2], tokenizer, max_prompt_tokens=64)


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_sampler_epochs_and_resume():
    s = PromptSampler(5, seed=0)
    first = s.take(3)
    state = s.state_dict()
    rest = s.take(7)
    t = PromptSampler(5, seed=0)
    t.load_state_dict(state)
    assert t.take(7) == rest
    assert sorted(first + rest[:2]) == [0, 1, 2, 3, 4]  # one epoch visits every prompt once


def test_rename_columns():
    from rlhf.data import rename_columns

    rows = [{"problem": "p", "solution": "\\boxed{1}"}]
    assert rename_columns(rows, {"solution": "answer"}) == [{"problem": "p", "answer": "\\boxed{1}"}]
    with pytest.raises(DataError, match=r"names \['sol'\] which are not columns \(columns: problem, solution\)"):
        rename_columns(rows, {"sol": "answer"})
    with pytest.raises(DataError, match=r"overwrite the existing columns \['problem'\]"):
        rename_columns(rows, {"solution": "problem"})


# ---------------------------------------------------------------------------------------------------------------------
# data errors: one line each, naming the file, line or row and the fix


def test_empty_jsonl_file(tmp_path):
    for text in ("", "\n  \n"):
        path = tmp_path / "empty.jsonl"
        path.write_text(text)
        with pytest.raises(DataError, match=rf"data file {path} is empty: it holds no rows"):
            load_rows(str(path))


def test_malformed_jsonl_line_is_named_by_number(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n{"prompt": "c",\n')
    with pytest.raises(DataError) as e:
        load_rows(str(path))
    msg = str(e.value)
    assert msg.startswith(f"data file {path}, line 4: not valid JSON (") and "fix or delete the line" in msg
    assert "\n" not in msg
    path.write_text('{"prompt": "a"}\n["not", "an", "object"]\n')
    with pytest.raises(DataError, match=rf"data file {path}, line 2: a JSON list, not an object"):
        load_rows(str(path))


def test_null_prompt_names_the_row(tokenizer):
    rows = [{"prompt": "a", "answer": "1"}, {"prompt": None, "answer": "2"}, {"prompt": "c", "answer": "3"}]
    with pytest.raises(DataError) as e:
        build_prompt_set(rows, tokenizer)
    assert str(e.value) == (
        'row 2 of 3 has no prompt: column \'prompt\' is null ({"prompt": null, "answer": "2"}); '
        "fill it in or delete the row"
    )
    with pytest.raises(DataError, match=r"^row 1 of 1: column 'prompt' must be text or chat messages, got int"):
        build_prompt_set([{"prompt": 7}], tokenizer)


def test_null_prompt_from_a_jsonl_file(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a"}\n{"answer": "2"}\n')  # a row without the column reads as null
    with pytest.raises(DataError, match=r"^row 2 of 2 has no prompt: column 'prompt' is null"):
        build_prompt_set(load_rows(str(path)), tokenizer)


def test_empty_prompts_dropped_and_counted(tokenizer):
    rows = [
        {"prompt": "short"},
        {"prompt": ""},
        {"prompt": "   "},
        {"prompt": [{"role": "user", "content": ""}]},
        {"prompt": "long " * 400},
    ]
    ps = build_prompt_set(rows, tokenizer, max_prompt_tokens=64)
    assert len(ps) == 1 and ps.dropped == 4 and ps.empty == 3
    with pytest.raises(DataError, match=r"every prompt is empty \(column 'prompt'\); check data.prompt_column"):
        build_prompt_set(rows[1:4], tokenizer)
    with pytest.raises(DataError, match=r"no prompt is left: 3 are empty and 1 longer than"):
        build_prompt_set(rows[1:], tokenizer, max_prompt_tokens=64)


def test_hub_dataset_offline_says_to_use_a_local_file(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as e:
        load_rows("openai/gsm8k", "main")
    msg = str(e.value)
    assert msg.startswith("dataset 'openai/gsm8k' is not a local file and the hub cannot be reached")
    assert "use a local JSON-lines file instead: data.path=path/to/file.jsonl" in msg and "\n" not in msg


def test_hub_dataset_offline_for_real():
    """conftest sets HF_DATASETS_OFFLINE=1: the real loader's error is recognised too."""
    with pytest.raises(DataError, match=r"the hub cannot be reached .*data.path=path/to/file.jsonl"):
        load_rows("no-such-org/no-such-dataset")


def test_unsupported_or_missing_local_paths(tmp_path):
    txt = tmp_path / "d.txt"
    txt.write_text("hello")
    with pytest.raises(DataError, match=r"has an unsupported format '.txt'; use one of .jsonl, .json"):
        load_rows(str(txt))
    with pytest.raises(DataError, match=r"data path ./no/such/dir \(relative to .*\) not found; check data.path"):
        load_rows("./no/such/dir")
    with pytest.raises(DataError, match=r"data file .*nope.jsonl not found; check data.path"):
        load_rows(str(tmp_path / "nope.jsonl"))


# ---------------------------------------------------------------------------------------------------------------------
# evaluation rows that training never sees


def _write(path, n, tag):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": f"{tag} {i}", "answer": str(i)}) + "\n" for i in range(n)))
    return path


def test_eval_uses_the_sibling_split_file(tmp_path):
    train_file = _write(tmp_path / "data" / "train.jsonl", 20, "train")
    _write(tmp_path / "data" / "test.jsonl", 8, "test")
    rows = load_rows(str(train_file))
    train, evals, desc = load_eval_rows(rows, str(train_file), eval_split="test", num_eval=5)
    assert train == rows and [r["prompt"] for r in evals] == [f"test {i}" for i in range(5)]
    assert desc == f"5 rows of {tmp_path}/data/test.jsonl (the 'test' file next to {train_file})"
    assert sibling_split_file(tmp_path / "data" / "gsm8k_train.jsonl", "train", "test") is None  # no such file
    _write(tmp_path / "data" / "gsm8k_train.jsonl", 3, "x")
    _write(tmp_path / "data" / "gsm8k_test.jsonl", 3, "y")
    assert sibling_split_file(tmp_path / "data" / "gsm8k_train.jsonl", "train", "test") == (
        tmp_path / "data" / "gsm8k_test.jsonl"
    )
    assert sibling_split_file(tmp_path / "data" / "training.jsonl", "train", "test") is None  # a word, not a split


def test_eval_holds_rows_out_of_a_lone_file(tmp_path):
    train_file = _write(tmp_path / "qa.jsonl", 20, "q")
    rows = load_rows(str(train_file))
    train, evals, desc = load_eval_rows(rows, str(train_file), eval_split="test", num_eval=4, seed=3)
    assert len(evals) == 4 and len(train) == 16
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}  # training never sees them
    assert sorted(r["prompt"] for r in train + evals) == sorted(r["prompt"] for r in rows)
    assert desc == f"4 rows held out of {train_file} (no 'test' file next to it; seed 3), training on the other 16"
    again, evals_again, _ = load_eval_rows(rows, str(train_file), eval_split="test", num_eval=4, seed=3)
    assert (again, evals_again) == (train, evals)  # the same split on resume
    _, other, _ = load_eval_rows(rows, str(train_file), eval_split="test", num_eval=4, seed=4)
    assert other != evals
    _, tenth, _ = load_eval_rows(rows, str(train_file), num_eval=0)
    assert len(tenth) == 2
    with pytest.raises(DataError, match=r"has 20 rows: too few to hold out 20 for evaluation"):
        load_eval_rows(rows, str(train_file), num_eval=20)


def test_eval_path_and_hub_splits(tmp_path, monkeypatch):
    train_file = _write(tmp_path / "train.jsonl", 10, "train")
    eval_file = _write(tmp_path / "other" / "eval.jsonl", 6, "eval")
    rows = load_rows(str(train_file))
    train, evals, desc = load_eval_rows(rows, str(train_file), eval_path=str(eval_file), num_eval=0)
    assert train == rows and len(evals) == 6 and desc == f"6 rows of {eval_file} (eval.path)"
    with pytest.raises(DataError, match=r"eval.path .* is the training file"):
        load_eval_rows(rows, str(train_file), eval_path=str(train_file))

    import rlhf.data_sources as sources

    asked = []
    monkeypatch.setattr(sources, "load_rows", lambda p, n=None, s="train": asked.append((p, n, s)) or [{"prompt": s}])
    train, evals, desc = load_eval_rows(rows, "org/ds", name="main", split="train", eval_split="test")
    assert asked == [("org/ds", "main", "test")] and evals == [{"prompt": "test"}] and train == rows
    assert desc == "1 rows of org/ds split 'test'"
    train, evals, desc = load_eval_rows(rows, "org/ds", split="train", eval_split="train", num_eval=3)
    assert len(train) == 7 and len(evals) == 3 and "the eval split is the training split 'train'" in desc


# ---------------------------------------------------------------------------------------------------------------------
# model paths: fail at once when the path is neither a folder nor a hub id


@pytest.mark.parametrize(
    "path, why",
    [
        ("./no/such/model", "it looks like a file path"),
        ("/no/such/model", "it looks like a file path"),
        ("runs/x/adapter", "it has more than one `/`"),
        ("bad name!", "it has characters a hub id cannot have"),
    ],
)
def test_a_model_path_that_does_not_exist_fails_at_once(path, why):
    import time

    from rlhf.models import load_tokenizer

    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as e:
        load_tokenizer(path)
    assert time.perf_counter() - t0 < 1.0
    assert str(e.value).startswith(f"model `{path}` not found: not a local directory, and not a hub id ({why}; ")
    assert "a hub id looks like org/name" in str(e.value) and "HF_HUB_OFFLINE=1" in str(e.value)


def test_hub_ids_offline_and_local_folders(tmp_path, monkeypatch, tiny_model_dir):
    from rlhf.models import load_tokenizer, resolve_model_path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"hub id `no-such-org/no-such-model` is not in the local hub cache"):
        resolve_model_path("no-such-org/no-such-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    assert resolve_model_path("no-such-org/no-such-model") == "no-such-org/no-such-model"  # online: the hub decides
    assert resolve_model_path(tiny_model_dir) == tiny_model_dir
    assert Path(resolve_model_path("smollm2-135m-instruct"), "model.safetensors").is_file()
    weights = Path(tiny_model_dir) / "model.safetensors"
    with pytest.raises(FileNotFoundError, match=r"is a file, not a model directory"):
        resolve_model_path(str(weights))
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(FileNotFoundError, match=rf"could not load the tokenizer of model `{tmp_path}` from the folder"):
        load_tokenizer(str(tmp_path))


def test_arithmetic_second_operand_range():
    """b_range draws b from its own range (three-digit x two-digit); without it b shares a's range, as before."""
    from rlhf.data import arithmetic_problems

    train, held = arithmetic_problems(100, 999, ["*"], 50, 10, "Compute {a} {op} {b}.", seed=0, b_range=(10, 99))
    for r in train + held:
        assert 100 <= r["a"] <= 999 and 10 <= r["b"] <= 99 and r["answer"] == str(r["a"] * r["b"])
    assert not {(r["a"], r["b"]) for r in train} & {(r["a"], r["b"]) for r in held}
    same = arithmetic_problems(10, 99, ["+"], 20, 5, "{a}{op}{b}", seed=3)
    assert arithmetic_problems(10, 99, ["+"], 20, 5, "{a}{op}{b}", seed=3, b_range=(10, 99)) == same
