import pytest
import torch

from rlhf.advantages import batch_std_advantages, gae, group_advantages


def test_group_advantages_hand_values():
    # group 1: rewards 1, 0, 0, 1 -> mean 0.5, unbiased std = sqrt((4 * 0.25) / 3) = 0.57735
    #   advantages (r - 0.5) / (0.57735 + 1e-4) = +-0.86588
    # group 2: 2, 2, 2, 2 -> mean 2, std 0 -> all 0 (no signal from a group that agrees)
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(scores, group_size=4)
    a = 0.5 / (0.5773503 + 1e-4)
    torch.testing.assert_close(adv, torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0]), atol=1e-6, rtol=0)


def test_group_advantages_dr_grpo_no_std():
    # r - mean only: group [3, 1] -> mean 2 -> [1, -1]; group [0, 4] -> mean 2 -> [-2, 2]
    adv = group_advantages(torch.tensor([3.0, 1.0, 0.0, 4.0]), group_size=2, scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, -2.0, 2.0]))


def test_group_advantages_rejects_ragged():
    try:
        group_advantages(torch.zeros(5), group_size=2)
    except ValueError as e:
        assert "group_size=2" in str(e)
    else:
        raise AssertionError("expected ValueError")


def test_batch_std_advantages_hand_values():
    # groups [1, 0] and [1, 1]; centred: [0.5, -0.5, 0, 0]; batch std of [1, 0, 1, 1] (unbiased) = 0.5
    adv = batch_std_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, 0.0, 0.0]) / (0.5 + 1e-4))


def _gae_loop(rewards, values, mask, gamma, lam):
    B, T = rewards.shape
    adv = torch.zeros(B, T)
    for b in range(B):
        n = int(mask[b].sum())
        running = 0.0
        for t in reversed(range(n)):
            next_v = values[b, t + 1].item() if t + 1 < n else 0.0
            delta = rewards[b, t].item() + gamma * next_v - values[b, t].item()
            running = delta + gamma * lam * running
            adv[b, t] = running
    return adv, (adv + values) * mask


def test_gae_matches_loop_on_ragged_masks():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(5, 9, generator=g), torch.randn(5, 9, generator=g)
    lengths = [9, 1, 4, 7, 2]
    mask = torch.tensor([[1.0] * n + [0.0] * (9 - n) for n in lengths])
    for gamma, lam in [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0), (1.0, 0.5)]:
        adv, ret = gae(rewards, values, mask, gamma, lam)
        ref_adv, ref_ret = _gae_loop(rewards, values * mask, mask, gamma, lam)
        torch.testing.assert_close(adv, ref_adv, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ret, ref_ret, atol=1e-5, rtol=1e-5)


def test_gae_special_cases():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.2, 0.4, 0.6]])
    mask = torch.ones(1, 3)
    # lambda = 1: Monte-Carlo return minus V; with gamma = 0.5 returns are [0.25, 0.5, 1]
    adv, _ = gae(rewards, values, mask, 0.5, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.25 - 0.2, 0.5 - 0.4, 1.0 - 0.6]]))
    # lambda = 0: the TD error r_t + gamma V_{t+1} - V_t, with V after the end = 0
    adv, _ = gae(rewards, values, mask, 0.5, 0.0)
    torch.testing.assert_close(adv, torch.tensor([[0.0 + 0.2 - 0.2, 0.0 + 0.3 - 0.4, 1.0 - 0.6]]))
    # gamma = lambda = 1 and zero values: reward-to-go
    adv, ret = gae(rewards, torch.zeros(1, 3), mask, 1.0, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[1.0, 1.0, 1.0]]))
    torch.testing.assert_close(ret, adv)


def test_rloo_hand_values():
    from rlhf.advantages import rloo_advantages

    # group [1, 0, 0, 1]: baseline of item 0 = (0 + 0 + 1) / 3 = 1/3 -> A = 2/3; item 1: (1 + 0 + 1) / 3 -> -2/3
    adv = rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=4)
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))
    # group of 2 [3, 1]: A = [3 - 1, 1 - 3] = [2, -2]
    torch.testing.assert_close(rloo_advantages(torch.tensor([3.0, 1.0]), 2), torch.tensor([2.0, -2.0]))


def test_discounted_returns_hand_values():
    from rlhf.advantages import discounted_returns

    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    ret = discounted_returns(torch.tensor([2.0, -1.0]), mask, gamma=0.5)
    # sequence 1 (L = 3): [2 * 0.25, 2 * 0.5, 2, 0]; sequence 2 (L = 1): [-1, 0, 0, 0]
    torch.testing.assert_close(ret, torch.tensor([[0.5, 1.0, 2.0, 0.0], [-1.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(
        discounted_returns(torch.tensor([2.0, -1.0]), mask, 1.0),
        torch.tensor([[2.0, 2.0, 2.0, 0.0], [-1.0, 0.0, 0.0, 0.0]]),
    )


def test_whiten_over_masked_entries():
    from rlhf.advantages import whiten

    values = torch.tensor([[1.0, 3.0, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # mean 2, unbiased std sqrt(2) -> [-1/sqrt2, 1/sqrt2, 0]
    torch.testing.assert_close(whiten(values, mask), torch.tensor([[-(0.5**0.5), 0.5**0.5, 0.0]]))


# ---------------------------------------------------------------------------------------------- masks with gaps
# A multi-turn episode: 1 on tokens the policy sampled, 0 on tokens an environment inserted (and on padding).
GAPPED = torch.tensor(
    [
        [1, 1, 0, 0, 1, 1, 0, 0],
        [1, 0, 1, 0, 1, 0, 1, 0],
        [0, 0, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
    ],
    dtype=torch.float32,
)


def _compact_loop(fn, mask, *rows_of):
    """Apply a per-row reference `fn(list of values per tensor) -> list` to the action tokens only, scatter back."""
    out = torch.zeros(mask.shape)
    for b in range(mask.shape[0]):
        idx = [t for t in range(mask.shape[1]) if mask[b, t] > 0]
        if not idx:
            continue
        vals = fn(*[[x[b, t].item() for t in idx] if x.dim() == 2 else x[b].item() for x in rows_of])
        for t, v in zip(idx, vals):
            out[b, t] = v
    return out


def test_gae_with_gaps_equals_gae_on_the_action_tokens_alone():
    from rlhf.advantages import gae

    torch.manual_seed(0)
    rewards, values = torch.randn(4, 8), torch.randn(4, 8)
    gamma, lam = 0.9, 0.8

    def ref(r, v):
        adv, running = [0.0] * len(r), 0.0
        for t in reversed(range(len(r))):
            nxt = v[t + 1] if t + 1 < len(r) else 0.0
            running = r[t] + gamma * nxt - v[t] + gamma * lam * running
            adv[t] = running
        return adv

    expected = _compact_loop(ref, GAPPED, rewards, values)
    adv, returns = gae(rewards, values, GAPPED, gamma, lam)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(returns, (expected + values) * GAPPED)
    assert (adv[GAPPED == 0] == 0).all()


def test_discounted_returns_and_token_rewards_with_gaps():
    from rlhf.advantages import discounted_returns, last_action_index, token_rewards

    scores = torch.tensor([1.0, 2.0, -1.0, 5.0])
    expected = torch.zeros(4, 8)
    for b in range(4):
        idx = [t for t in range(8) if GAPPED[b, t] > 0]
        for j, t in enumerate(idx):
            expected[b, t] = scores[b] * 0.5 ** (len(idx) - 1 - j)
    torch.testing.assert_close(discounted_returns(scores, GAPPED, 0.5), expected)
    assert last_action_index(GAPPED).tolist() == [5, 6, 4, 0]
    kl = torch.full((4, 8), 0.1)
    r = token_rewards(scores, kl, GAPPED, kl_coef=2.0)
    want = -0.2 * GAPPED
    want[0, 5] += 1.0
    want[1, 6] += 2.0
    want[2, 4] += -1.0  # the row without action tokens gets nothing
    torch.testing.assert_close(r, want)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_loss_over_a_gapped_mask_equals_the_loss_over_the_same_tokens_written_contiguously(agg):
    from rlhf.losses import clipped_pg_loss

    torch.manual_seed(1)
    mask = GAPPED[:3]
    lp, old, adv = torch.randn(3, 8) * 0.3, torch.randn(3, 8) * 0.3, torch.randn(3, 8)
    # the same action tokens moved to the front of each row
    n = int(mask.sum(-1).max())
    c_lp, c_old, c_adv, c_mask = (torch.zeros(3, n) for _ in range(4))
    for b in range(3):
        idx = mask[b].nonzero().flatten()
        k = len(idx)
        c_lp[b, :k], c_old[b, :k], c_adv[b, :k], c_mask[b, :k] = lp[b, idx], old[b, idx], adv[b, idx], 1.0
    gapped, _ = clipped_pg_loss(lp, old, adv, mask, 0.2, 0.28, agg, max_len=8)
    contiguous, _ = clipped_pg_loss(c_lp, c_old, c_adv, c_mask, 0.2, 0.28, agg, max_len=8)
    torch.testing.assert_close(gapped, contiguous)


def test_estimators_run_without_a_model():
    from rlhf.estimators import AdvantageInputs, BatchStats, gae_with_kl_reward, grpo

    scores = torch.tensor([1.0, 0.0, 0.0, 1.0])
    mask = GAPPED
    out = grpo(AdvantageInputs(scores, mask, mask, group_size=2), BatchStats())
    a = 0.5 / (0.70710677 + 1e-4)
    torch.testing.assert_close(out.advantages, torch.tensor([a, -a, -a, a])[:, None] * mask)
    inp = AdvantageInputs(
        scores,
        mask,
        mask,
        group_size=2,
        truncated=torch.zeros(4, dtype=torch.bool),
        old_logprobs=torch.zeros(4, 8),
        old_values=torch.zeros(4, 8),
        kl_coef=0.0,
    )
    est = gae_with_kl_reward(inp, BatchStats(), gamma=1.0, lam=1.0, whiten_advantages=False)
    # V = 0 and lambda = gamma = 1: every action token's advantage is the episode's score
    torch.testing.assert_close(est.advantages, scores[:, None] * mask)
    assert est.metrics["policy/kl_coef"] == 0.0
