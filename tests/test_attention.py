"""model.attn_implementation: the policy's attention kernel is switchable; kernels agree in float32; a wrong name is
an error that names the key."""

import pytest
import torch
from conftest import tiny_run

from rlhf.config import load_config
from rlhf.models import load_policy, set_attention
from rlhf.policy import Policy

GRPO = "recipes/grpo_arithmetic_smollm2.yaml"


def test_eager_and_sdpa_give_the_same_logprobs_in_float32(tiny_model_dir):
    torch.manual_seed(0)
    policy = Policy(load_policy(tiny_model_dir, dtype="float32", lora_r=4))
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, 60, (4, 5), generator=g)
    mask = torch.ones_like(prompt)
    mask[0, :2] = 0  # left padding on one row
    completion = torch.randint(3, 60, (4, 6), generator=g)
    out = {}
    for impl in ("sdpa", "eager"):
        set_attention(policy.model, impl)
        assert policy.base.config._attn_implementation == impl
        with torch.no_grad():
            out[impl] = policy(prompt, mask, completion, torch.ones_like(completion), group_size=2).logprobs
    assert torch.allclose(out["sdpa"], out["eager"], atol=1e-5)


def test_a_run_uses_the_configured_kernel(tiny_model_dir, tmp_path):
    from rlhf.trainer import Trainer

    trainer = Trainer(
        load_config(GRPO, [*tiny_run(tiny_model_dir, tmp_path), "model.attn_implementation=eager", "train.max_steps=1"])
    )
    assert trainer.peft_model.get_base_model().config._attn_implementation == "eager"
    trainer.train()


def test_unknown_kernel_names_the_key(tiny_model_dir):
    model = load_policy(tiny_model_dir, dtype="float32", lora_r=4)
    with pytest.raises(ValueError, match="model.attn_implementation='no_such_kernel'"):
        set_attention(model, "no_such_kernel")
