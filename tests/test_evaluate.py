"""The evaluation CLI: pass@k / maj@k math against hand values, end-to-end runs on the tiny model, clear errors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_run as tiny_run_overrides

from rlhf.evaluate import k_values, load_model, main, maj_at_k, pass_at_k

REPO = Path(__file__).resolve().parents[1]
RESULT_KEYS = {
    "metrics",
    "mode",
    "model",
    "adapter",
    "dataset",
    "num_prompts",
    "reward",
    "answer_extractor",
    "config",
    "timing",
    "versions",
}


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 2, 1, 0.4),
        (5, 2, 2, 1 - math.comb(3, 2) / math.comb(5, 2)),  # 0.7
        (5, 0, 3, 0.0),
        (5, 4, 2, 1.0),  # n - c < k: every draw of 2 holds a correct one
        (5, 5, 1, 1.0),
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_binomials_and_stays_finite():
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1.0 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    assert 0.0 < pass_at_k(10_000, 3, 100) < 1.0  # C(10000, 100) overflows a float; the product does not
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_k_values():
    assert k_values(1) == [1]
    assert k_values(3) == [1, 2, 3]
    assert k_values(8) == [1, 2, 4, 8]
    assert k_values(12) == [1, 2, 4, 8, 12]


def test_maj_at_k_votes_ties_and_missing_answers():
    answers = ["3", "5", "5", None, "3", "3"]
    correct = [False, True, True, False, False, False]
    assert maj_at_k(answers, correct, 1) is False  # "3"
    assert maj_at_k(answers, correct, 3) is True  # "5" twice beats "3" once
    assert maj_at_k(answers, correct, 4) is True  # the unanswered sample does not vote
    assert maj_at_k(answers, correct, 5) is False  # 2 - 2 tie: "3" was seen first
    assert maj_at_k(answers, correct, 6) is False  # "3" three times
    assert maj_at_k([None, None], [True, True], 2) is False  # nobody answered
    assert maj_at_k(["7", "7"], [False, True], 2) is False  # the first sample with the majority answer decides


def _read(out: Path) -> tuple[dict, list[dict]]:
    results = json.loads((out / "results.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return results, samples


def _common(tiny_model_dir: str, out: Path) -> list[str]:
    return ["--model", tiny_model_dir, "--dtype", "float32", "--max-new-tokens", "6", "--output-dir", str(out)]


def test_greedy_end_to_end(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "greedy"
    assert main([*_common(tiny_model_dir, out), "--dataset", "arithmetic", "--limit", "6"]) == 0
    results, samples = _read(out)
    assert RESULT_KEYS <= set(results)
    assert results["mode"] == "greedy" and results["num_prompts"] == 6
    assert {"pass@1", "reward_mean", "num_prompts"} <= set(results["metrics"])
    assert results["config"]["limit"] == 6 and results["versions"]["torch"] == torch.__version__
    assert [s["index"] for s in samples] == list(range(6))
    for s in samples:
        assert {"prompt", "completion", "reward", "correct", "answer", "extracted"} <= set(s)
        assert s["prompt"].startswith("Compute ")
    accuracy = sum(s["correct"] for s in samples) / 6
    assert results["metrics"]["pass@1"] == pytest.approx(accuracy)
    assert "pass@1" in capsys.readouterr().out


def test_stop_strings_end_completions_as_in_training(tiny_model_dir, tmp_path):
    # the tiny model's greedy text, then the same run with a stop string taken from it (typed escaped, as in a
    # shell): each completion is the no-stop one cut within the token that completes the stop string's first occurrence
    plain = tmp_path / "plain"
    assert main([*_common(tiny_model_dir, plain), "--limit", "4"]) == 0
    before = [s["completion"] for s in _read(plain)[1]]
    stop = before[0][0]
    cut = tmp_path / "cut"
    assert main([*_common(tiny_model_dir, cut), "--limit", "4", "--stop", stop.encode("unicode_escape").decode()]) == 0
    results, samples = _read(cut)
    assert results["config"]["stop"] == [stop]
    after = [s["completion"] for s in samples]
    assert sum(map(len, after)) < sum(map(len, before))
    for b, a in zip(before, after):
        assert b.startswith(a)
        if stop in b:
            assert b.index(stop) < len(a) <= b.index(stop) + 16 and stop in a
        else:
            assert a == b


def test_stop_is_read_with_escapes_and_defaults_to_the_recipes(tiny_model_dir, tmp_path):
    from rlhf.evaluate import parse_args

    assert parse_args(["--stop", "\\n", "--stop", "é", "--output-dir", str(tmp_path)]).stop == ["\n", "é"]
    assert parse_args(["--output-dir", str(tmp_path)]).stop is None
    recipe = ["--recipe", str(REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"), "--limit", "2"]
    assert main([*_common(tiny_model_dir, tmp_path / "r"), *recipe, "--set", 'rollout.stop=["7"]']) == 0
    assert _read(tmp_path / "r")[0]["config"]["stop"] == ["7"]


def test_sampled_end_to_end(tiny_model_dir, tmp_path):
    # a reward that depends on the completion only, so some samples pass and some fail: pass@k and maj@k get real work
    reward = tmp_path / "parity.py"
    reward.write_text("def parity(prompts, completions, **_):\n    return [float(len(c) % 2) for c in completions]\n")
    out = tmp_path / "sampled"
    argv = [*_common(tiny_model_dir, out), "--limit", "6", "--n", "3", "--reward", f"{reward}:parity", "--seed", "1"]
    assert main(argv) == 0
    results, samples = _read(out)
    m = results["metrics"]
    assert results["mode"] == "sampled" and m["samples_per_prompt"] == 3
    assert {"pass@1", "pass@2", "pass@3", "maj@1", "maj@2", "maj@3", "reward_mean"} <= set(m)
    assert len(samples) == 6
    for s in samples:
        assert len(s["completions"]) == len(s["rewards"]) == len(s["correct"]) == 3
        assert s["correct"] == [r >= 1.0 for r in s["rewards"]] and s["num_correct"] == sum(s["correct"])
    for k in (1, 2, 3):
        assert m[f"pass@{k}"] == pytest.approx(sum(pass_at_k(3, s["num_correct"], k) for s in samples) / 6)
        assert m[f"maj@{k}"] == pytest.approx(sum(maj_at_k(s["extracted"], s["correct"], k) for s in samples) / 6)
    assert m["pass@1"] <= m["pass@2"] <= m["pass@3"]


def test_adapter_is_folded_in_as_in_training(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlhf.models import load_policy, merged_adapter

    policy = load_policy(tiny_model_dir, "float32", lora_r=4)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a fresh adapter is the identity; make it change the outputs
    policy.save_pretrained(tmp_path / "adapter")
    model, peft_model = load_model(tiny_model_dir, str(tmp_path / "adapter"), "float32")
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter")
    base, no_adapter = load_model(tiny_model_dir, None, "float32")
    assert no_adapter is None
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    with torch.no_grad():
        with merged_adapter(peft_model):
            got = model(ids).logits
        want, plain = reference(ids).logits, base(ids).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)

    out = tmp_path / "with-adapter"
    assert main([*_common(tiny_model_dir, out), "--adapter", str(tmp_path / "adapter"), "--limit", "2"]) == 0
    results, samples = _read(out)
    assert results["adapter"] == str(tmp_path / "adapter") and len(samples) == 2


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def question_file(tmp_path) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"{i} + 1?", "answer": str(i + 1)}) for i in range(3)))
    return path


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "error: prompt column 'prompt' not in the dataset (columns: answer, question)"),
        (["--prompt-column", "question", "--answer-column", "gold"], "error: answer column 'gold' not in the dataset"),
        (["--prompt-column", "question", "--reward", "no_such_pkg.mod:fn"], "error: reward 'no_such_pkg.mod:fn'"),
    ],
)
def test_user_errors_exit_2(tiny_model_dir, tmp_path, question_file, capsys, extra, message):
    code = main([*_common(tiny_model_dir, tmp_path / "out"), "--dataset", str(question_file), *extra])
    assert code == 2
    assert _one_error_line(capsys.readouterr().err).startswith(message)
    assert not (tmp_path / "out" / "results.json").exists()


def test_missing_file_exit_2(tiny_model_dir, tmp_path, capsys):
    assert main([*_common(tiny_model_dir, tmp_path / "out"), "--dataset", str(tmp_path / "nope.jsonl")]) == 2
    assert "not found" in _one_error_line(capsys.readouterr().err)


def test_script_reports_missing_column(tiny_model_dir, tmp_path, question_file):
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--model", tiny_model_dir]
        + ["--dataset", str(question_file), "--output-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "prompt column 'prompt' not in the dataset" in _one_error_line(proc.stderr)


def test_training_evaluation_stops_where_rollouts_do(tiny_model_dir, tmp_path, monkeypatch):
    import rlhf.trainer
    from rlhf.config import load_config
    from rlhf.trainer import Trainer

    seen = []
    real = rlhf.trainer.greedy_eval
    monkeypatch.setattr(rlhf.trainer, "greedy_eval", lambda *a, **kw: seen.append(kw["stop"]) or real(*a, **kw))
    recipe = REPO / "recipes" / "grpo_arithmetic_smollm2.yaml"
    over = [
        *tiny_run_overrides(tiny_model_dir, tmp_path),
        "eval.every=1",
        "eval.num_samples=2",
        'rollout.stop=["\\n", "."]',
    ]
    metrics = Trainer(load_config(recipe, over)).evaluate(None)
    assert seen == [["\n", "."]] and metrics["eval/num_samples"] == 2


def test_recipe_evaluation_reproduces_the_runs_last_accuracy(tiny_model_dir, tmp_path):
    """With --recipe, the model, its dtype and its attention kernel default to the recipe's, as the run used them, so
    the run's final adapter scores what the run's last evaluation logged."""
    from rlhf.config import load_config
    from rlhf.trainer import Trainer

    recipe = REPO / "recipes" / "demo_arithmetic_smollm2.yaml"
    run = tmp_path / "run"
    over = [*tiny_run_overrides(tiny_model_dir, run), "eval.every=2", "eval.num_samples=6", "train.max_steps=2"]
    over += ["algorithm.dynamic_sampling=false", "algorithm.draw_prompts=0", "model.attn_implementation=eager"]
    Trainer(load_config(recipe, over)).train()
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in logged if "eval/reward_mean" in r][-1]
    out = tmp_path / "eval"
    argv = ["--recipe", str(recipe), "--adapter", str(run / "adapter"), "--output-dir", str(out), "--set", *over]
    assert main(argv) == 0
    results, _ = _read(out)
    c = results["config"]
    assert (c["model"], c["dtype"], c["attn_implementation"]) == (tiny_model_dir, "float32", "eager")
    assert results["metrics"]["reward_mean"] == pytest.approx(last["eval/reward_mean"], abs=1e-6)
