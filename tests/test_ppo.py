"""PPO and its family: value loss, token rewards, KL control, value head / critic placement, TRPO's step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rlhf.advantages import gae, token_rewards
from rlhf.kl_control import KLController, RunningMoments
from rlhf.losses import clipped_value_loss, explained_variance
from rlhf.trpo import conjugate_gradient, trpo_step
from tests.conftest import REPO, tiny_run


def test_clipped_value_loss_hand_values():
    # token 1: V moves +0.5 from 1.0, clip 0.2 -> V_clip 1.2; R = 2: (1.5-2)^2 = .25 vs (1.2-2)^2 = .64 -> .64 (clipped)
    # token 2: V moves -0.1 (inside the clip) -> both 0.01 ... (0.9 - 1)^2 = .01
    # token 3: masked out
    v = torch.tensor([[1.5, 0.9, 7.0]])
    old = torch.tensor([[1.0, 1.0, 0.0]])
    ret = torch.tensor([[2.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, m = clipped_value_loss(v, old, ret, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.01) / 2)
    assert m["clipfrac"].item() == pytest.approx(0.5)
    unclipped, _ = clipped_value_loss(v, old, ret, mask, clip=0.0)
    assert unclipped.item() == pytest.approx(0.5 * (0.25 + 0.01) / 2)
    # global token count (other ranks / micro-batches) divides instead of the local one
    loss_g, _ = clipped_value_loss(v, old, ret, mask, clip=0.2, num_tokens=4)
    assert loss_g.item() == pytest.approx(0.5 * 0.65 / 4)


def test_clipped_value_loss_gradient_stops_when_clipped():
    v = torch.tensor([[1.5, 0.9]], requires_grad=True)
    loss, _ = clipped_value_loss(v, torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 1.0]]), torch.ones(1, 2), 0.2)
    loss.backward()
    # token 1 is on the clipped branch (constant in V): no gradient; token 2: d/dV 0.5 (V - R)^2 / 2 = (0.9 - 1) / 2
    assert v.grad[0].tolist() == pytest.approx([0.0, -0.05])


def test_explained_variance():
    ret = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert explained_variance(ret, ret, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(ret, 2.0), ret, mask) == pytest.approx(0.0)
    v = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # residual [0, 1, 2]: var 1 = var(returns) -> 0
    assert explained_variance(v, ret, mask) == pytest.approx(0.0)


def test_token_rewards_put_the_score_on_the_last_token_and_kl_everywhere():
    scores = torch.tensor([1.0, -2.0, 5.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 9.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    r = token_rewards(scores, kl, mask, kl_coef=0.5)
    expected = torch.tensor([[-0.05, -0.1, -0.15 + 1.0], [-0.25, 0.0 - 2.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(r, expected)


def test_gae_on_token_rewards_with_zero_values_and_gamma_one_is_reward_to_go():
    scores, mask = torch.tensor([1.0]), torch.ones(1, 3)
    kl = torch.tensor([[0.2, 0.4, 0.6]])
    r = token_rewards(scores, kl, mask, kl_coef=1.0)  # [-0.2, -0.4, 0.4]
    adv, ret = gae(r, torch.zeros(1, 3), mask, 1.0, 1.0)
    assert adv.tolist()[0] == pytest.approx([-0.2, 0.0, 0.4], abs=1e-6)
    assert torch.equal(adv, ret)


def test_adaptive_kl_controller_hand_values():
    fixed = KLController(0.1)
    fixed.update(kl=50.0, n_sequences=32)
    assert fixed.value == 0.1
    ctl = KLController(0.1, target=6.0, horizon=100)
    ctl.update(kl=7.2, n_sequences=10)  # error = 7.2/6 - 1 = 0.2 -> beta * (1 + 0.2 * 10/100)
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl.update(kl=60.0, n_sequences=10)  # error clipped to 0.2
    assert ctl.value == pytest.approx(0.1 * 1.02 * 1.02)
    ctl.update(kl=0.0, n_sequences=50)  # error clipped to -0.2 -> * 0.9
    assert ctl.value == pytest.approx(0.1 * 1.02 * 1.02 * 0.9)
    restored = KLController(0.1, 6.0, 100)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value


def test_running_moments_equal_numpy_over_all_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=n) for n in (5, 17, 1, 40)]
    rm = RunningMoments()
    for b in batches:
        rm.update(b.sum(), (b**2).sum(), len(b))
    everything = np.concatenate(batches)
    assert rm.mean == pytest.approx(everything.mean())
    assert rm.std == pytest.approx(everything.std(ddof=1))


def test_conjugate_gradient_solves_a_known_spd_system():
    A = torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]], dtype=torch.float64)
    b = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    x, residual = conjugate_gradient(lambda v: A @ v, b, iters=3)
    assert torch.allclose(x, torch.linalg.solve(A, b), atol=1e-10)
    assert residual < 1e-8


def _categorical_problem():
    """A softmax policy over 5 actions, theta = logits: surrogate, exact KL, exact Fisher."""
    torch.manual_seed(0)
    theta = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    old_p = torch.softmax(theta.detach(), 0)
    adv = torch.tensor([1.0, -0.5, 0.3, -1.0, 0.2], dtype=torch.float64)

    def surrogate():
        return (torch.softmax(theta, 0) * adv).sum()  # E_old[ratio * A] = sum_a pi(a) A(a)

    def kl():
        logp = torch.log_softmax(theta, 0)
        return (old_p * (old_p.log() - logp)).sum()

    fisher = torch.diag(old_p) - torch.outer(old_p, old_p)
    return theta, surrogate, kl, fisher


def test_trpo_step_stays_in_the_trust_region_and_improves_the_surrogate():
    theta, surrogate, kl, fisher = _categorical_problem()
    damping, delta = 1e-3, 0.01
    theta0 = theta.detach().clone()
    L0 = surrogate().item()
    (g,) = torch.autograd.grad(surrogate(), theta)
    (gk,) = torch.autograd.grad(kl(), theta, create_graph=True)

    def fvp(v):
        (hv,) = torch.autograd.grad(gk @ v, theta, retain_graph=True)
        return hv.detach() + damping * v

    @torch.no_grad()
    def evaluate():
        return surrogate().item(), kl().item()

    # the Hessian-vector product of the mean KL is the Fisher matrix
    v = torch.randn(5, dtype=torch.float64)
    assert torch.allclose(fvp(v) - damping * v, fisher @ v, atol=1e-10)
    res = trpo_step([theta], g, fvp, evaluate, L0, delta, cg_iters=20, backtrack_steps=10)
    assert res.accepted and res.kl <= delta and res.surrogate_gain > 0
    assert kl().item() == pytest.approx(res.kl)
    # the step is along the natural gradient (F + damping I)^-1 g
    natural = torch.linalg.solve(fisher + damping * torch.eye(5, dtype=torch.float64), g)
    step = theta.detach() - theta0
    cos = step @ natural / (step.norm() * natural.norm())
    assert cos.item() == pytest.approx(1.0, abs=1e-6)


def test_trpo_step_rejects_and_restores_when_nothing_improves():
    theta, surrogate, kl, _ = _categorical_problem()
    theta0 = theta.detach().clone()
    (g,) = torch.autograd.grad(surrogate(), theta)

    res = trpo_step([theta], g, lambda v: v, lambda: (-1.0, 0.0), surrogate_old=0.0, max_kl=0.01, backtrack_steps=3)
    assert not res.accepted and res.step_frac == 0.0
    assert torch.equal(theta.detach(), theta0)


# ---------------------------------------------------------------------------------------------------------------------
# where values are read, and the critic from a reward model


def _batch(tokenizer, n=2, C=4):
    torch.manual_seed(1)
    from rlhf.data import left_pad

    prompts = [tokenizer("Compute 12 + 30.")["input_ids"], tokenizer("Hi")["input_ids"]][:n]
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    comp = torch.randint(5, 100, (n, C))
    cmask = torch.ones(n, C, dtype=torch.long)
    if n > 1:
        cmask[1, 2:] = 0
    return ids, mask, comp * cmask, cmask


def test_value_head_reads_the_state_that_predicts_each_completion_token(tiny_model_dir, tokenizer):
    from rlhf.models import load_policy
    from rlhf.policy import Policy
    from rlhf.value import ValueHead

    model = load_policy(tiny_model_dir, "float32", lora_r=4)
    head = ValueHead(model.get_base_model().config.hidden_size)
    torch.nn.init.normal_(head.linear.weight)
    policy = Policy(model, head)
    ids, mask, comp, cmask = _batch(tokenizer)
    out = policy(ids, mask, comp, cmask, with_values=True)
    full = torch.cat([ids, comp], 1)
    am = torch.cat([mask, cmask], 1)
    from rlhf.logprobs import position_ids_from_mask

    hidden = model(
        input_ids=full, attention_mask=am, position_ids=position_ids_from_mask(am), output_hidden_states=True
    ).hidden_states[-1]
    P = ids.shape[1]
    for t in range(comp.shape[1]):
        expected = head(hidden[:, P - 1 + t]) * cmask[:, t]
        assert torch.allclose(out.values[:, t], expected, atol=1e-5), t
    assert out.values.dtype == torch.float32
    assert (out.values[1, 2:] == 0).all()


def test_critic_from_a_reward_model_starts_as_its_score_of_each_prefix(tiny_model_dir, tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from rlhf.value import load_critic

    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1, dtype=torch.float32)
    rm.config.pad_token_id = tokenizer.pad_token_id
    torch.nn.init.normal_(rm.score.weight)
    rm.save_pretrained(tmp_path / "rm")
    critic = load_critic(tiny_model_dir, "float32", lora_r=4, init_from=str(tmp_path / "rm"))
    ids, mask, comp, cmask = _batch(tokenizer, n=1)
    values = critic(ids, mask, comp, cmask)
    for t in range(comp.shape[1]):
        prefix = torch.cat([ids, comp[:, :t]], 1)  # V(s_t): the prompt and the completion before token t
        with torch.no_grad():
            score = rm(input_ids=prefix, attention_mask=torch.cat([mask, cmask[:, :t]], 1)).logits[0, 0]
        assert values[0, t].item() == pytest.approx(score.item(), abs=1e-4), t


def test_critic_init_from_a_wrong_directory_names_it(tiny_model_dir, tmp_path):
    from rlhf.value import load_critic

    with pytest.raises(ValueError, match="not a reward model directory"):
        load_critic(tiny_model_dir, "float32", lora_r=4, init_from=str(tmp_path / "nope"))


# ---------------------------------------------------------------------------------------------------------------------
# the trainer


def _run(tiny_model_dir, tmp_path, recipe: str, extra: list[str]):
    from rlhf.config import load_config
    from rlhf.trainer import Trainer

    over = [*tiny_run(tiny_model_dir, tmp_path), "logging.samples_every=0", "optim.warmup_steps=0", *extra]
    trainer = Trainer(load_config(REPO / "recipes" / recipe, over))
    return trainer


def _rows(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_ppo_metrics_and_adaptive_kl(tiny_model_dir, tmp_path):
    trainer = _run(
        tiny_model_dir,
        tmp_path,
        "ppo_arithmetic_smollm2.yaml",
        [
            "train.max_steps=3",
            "algorithm.beta=0.1",
            "algorithm.kl_target=1e-9",
            "algorithm.kl_horizon=10",
            "algorithm.kl_estimator=k3",
            "optim.lr=1e-2",
            "optim.schedule=constant",
        ],
    )
    trainer.train()
    rows = _rows(tmp_path)
    for key in ("loss/value", "value/explained_var", "value/mean", "policy/kl_coef", "loss/policy", "reward/mean"):
        assert all(key in r for r in rows), key
    coefs = [r["policy/kl_coef"] for r in rows]
    assert coefs[0] == pytest.approx(0.1)
    # step 1: the fresh adapter is the reference, KL = 0: error clipped to -0.2, 8 sequences over a horizon of 10
    assert rows[0]["policy/ref_kl"] == 0.0
    assert coefs[1] == pytest.approx(0.1 * (1 - 0.2 * 8 / 10))
    # step 2: the policy has moved, the KL exceeds the tiny target: error clipped to +0.2
    assert rows[1]["policy/ref_kl"] > 1e-9
    assert coefs[2] == pytest.approx(coefs[1] * (1 + 0.2 * 8 / 10))
    assert rows[0]["value/mean"] == 0.0  # the zero-initialised head
    assert rows[-1]["value/mean"] != 0.0  # ... has learned something
    assert all(np.isfinite(r["loss/value"]) for r in rows)


def test_critic_warmup_trains_only_the_value_model(tiny_model_dir, tmp_path):
    trainer = _run(
        tiny_model_dir,
        tmp_path,
        "ppo_critic_arithmetic_smollm2.yaml",
        [
            "train.max_steps=1",
            "value.warmup_steps=1",
            "algorithm.reward_norm=running",
            "algorithm.missing_eos_penalty=1",
        ],
    )
    policy = trainer.accelerator.unwrap_model(trainer.policy)
    lora0 = [p.detach().clone() for p in policy.policy_parameters()]
    value0 = [p.detach().clone() for p in policy.value_parameters()]
    trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(lora0, policy.policy_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(value0, policy.value_parameters()))
    assert _rows(tmp_path)[0]["value/warmup"] == 1.0
    assert trainer.reward_stats.count == 8


def test_ppo_target_kl_stops_the_remaining_minibatches(tiny_model_dir, tmp_path):
    trainer = _run(
        tiny_model_dir,
        tmp_path,
        "ppo_arithmetic_smollm2.yaml",
        ["train.max_steps=1", "algorithm.num_iterations=4", "algorithm.target_kl=1e-12", "optim.lr=1e-2"],
    )
    trainer.train()
    row = _rows(tmp_path)[0]
    assert row["policy/early_stopped"] == 1.0
    assert row["optim/updates"] == 2  # the first pass moves it, the second measures a KL above target and stops


def test_trpo_accepted_step_stays_in_the_trust_region(tiny_model_dir, tmp_path):
    trainer = _run(tiny_model_dir, tmp_path, "trpo_arithmetic_smollm2.yaml", ["train.max_steps=2"])
    policy = trainer.accelerator.unwrap_model(trainer.policy)
    lora0 = [p.detach().clone() for p in policy.policy_parameters()]
    trainer.train()
    rows = _rows(tmp_path)
    accepted = [r for r in rows if r["trpo/accepted"]]
    assert accepted, rows
    for r in accepted:
        assert 0 < r["trpo/kl"] <= trainer.cfg.algorithm.trpo.max_kl
        assert r["trpo/surrogate_gain"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(lora0, policy.policy_parameters()))
