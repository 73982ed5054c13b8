import torch
from transformers import AutoModelForCausalLM

from rlhf.data import left_pad
from rlhf.merge import main as merge_main
from rlhf.models import load_policy
from rlhf.rollout import SamplingParams, generate_batched


def test_merged_model_generates_what_the_adapter_model_generates(tiny_model_dir, tokenizer, tmp_path):
    policy = load_policy(tiny_model_dir, dtype="float32", lora_r=4)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    policy.save_pretrained(tmp_path / "adapter")
    assert (
        merge_main(
            ["--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "merged"), "--model", tiny_model_dir]
        )
        == 0
    )
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    ids = [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True)
        for t in ["Compute 12 + 30.", "hello there"]
    ]
    ids = [i["input_ids"] if hasattr(i, "keys") else i for i in ids]
    prompt_ids, mask = left_pad(ids, tokenizer.pad_token_id)
    params = SamplingParams(max_new_tokens=10, greedy=True)
    a = generate_batched(policy.get_base_model(), tokenizer, prompt_ids, mask, 1, params)
    b = generate_batched(merged, tokenizer, prompt_ids, mask, 1, params)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert a.texts == b.texts


def test_merge_rejects_a_non_adapter_directory(tmp_path, capsys):
    assert merge_main(["--adapter", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a PEFT adapter directory" in capsys.readouterr().err
