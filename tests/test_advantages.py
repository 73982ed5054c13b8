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
