import math

import pytest
import torch

from rlhf.losses import aggregate, clipped_pg_loss, kl_penalty


def test_kl_estimators_hand_values():
    # logprobs = log 0.5, ref = log 0.25 -> log r = log(0.25 / 0.5) = -log 2
    lp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    log2 = math.log(2.0)
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(log2)  # -log r
    assert kl_penalty(lp, ref, "k2").item() == pytest.approx(0.5 * log2**2)  # (log r)^2 / 2
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx((0.5 - 1.0) + log2)  # (r - 1) - log r = -0.5 + 0.6931
    # all three are 0 when the policies agree
    for kind in ("k1", "k2", "k3"):
        assert kl_penalty(lp, lp, kind).abs().item() == 0.0
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(lp, ref, "k4")


def test_k3_is_unbiased_for_kl():
    # E_{x~p}[k3] = KL(p || q) for two categorical distributions
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.3, 0.3, 0.4])
    exact = (p * (p / q).log()).sum()
    per_token = kl_penalty(p.log()[None], q.log()[None], "k3")[0]
    torch.testing.assert_close((p * per_token).sum(), exact)
    torch.testing.assert_close((p * kl_penalty(p.log()[None], q.log()[None], "k1")[0]).sum(), exact)


def _batch():
    # 2 sequences x 3 tokens; the second has 1 padding token
    lp = torch.log(torch.tensor([[0.6, 0.5, 0.2], [0.3, 0.9, 0.5]]))
    old = torch.log(torch.tensor([[0.5, 0.5, 0.2], [0.5, 0.5, 0.5]]))
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    return lp, old, adv, mask


def test_clipped_pg_loss_each_aggregation_by_hand():
    lp, old, adv, mask = _batch()
    # ratios: seq 1: 1.2, 1.0, 1.0 (A = +1): min(r, clip(r, 0.8, 1.2)) = 1.2, 1, 1 -> losses -1.2, -1, -1
    #         seq 2: 0.6, 1.8 (A = -1): min(-r, -clip(r)) -> min(-0.6, -0.8) = -0.8; min(-1.8, -1.2) = -1.8
    #         -> losses +0.8, +1.8
    per_tok = [[-1.2, -1.0, -1.0], [0.8, 1.8]]
    loss, m = clipped_pg_loss(lp, old, adv, mask, 0.2, 0.2, "token-mean")
    assert loss.item() == pytest.approx(sum(sum(s) for s in per_tok) / 5)  # 5 valid tokens: -0.6 / 5 = -0.12
    loss, _ = clipped_pg_loss(lp, old, adv, mask, 0.2, 0.2, "seq-mean-token-mean")
    assert loss.item() == pytest.approx(((-3.2 / 3) + (2.6 / 2)) / 2)
    loss, _ = clipped_pg_loss(lp, old, adv, mask, 0.2, 0.2, "seq-mean-token-sum-norm", max_len=4)
    assert loss.item() == pytest.approx(((-3.2 / 4) + (2.6 / 4)) / 2)
    # clipped tokens: seq 2 token 1 (0.6 < 0.8 with A < 0: the clipped term -0.8 is smaller) -> 1 of 5
    assert m["clipfrac"].item() == pytest.approx(1 / 5)


def test_token_mean_with_global_count():
    lp, old, adv, mask = _batch()
    loss, _ = clipped_pg_loss(lp, old, adv, mask, agg="token-mean", num_tokens=10)
    assert loss.item() == pytest.approx(-0.6 / 10)  # the same sum, divided by a count over ranks / micro-batches


def test_clip_higher_asymmetric():
    # ratio 1.25 with A > 0: clipped at 1.2 when clip_high = 0.2, not clipped when clip_high = 0.28 (DAPO)
    lp, old = torch.log(torch.tensor([[0.5]])), torch.log(torch.tensor([[0.4]]))
    adv, mask = torch.ones(1, 1), torch.ones(1, 1)
    assert clipped_pg_loss(lp, old, adv, mask, 0.2, 0.2)[0].item() == pytest.approx(-1.2)
    assert clipped_pg_loss(lp, old, adv, mask, 0.2, 0.28)[0].item() == pytest.approx(-1.25)


def test_gradient_zero_where_clip_active_and_ratio_times_adv_where_not():
    # d/dlp of -r * A = -r * A (since dr/dlp = r). Token 1: r = 1.1 inside the clip, A = 2 -> grad -2.2 / 2 tokens.
    # Token 2: r = 1.5 > 1.2 with A = 2: the clipped branch is the min and is constant -> grad 0.
    # Token 3: r = 0.5 < 0.8 with A = 2: the unclipped r * A is the min -> gradient flows (-0.5 * 2 / 3 tokens).
    old = torch.zeros(1, 3)
    lp = torch.log(torch.tensor([[1.1, 1.5, 0.5]])).requires_grad_(True)
    adv = torch.full((1, 3), 2.0)
    loss, m = clipped_pg_loss(lp, old, adv, torch.ones(1, 3), 0.2, 0.2)
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-1.1 * 2 / 3, 0.0, -0.5 * 2 / 3]]))
    assert m["clipfrac"].item() == pytest.approx(1 / 3)


def test_aggregate_rejects_unknown_and_needs_max_len():
    x, mask = torch.ones(1, 2), torch.ones(1, 2)
    with pytest.raises(ValueError, match="not one of"):
        aggregate(x, mask, "sum")
    with pytest.raises(ValueError, match="max_len"):
        aggregate(x, mask, "seq-mean-token-sum-norm")


def test_lr_schedule_hand_values():
    from rlhf.run_utils import lr_lambda

    warm_cos = lr_lambda("cosine", warmup=2, total=10)
    # warm-up: (step + 1) / 2 -> 0.5, 1.0; then cosine from 1 at step 2 to 0 at step 10; half-way (step 6) = 0.5
    assert [warm_cos(0), warm_cos(1), warm_cos(2), warm_cos(6), warm_cos(10)] == pytest.approx([0.5, 1, 1, 0.5, 0])
    lin = lr_lambda("linear", warmup=0, total=4)
    assert [lin(0), lin(1), lin(4)] == pytest.approx([1.0, 0.75, 0.0])
    assert lr_lambda("constant", 0, 4)(3) == 1.0


def _clipped_pg_reference(lp, old, adv, mask, clip_low, clip_high, agg, num_tokens, max_len, num_seqs):
    # the clipped surrogate exactly as it was computed before the log-ratio clamp, dual-clip and GSPO knobs existed
    log_ratio = lp - old
    ratio = torch.exp(log_ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    loss = aggregate(-torch.minimum(unclipped, clipped), mask, agg, num_tokens, max_len, num_seqs)
    m = mask.float()
    mean = lambda x: (x * m).sum() / m.sum().clamp(min=1.0)
    metrics = {
        "clipfrac": mean((clipped < unclipped).float()),
        "approx_kl": mean(0.5 * log_ratio.square()),
        "ratio_mean": mean(ratio),
    }
    return loss, metrics


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "agg, kwargs",
    [
        ("token-mean", {}),
        ("token-mean", {"num_tokens": 50.0}),
        ("seq-mean-token-mean", {"num_seqs": 7}),
        ("seq-mean-token-sum-norm", {"max_len": 9}),
    ],
)
def test_default_clipped_pg_loss_is_bit_identical_to_the_unclamped_formula(dtype, agg, kwargs):
    # |log ratio| < 20: the clamp leaves every value and gradient unchanged, bit for bit
    g = torch.Generator().manual_seed(0)
    old = torch.randn(4, 9, generator=g, dtype=dtype) * 2 - 3
    log_ratio = torch.randn(4, 9, generator=g, dtype=dtype) * 0.3
    log_ratio[0, :4] = torch.tensor([19.5, -19.5, 12.0, -15.0], dtype=dtype)  # large, still inside the clamp
    adv = torch.randn(4, 9, generator=g, dtype=dtype)
    mask = (torch.rand(4, 9, generator=g) > 0.3).to(dtype)
    mask[0, :4] = 1.0
    full = dict(num_tokens=None, max_len=None, num_seqs=None) | kwargs
    lp_new = (old + log_ratio).requires_grad_(True)
    lp_ref = (old + log_ratio).requires_grad_(True)
    loss, metrics = clipped_pg_loss(lp_new, old, adv, mask, 0.2, 0.28, agg, **kwargs)
    ref_loss, ref_metrics = _clipped_pg_reference(lp_ref, old, adv, mask, 0.2, 0.28, agg, **full)
    loss.backward()
    ref_loss.backward()
    assert torch.equal(loss, ref_loss)
    assert torch.equal(lp_new.grad, lp_ref.grad)
    assert set(metrics) == set(ref_metrics)
    for key in ref_metrics:
        assert torch.equal(metrics[key], ref_metrics[key]), key
    # the new knobs at their defaults, named, change nothing either
    explicit, _ = clipped_pg_loss(
        lp_new, old, adv, mask, 0.2, 0.28, agg, **kwargs, clip_ratio_c=None, importance_sampling_level="token"
    )
    assert torch.equal(explicit, ref_loss)


def test_log_ratio_clamp_turns_nan_into_zero_for_zero_advantage():
    # log ratio 100: exp overflows float32 (past ~88.7) -> inf, and inf * 0 = NaN in the unclamped formula
    lp, old = torch.zeros(1, 2), torch.tensor([[-100.0, 0.0]])
    adv, mask = torch.tensor([[0.0, 1.0]]), torch.ones(1, 2)
    ref_loss, _ = _clipped_pg_reference(lp, old, adv, mask, 0.2, 0.2, "token-mean", None, None, None)
    assert math.isnan(ref_loss.item())
    lp = lp.requires_grad_(True)
    loss, m = clipped_pg_loss(lp, old, adv, mask)
    # token 1: ratio exp(20) * A = 0 contributes 0; token 2: ratio 1, A = 1 -> -1; token-mean over 2 -> -0.5
    assert loss.item() == -0.5
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0, -0.5]]))
    assert math.isfinite(m["ratio_mean"].item())
