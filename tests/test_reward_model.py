"""Learned reward models: the Bradley–Terry loss by hand, training on the synthetic arithmetic preferences, scoring
through RewardModelScorer, GRPO with the reward model as its reward, and a 2-process `accelerate launch` run."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reward_models.bradley_terry import bradley_terry_loss, pairwise_accuracy
from reward_models.reward_model import RewardModelScorer, build_messages, encode_pair, pair_text
from reward_models.train_rm import build_model, load_pairs, synthetic_pairs, train
from reward_models.train_rm import load_config as load_rm_config
from rlhf.config import ConfigError, load_config
from rlhf.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
RM_RECIPE = REPO / "recipes" / "reward_model" / "rm_arithmetic_smollm2.yaml"
ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent))


def _rm_overrides(model: str, out: Path) -> list[str]:
    # Every rejected answer is also wrapped in words: the part of the signal a 2-layer random model learns in seconds.
    # Checking the sum itself is beyond it (held-out accuracy stays ~0.5 after 1,300 steps); that part is for real
    # models (the recipe keeps words_fraction 0.5).
    return [
        f"model.path={model}",
        f"output_dir={out}",
        "data.arithmetic.words_fraction=1.0",
        "data.arithmetic.num_train=512",
        "data.arithmetic.num_eval=200",
        "train.epochs=1",
        "train.batch_size=16",
        "train.micro_batch_size=8",
        "train.eval_every=16",
        "optim.lr=1e-3",
        "optim.warmup_steps=0",
    ]


# ---------------------------------------------------------------------------------------------------------------------
# the loss


def test_bradley_terry_loss_hand_values():
    one, zero = torch.tensor([1.0]), torch.tensor([0.0])
    assert bradley_terry_loss(one, zero).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)  # 0.31326
    assert bradley_terry_loss(one, zero).item() == pytest.approx(0.31326, abs=1e-5)
    assert bradley_terry_loss(one, zero, margin=1.0).item() == pytest.approx(math.log(2), abs=1e-6)
    assert bradley_terry_loss(zero, zero).item() == pytest.approx(math.log(2), abs=1e-6)
    # mean over pairs, a per-pair margin, [B, 1] heads squeezed
    rc, rr = torch.tensor([[2.0], [0.0]]), torch.tensor([[0.0], [1.0]])
    expected = (math.log(1 + math.exp(-1.5)) + math.log(1 + math.exp(1.0))) / 2
    assert bradley_terry_loss(rc, rr, margin=torch.tensor([0.5, 0.0])).item() == pytest.approx(expected, abs=1e-6)
    # finite far from zero, and the gradient pushes chosen up and rejected down
    assert bradley_terry_loss(torch.tensor([-1000.0]), torch.tensor([1000.0])).item() == pytest.approx(2000.0)
    c, r = torch.tensor([0.3], requires_grad=True), torch.tensor([0.1], requires_grad=True)
    bradley_terry_loss(c, r).backward()
    assert c.grad.item() < 0 < r.grad.item()
    with pytest.raises(ValueError):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))


def test_pairwise_accuracy_counts_ties_as_wrong():
    acc = pairwise_accuracy(torch.tensor([1.0, 0.0, 2.0, 5.0]), torch.tensor([0.0, 1.0, 2.0, 4.0]))
    assert acc.item() == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------------------------------
# data and text


def test_synthetic_pairs_are_seeded_disjoint_and_wrong():
    cfg = load_rm_config(RM_RECIPE, ["data.arithmetic.num_train=300", "data.arithmetic.num_eval=50"])
    train_pairs, eval_pairs = synthetic_pairs(cfg.data.arithmetic, seed=0)
    assert (train_pairs, eval_pairs) == synthetic_pairs(cfg.data.arithmetic, seed=0)
    assert len(train_pairs) == 300 and len(eval_pairs) == 50
    assert not {p["prompt"] for p in train_pairs} & {p["prompt"] for p in eval_pairs}
    for p in train_pairs + eval_pairs:
        a, b = (int(x) for x in p["prompt"].split(".")[0].removeprefix("Compute ").split(" + "))
        assert p["chosen"] == str(a + b)
        wrong = int("".join(ch for ch in p["rejected"] if ch.isdigit()))
        assert wrong != a + b and abs(wrong - (a + b)) <= 10
    wordy = sum(not p["rejected"].isdigit() for p in train_pairs) / len(train_pairs)
    assert 0.35 < wordy < 0.65  # words_fraction 0.5


def test_file_data_with_messages_and_held_out_fraction(tmp_path, tiny_model_dir):
    rows = [
        {
            "chosen": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "good"}],
            "rejected": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "bad"}],
        }
        for i in range(20)
    ]
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = load_rm_config(RM_RECIPE, [f"data.path={path}", "data.eval_fraction=0.25"])
    train_pairs, eval_pairs = load_pairs(cfg)
    assert len(train_pairs) == 15 and len(eval_pairs) == 5 and train_pairs[0]["prompt"] is None
    # a completion that already holds the user turn is the whole conversation: the prompt is not repeated
    assert build_messages("q0", rows[0]["chosen"]) == rows[0]["chosen"]
    assert build_messages("q0", "good") == rows[0]["chosen"]
    # full fine-tuning (lora.r=0) on fewer pairs than one batch: the batch wraps around, the run completes
    out = tmp_path / "full"
    over = [f"data.path={path}", "data.eval_fraction=0.25", f"model.path={tiny_model_dir}", f"output_dir={out}"]
    metrics = train(load_rm_config(RM_RECIPE, over + ["model.lora.r=0", "train.epochs=2", "train.batch_size=16"]))
    assert metrics["steps"] == 2 and metrics["num_train"] == 15 and metrics["num_eval"] == 5
    assert RewardModelScorer(path=str(out / "model"), device="cpu")(["q0"], ["good"])[0] == pytest.approx(
        RewardModelScorer(path=str(out / "model"), device="cpu")([None], [rows[0]["chosen"]])[0], abs=1e-5
    )


def test_text_is_the_chat_template_or_plain(tokenizer):
    text, templated = pair_text(tokenizer, "Compute 1 + 2.", "3")
    assert templated and "<|im_start|>user\nCompute 1 + 2.<|im_end|>" in text and "assistant\n3<|im_end|>" in text
    plain = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None
    assert pair_text(plain, "Compute 1 + 2.", "3") == ("Compute 1 + 2.\n3", False)
    full = encode_pair(tokenizer, "x " * 200, "3")
    cut = encode_pair(tokenizer, "x " * 200, "3", max_length=16)
    assert cut == full[-16:]  # the start of the prompt goes, the completion stays


def test_unknown_config_key_names_the_nearest():
    with pytest.raises(ConfigError, match="train.epochs"):
        load_rm_config(RM_RECIPE, ["train.epoch=2"])
    with pytest.raises(ConfigError, match="data.arithmetic.words_fraction"):
        load_rm_config(RM_RECIPE, ["data.arithmetic.words_fraction=2"])


# ---------------------------------------------------------------------------------------------------------------------
# training, scoring, GRPO


@pytest.fixture(scope="module")
def trained_rm(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "run"
    # one thread: a tiny model's ops are microseconds, and a second thread that must wait for a busy core costs ms each
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = train(load_rm_config(RM_RECIPE, _rm_overrides(tiny_model_dir, out)))
    finally:
        torch.set_num_threads(threads)
    return out, metrics


def test_training_reaches_held_out_pairwise_accuracy(trained_rm):
    out, metrics = trained_rm
    assert metrics["eval/accuracy"] >= 0.9, metrics
    saved = json.loads((out / "model" / "metrics.json").read_text())
    assert saved["eval/accuracy"] == metrics["eval/accuracy"] and saved["num_eval"] == 200
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in rows if "eval/accuracy" in r)
    assert first["step"] == 0 and first["eval/accuracy"] < metrics["eval/accuracy"]
    assert (out / "model" / "model.safetensors").is_file() and not (out / "model" / "adapter_config.json").exists()


def test_scorer_prefers_the_correct_answer(trained_rm):
    out, _ = trained_rm
    scorer = RewardModelScorer(path=str(out / "model"), batch_size=3, device="cpu")
    prompts = [f"Compute {a} + {b}. Reply with only the number." for a, b in [(12, 34), (55, 27), (90, 91)]]
    good = ["46", "82", "181"]
    bad = ["The answer is 47.", "I think it is 80.", "Sure! 171"]
    scores = scorer(prompts * 2, good + bad, answer=["46", "82", "181"] * 2)
    assert all(isinstance(s, float) for s in scores)
    assert all(g > b for g, b in zip(scores[:3], scores[3:])), scores
    # padding does not change a score: one at a time equals batched
    one = RewardModelScorer(path=str(out / "model"), batch_size=1, device="cpu")
    assert one(prompts * 2, good + bad) == pytest.approx(scores, abs=1e-4)
    fixed = RewardModelScorer(path=str(out / "model"), normalize="fixed", mean=1.0, std=2.0, device="cpu")
    assert fixed(prompts, good) == pytest.approx([(s - 1.0) / 2.0 for s in scores[:3]], abs=1e-4)
    batch = RewardModelScorer(path=str(out / "model"), normalize="batch", device="cpu")(prompts * 2, good + bad)
    assert sum(batch) == pytest.approx(0.0, abs=1e-4)
    assert scorer([], []) == []


def test_scorer_merges_a_peft_adapter(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    cfg = load_rm_config(RM_RECIPE, [f"model.path={tiny_model_dir}", "model.dtype=float32"])  # an exact comparison
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    peft_model = build_model(cfg.model, tok)
    with torch.no_grad():  # a trained-looking adapter: non-zero B, a moved head
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    peft_model.save_pretrained(tmp_path / "adapter")
    scorer = RewardModelScorer(path=tiny_model_dir, adapter=str(tmp_path / "adapter"), device="cpu", dtype="float32")
    prompts, completions = ["Compute 1 + 2.", "Compute 10 + 20."], ["3", "The answer is 31."]
    peft_model.eval()
    with torch.no_grad():
        want = [peft_model(input_ids=torch.tensor([encode_pair(tok, p, c)])).logits[0, 0].item() for p, c in
                zip(prompts, completions)]  # fmt: skip
    assert scorer(prompts, completions) == pytest.approx(want, abs=1e-4)


def test_grpo_with_the_reward_model_runs_two_steps(trained_rm, tiny_model_dir, tmp_path):
    model_dir = trained_rm[0] / "model"
    over = [
        f"model.path={tiny_model_dir}",
        f"output_dir={tmp_path / 'grpo'}",
        "model.dtype=float32",
        "train.max_steps=2",
        "train.prompts_per_step=2",
        "train.micro_batch_size=3",
        "rollout.num_generations=3",
        "rollout.max_new_tokens=6",
        "eval.every=0",
        "logging.report_to=[]",
        "logging.progress_bar=false",
        "optim.warmup_steps=0",
        f"rewards=[{{fn: 'reward_models.reward_model:RewardModelScorer', kwargs: {{path: '{model_dir}'}}}}]",
    ]
    trainer = Trainer(load_config(REPO / "recipes" / "grpo_arithmetic_smollm2.yaml", over))
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss/policy" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(math.isfinite(r["reward/mean"]) and r["reward/std"] > 0 for r in steps)
    assert (tmp_path / "grpo" / "adapter" / "adapter_model.safetensors").is_file()


def test_rm_grpo_recipe_parses():
    cfg = load_config(REPO / "recipes" / "grpo_arithmetic_rm_smollm2.yaml")
    assert cfg.rewards[0].fn == "reward_models.reward_model:RewardModelScorer"
    assert cfg.rewards[0].kwargs["path"] == "runs/rm_arithmetic_smollm2/model"


@pytest.mark.skipif(ACCELERATE is None, reason="accelerate CLI not installed")
def test_two_process_training(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [
        ACCELERATE, "launch", "--num_processes", "2", "--cpu", "-m", "reward_models.train_rm", str(RM_RECIPE),
        *_rm_overrides(tiny_model_dir, out), "data.arithmetic.num_train=64", "data.arithmetic.num_eval=21",
        "train.eval_every=0",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]  # one writer; 64 pairs / 16 per step
    saved = json.loads((out / "model" / "metrics.json").read_text())
    assert saved["num_eval"] == 21 and 0.0 <= saved["eval/accuracy"] <= 1.0
    assert RewardModelScorer(path=str(out / "model"), device="cpu")(["Compute 1 + 2."], ["3"])[0] == pytest.approx(
        RewardModelScorer(path=str(out / "model"), device="cpu", batch_size=1)(["Compute 1 + 2."], ["3"])[0]
    )
