"""model.lora.compute_dtype: the adapters' matmuls in the base's dtype give the float32 path's numbers to bfloat16
precision, gradients reach the float32 adapter weights, and nothing changes on a float32 base."""

import pytest
import torch

from rlhf.models import load_policy, lora_in_base_dtype
from rlhf.policy import Policy


def _policy(tiny_model_dir: str, dtype: str, lora_in_base: bool) -> Policy:
    torch.manual_seed(0)
    model = load_policy(tiny_model_dir, dtype=dtype, lora_r=4, lora_alpha=8.0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # a trained-looking adapter (B starts at zero, which would hide any difference)
            p.data.normal_(0, 0.05)
    return Policy(model, lora_in_base=lora_in_base)


def _batch():
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, 60, (4, 5), generator=g)
    completion = torch.randint(3, 60, (4, 6), generator=g)
    return prompt, torch.ones_like(prompt), completion, torch.ones_like(completion)


def _logprobs_and_grads(policy: Policy):
    policy.zero_grad()
    lp = policy(*_batch()).logprobs
    lp.sum().backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}
    return lp.detach(), grads


def test_bfloat16_base_matches_the_float32_adapter_path(tiny_model_dir):
    lp32, g32 = _logprobs_and_grads(_policy(tiny_model_dir, "bfloat16", lora_in_base=False))
    lp16, g16 = _logprobs_and_grads(_policy(tiny_model_dir, "bfloat16", lora_in_base=True))
    assert (lp16 - lp32).abs().max() < 0.05  # bfloat16 rounding of the adapter product only
    assert (lp16 - lp32).abs().max() > 0  # the path did change
    for name, g in g32.items():
        assert g16[name].dtype == torch.float32, name
        cos = torch.nn.functional.cosine_similarity(g16[name].flatten(), g.flatten(), dim=0)
        assert cos > 0.99, (name, float(cos))


def test_float32_base_is_unchanged(tiny_model_dir):
    lp_a, g_a = _logprobs_and_grads(_policy(tiny_model_dir, "float32", lora_in_base=False))
    lp_b, g_b = _logprobs_and_grads(_policy(tiny_model_dir, "float32", lora_in_base=True))
    assert torch.equal(lp_a, lp_b)
    assert all(torch.equal(g_a[n], g_b[n]) for n in g_a)


def test_context_restores_peft_casting_and_keeps_adapters_float32(tiny_model_dir):
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = _policy(tiny_model_dir, "bfloat16", lora_in_base=True).model
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    with lora_in_base_dtype(model):
        assert not any(m.cast_input_dtype_enabled for m in layers)
        assert torch.is_autocast_enabled("cpu")
    assert all(m.cast_input_dtype_enabled for m in layers)
    assert not torch.is_autocast_enabled("cpu")
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}


@pytest.mark.parametrize("value", ["base", "float32"])
def test_config_accepts_both(value):
    from rlhf.config import load_config

    cfg = load_config("recipes/grpo_arithmetic_smollm2.yaml", [f"model.lora.compute_dtype={value}"])
    assert cfg.model.lora.compute_dtype == value
