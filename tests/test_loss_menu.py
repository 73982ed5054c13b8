"""Hand-derived values for the policy-loss variants, the off-policy corrections and the dynamic-sampling filter."""

import math

import pytest
import torch

from rlhf.losses import aggregate, cispo_loss, clipped_pg_loss, entropy_bonus, sapo_loss
from rlhf.offpolicy import distillation_advantages, rollout_mismatch, tis_weights
from rlhf.sampling_filters import informative_groups

F64 = torch.float64


def _with_ratios(ratios, old=-1.0):
    """(logprobs requiring grad, old_logprobs) whose per-token ratio is `ratios` ([B, T] nested lists)."""
    old_t = torch.full((len(ratios), len(ratios[0])), old, dtype=F64)
    lp = (old_t + torch.log(torch.tensor(ratios, dtype=F64))).requires_grad_(True)
    return lp, old_t


# ---- every loss reports the shared metrics ----


@pytest.mark.parametrize("fn", [clipped_pg_loss, cispo_loss, sapo_loss])
def test_every_policy_loss_has_the_shared_signature_and_metrics(fn):
    lp, old = _with_ratios([[1.1, 0.9, 1.0]])
    adv, mask = torch.tensor([[1.0, -1.0, 0.5]], dtype=F64), torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)
    loss, m = fn(lp, old, adv, mask, agg="seq-mean-token-sum-norm", num_tokens=None, max_len=4, num_seqs=2)
    assert loss.dim() == 0 and loss.requires_grad
    assert {"clipfrac", "approx_kl"} <= set(m)
    assert all(not v.requires_grad and v.dim() == 0 for v in m.values())
    # approx_kl = mean over the 2 masked tokens of 0.5 * (log r)^2
    torch.testing.assert_close(
        m["approx_kl"], (0.5 * (math.log(1.1) ** 2 + math.log(0.9) ** 2) / 2) * torch.ones((), dtype=F64)
    )


# ---- aggregation and entropy ----


def test_seq_mean_token_sum_aggregation():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # each sequence's token sum (6 and 9), mean over the 2 sequences
    assert aggregate(x, mask, "seq-mean-token-sum").item() == pytest.approx(7.5)
    # a global sequence count over ranks / micro-batches replaces the local 2
    assert aggregate(x, mask, "seq-mean-token-sum", num_seqs=5).item() == pytest.approx(15 / 5)


def test_entropy_bonus_is_the_aggregated_entropy():
    ent = torch.tensor([[0.5, 1.5, 9.0], [2.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    bonus = entropy_bonus(ent, mask)  # token-mean over the 3 masked tokens: (0.5 + 1.5 + 2) / 3
    assert bonus.item() == pytest.approx(4.0 / 3)
    bonus.backward()
    torch.testing.assert_close(ent.grad, mask / 3)
    assert entropy_bonus(ent, mask, "seq-mean-token-mean").item() == pytest.approx((1.0 + 2.0) / 2)
    assert entropy_bonus(ent, mask, "seq-mean-token-sum-norm", max_len=4, num_seqs=1).item() == pytest.approx(1.0)


# ---- dual-clip ----


def test_dual_clip_bounds_negative_advantage_tokens():
    # c = 3, clip 0.2. Token 1: r = 4, A = -1: PPO loss max(-rA, -clip(r)A) = max(4, 1.2) = 4 > c * |A| = 3 -> 3,
    #   constant, no gradient. Token 2: r = 2, A = -1: max(2, 1.2) = 2 < 3 -> 2, gradient d(-rA)/dlogp = -rA = 2.
    # Token 3: r = 4, A = +1: -min(4, 1.2) = -1.2 (dual-clip only touches A < 0), clipped -> no gradient.
    lp, old = _with_ratios([[4.0, 2.0, 4.0]])
    adv, mask = torch.tensor([[-1.0, -1.0, 1.0]], dtype=F64), torch.ones(1, 3, dtype=F64)
    loss, m = clipped_pg_loss(lp, old, adv, mask, clip_ratio_c=3.0)
    assert loss.item() == pytest.approx((3.0 + 2.0 - 1.2) / 3)
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0, 2.0 / 3, 0.0]], dtype=F64))
    assert m["dualclip_frac"].item() == pytest.approx(1 / 3)
    assert m["clipfrac"].item() == pytest.approx(1 / 3)  # only token 3's clipped branch is the min
    # without the knob token 1 costs 4 and there is no dualclip_frac
    loss, m = clipped_pg_loss(lp, old, adv, mask)
    assert loss.item() == pytest.approx((4.0 + 2.0 - 1.2) / 3) and "dualclip_frac" not in m
    with pytest.raises(ValueError, match="clip_ratio_c"):
        clipped_pg_loss(lp, old, adv, mask, clip_ratio_c=1.0)


# ---- GSPO ----


def _gspo_batch(adv_seq1=(1.0, 1.0, 1.0)):
    # seq 1: log ratios 0.3, -0.3, 0 -> sequence mean 0, s_1 = 1; token 1 alone has r = e^0.3 = 1.35
    # seq 2: log ratios 0.01, 0.01 and a padding token (log ratio 5, masked out) -> s_2 = e^0.01 = 1.01005
    old = torch.full((2, 3), -1.0, dtype=F64)
    lp = (old + torch.tensor([[0.3, -0.3, 0.0], [0.01, 0.01, 5.0]], dtype=F64)).requires_grad_(True)
    adv = torch.tensor([list(adv_seq1), [1.0, 1.0, 1.0]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=F64)
    return lp, old, adv, mask


def test_gspo_sequence_clipping_differs_from_token_clipping():
    lp, old, adv, mask = _gspo_batch()
    # token level, clip 0.2: token 1 (r = 1.35 > 1.2, A > 0) is clipped; token-mean over 5 tokens
    e = math.exp
    loss, m = clipped_pg_loss(lp, old, adv, mask, 0.2, 0.2)
    assert loss.item() == pytest.approx(-(1.2 + e(-0.3) + 1.0 + 2 * e(0.01)) / 5)
    assert m["clipfrac"].item() == pytest.approx(1 / 5)
    # sequence level, same clip 0.2: s_1 = 1 and s_2 = 1.01 are both inside -> nothing is clipped
    loss, m = clipped_pg_loss(lp, old, adv, mask, 0.2, 0.2, importance_sampling_level="sequence")
    assert loss.item() == pytest.approx(-(3 * 1.0 + 2 * e(0.01)) / 5)
    assert m["clipfrac"].item() == 0.0
    # GSPO's range (3e-4, 4e-4) with seq-mean-token-mean: s_2 is clipped to 1.0004, s_1 = 1 is not
    kw = dict(agg="seq-mean-token-mean", importance_sampling_level="sequence")
    loss, m = clipped_pg_loss(lp, old, adv, mask, 3e-4, 4e-4, **kw)
    assert loss.item() == pytest.approx((-1.0 - 1.0004) / 2)
    assert m["clipfrac"].item() == pytest.approx(2 / 5)  # seq 2's 2 tokens
    assert m["ratio_mean"].item() == pytest.approx((3 * 1.0 + 2 * e(0.01)) / 5)
    loss.backward()
    # seq 1: d(-s_1 * A)/dlogp_t = -s_1 / |y_1| = -1/3, halved by the mean over 2 sequences; seq 2 clipped -> 0
    torch.testing.assert_close(lp.grad, torch.tensor([[-1 / 6] * 3, [0.0, 0.0, 0.0]], dtype=F64))


def test_gspo_token_has_the_sequence_value_and_per_token_gradients():
    kw = dict(agg="seq-mean-token-mean", clip_low=3e-4, clip_high=4e-4)
    # a sequence advantage (constant over tokens): GSPO-token = GSPO in value and gradient
    lp_s, old, adv, mask = _gspo_batch()
    lp_t = lp_s.detach().clone().requires_grad_(True)
    seq, _ = clipped_pg_loss(lp_s, old, adv, mask, importance_sampling_level="sequence", **kw)
    tok, _ = clipped_pg_loss(lp_t, old, adv, mask, importance_sampling_level="sequence-token", **kw)
    assert torch.equal(seq, tok)
    seq.backward()
    tok.backward()
    torch.testing.assert_close(lp_s.grad, lp_t.grad)
    # per-token advantages 1, 2, 3 in seq 1: the values still agree, the gradients differ.
    # GSPO-token: d/dlogp_t of (1/2)(1/3) sum_t -s_1,t A_t, with d s_1,t / d logp_t = s_1 = 1 -> -A_t / 6
    # GSPO: (1/2)(1/3) sum_t -s_1 A_t = -s_1 * 6 / 6, d s_1 / d logp_t = s_1 / 3 -> -(6 / 6) / 3 = -1/3 each
    lp_s, old, adv, mask = _gspo_batch(adv_seq1=(1.0, 2.0, 3.0))
    lp_t = lp_s.detach().clone().requires_grad_(True)
    seq, _ = clipped_pg_loss(lp_s, old, adv, mask, importance_sampling_level="sequence", **kw)
    tok, _ = clipped_pg_loss(lp_t, old, adv, mask, importance_sampling_level="sequence-token", **kw)
    assert torch.equal(seq, tok)
    seq.backward()
    tok.backward()
    s1 = math.exp(((lp_s - old).detach()[0]).mean().item())
    torch.testing.assert_close(lp_t.grad[0], torch.tensor([-1 / 6, -2 / 6, -3 / 6], dtype=F64) * s1)
    torch.testing.assert_close(lp_s.grad[0], torch.full((3,), -1 / 3, dtype=F64) * s1)
    torch.testing.assert_close(lp_t.grad[1], torch.zeros(3, dtype=F64))  # seq 2 clipped in both
    with pytest.raises(ValueError, match="importance_sampling_level"):
        clipped_pg_loss(lp_s, old, adv, mask, importance_sampling_level="seq")


# ---- CISPO ----


def test_cispo_gradient_is_reinforce_times_the_clipped_weight():
    # ratios 1.5, 0.5, 1 with A = 2, -1, 1. clip_high 0.28, no lower bound: w = 1.28, 0.5, 1
    lp, old = _with_ratios([[1.5, 0.5, 1.0]])
    adv, mask = torch.tensor([[2.0, -1.0, 1.0]], dtype=F64), torch.ones(1, 3, dtype=F64)
    w = torch.tensor([[1.28, 0.5, 1.0]], dtype=F64)
    loss, m = cispo_loss(lp, old, adv, mask, clip_high=0.28)
    assert loss.item() == pytest.approx((-(w * adv * lp).sum() / 3).item())
    loss.backward()
    reinforce_lp = lp.detach().clone().requires_grad_(True)
    (-(adv * reinforce_lp).sum() / 3).backward()  # REINFORCE: -A * grad logp, token-mean
    torch.testing.assert_close(lp.grad, reinforce_lp.grad * w)
    torch.testing.assert_close(lp.grad, torch.tensor([[-2.56 / 3, 0.5 / 3, -1 / 3]], dtype=F64))
    assert m["clipfrac"].item() == pytest.approx(1 / 3)
    # with a lower bound 1 - 0.2 the 0.5 becomes 0.8, and 2 of 3 weights are clipped
    lp.grad = None
    loss, m = cispo_loss(lp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-2.56 / 3, 0.8 / 3, -1 / 3]], dtype=F64))
    assert m["clipfrac"].item() == pytest.approx(2 / 3)


# ---- SAPO ----


def test_sapo_soft_gate_value_and_gradient():
    # f(r) = sigma(tau (r - 1)) * 4 / tau; loss = -f(r) A; d loss / d logp = -4 sigma (1 - sigma) r A
    ratios, advs, taus = [1.0, 1.5, 0.7], [1.0, 1.0, -1.0], [1.0, 1.0, 1.05]  # tau_neg for A < 0
    lp, old = _with_ratios([ratios])
    adv, mask = torch.tensor([advs], dtype=F64), torch.ones(1, 3, dtype=F64)
    loss, m = sapo_loss(lp, old, adv, mask, tau_pos=1.0, tau_neg=1.05)
    sig = [1 / (1 + math.exp(-t * (r - 1))) for r, t in zip(ratios, taus)]
    value = sum(-s * 4 / t * a for s, t, a in zip(sig, taus, advs)) / 3
    assert loss.item() == pytest.approx(value)
    loss.backward()
    grad = [-4 * s * (1 - s) * r * a / 3 for s, r, a in zip(sig, ratios, advs)]
    torch.testing.assert_close(lp.grad, torch.tensor([grad], dtype=F64))
    assert lp.grad[0, 0].item() == pytest.approx(-1 / 3)  # on-policy: the plain policy gradient -A / N
    assert m["clipfrac"].item() == 0.0
    assert m["gate_weight_mean"].item() == pytest.approx(sum(4 * s * (1 - s) for s in sig) / 3)


# ---- off-policy correction ----


def _sampler_batch():
    # old - behaviour: seq 1: log 0.5, log 3, 0; seq 2: log 1.5 then a masked token; seq 3: no masked token
    gaps = torch.tensor([[math.log(0.5), math.log(3.0), 0.0], [math.log(1.5), 7.0, 0.0], [1.0, 1.0, 1.0]])
    behaviour = torch.full((3, 3), -2.0)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    return behaviour + gaps, behaviour, mask


def _k3(r):
    return (r - 1) - math.log(r)


def test_tis_weights_truncate_and_zero_off_mask():
    old, behaviour, mask = _sampler_batch()
    w, m = tis_weights(old, behaviour, mask, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[0.5, 2.0, 1.0], [1.5, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert not w.requires_grad
    assert m["tis/weight_mean"].item() == pytest.approx((0.5 + 2.0 + 1.0 + 1.5) / 4)
    assert m["tis/capped_frac"].item() == pytest.approx(1 / 4)  # the 3 -> 2
    assert m["tis/seq_masked_frac"].item() == 0.0


def test_tis_sequence_masking_by_mean_k3():
    old, behaviour, mask = _sampler_batch()
    # seq 1 mean k3 = (k3(0.5) + k3(3) + 0) / 3 = (0.193 + 0.901) / 3 = 0.365; seq 2: k3(1.5) = 0.095
    seq1, seq2 = (_k3(0.5) + _k3(3.0)) / 3, _k3(1.5)
    assert seq2 < 0.3 < seq1
    w, m = tis_weights(old, behaviour, mask, cap=2.0, seq_mask_threshold=0.3)
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert m["tis/weight_mean"].item() == pytest.approx(1.5 / 4)
    assert m["tis/seq_masked_frac"].item() == pytest.approx(1 / 2)  # of the 2 sequences that have tokens
    w, m = tis_weights(old, behaviour, mask, cap=2.0, seq_mask_threshold=0.05)  # both sequences dropped
    assert w.abs().sum().item() == 0.0 and m["tis/seq_masked_frac"].item() == 1.0


def test_rollout_mismatch_hand_values():
    old, behaviour, mask = _sampler_batch()
    m = rollout_mismatch(old, behaviour, mask)
    gaps = [math.log(2.0), math.log(3.0), 0.0, math.log(1.5)]  # |old - behaviour| on the 4 masked tokens
    assert m["rollout/mismatch_abs_mean"].item() == pytest.approx(sum(gaps) / 4)
    assert m["rollout/mismatch_abs_max"].item() == pytest.approx(math.log(3.0))  # the masked 7.0 does not count
    assert m["rollout/mismatch_kl"].item() == pytest.approx((_k3(0.5) + _k3(3.0) + 0.0 + _k3(1.5)) / 4)
    empty = rollout_mismatch(old, behaviour, torch.zeros(3, 3))
    assert all(v.item() == 0.0 for v in empty.values())


def test_distillation_advantages_are_minus_the_reverse_kl_sample():
    student = torch.log(torch.tensor([[0.5, 0.25, 0.1]])).requires_grad_(True)
    teacher = torch.log(torch.tensor([[0.25, 0.5, 0.9]]))
    adv = distillation_advantages(student, teacher, torch.tensor([[1.0, 1.0, 0.0]]))
    # token 1: the student is more confident than the teacher -> -(log .5 - log .25) = -log 2; token 2: +log 2
    torch.testing.assert_close(adv, torch.tensor([[-math.log(2.0), math.log(2.0), 0.0]]))
    assert not adv.requires_grad


# ---- dynamic sampling ----


def test_informative_groups_compare_rewards_with_the_first():
    scores = torch.tensor([1.0, 1.0 + 1e-9, 1.0, 1.0, 1.0, 0.0], dtype=F64)
    assert informative_groups(scores, 3).tolist() == [False, True]
    # a group whose mean equals its first reward still varies: kept
    assert informative_groups(torch.tensor([0.5, 0.0, 1.0]), 3).tolist() == [True]
    # absolute tolerance below |r_0| = 1, relative above it
    assert informative_groups(torch.tensor([0.0, 1e-7, 0.0, 1e-3]), 2).tolist() == [False, True]
    assert informative_groups(torch.tensor([1000.0, 1000.0005, 1000.0, 1000.01], dtype=F64), 2).tolist() == [
        False,
        True,
    ]
    # tol = 0: exact equality only
    assert informative_groups(torch.tensor([1.0, 1.0 + 1e-9], dtype=F64), 2, tol=0.0).tolist() == [True]
    # integer rewards; a group of one is never informative
    assert informative_groups(torch.tensor([1, 1, 1, 0]), 2).tolist() == [False, True]
    assert informative_groups(torch.tensor([1.0, 0.0]), 1).tolist() == [False, False]


def test_informative_groups_drop_non_finite_groups_and_check_shapes():
    nan, inf = math.nan, math.inf
    scores = torch.tensor([nan, 1.0, 0.0, 1.0, nan, 1.0, inf, inf, inf, 1.0, 0.0, -inf, 0.0, 1.0, 0.0])
    assert informative_groups(scores, 3).tolist() == [False, False, False, False, True]
    with pytest.raises(ValueError, match="multiple of group_size"):
        informative_groups(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="multiple of group_size"):
        informative_groups(torch.zeros(2, 2), 2)
    with pytest.raises(ValueError, match="group_size"):
        informative_groups(torch.zeros(4), 0)
