import json

import pytest

from rlhf.data import DataError, PromptSampler, arithmetic_problems, build_prompt_set, left_pad, load_rows


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
