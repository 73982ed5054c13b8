import pytest
import torch

from rlhf.data import left_pad
from rlhf.models import load_policy, merged_adapter
from rlhf.policy import Policy, length_buckets, shares_prompts
from rlhf.rollout import SamplingParams, StopChecker, generate_batched, sample_next


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    torch.manual_seed(0)
    model = load_policy(tiny_model_dir, dtype="float32", lora_r=4)
    with torch.no_grad():  # a non-zero adapter, so merging matters
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model


def _prompts(tokenizer, texts):
    ids = [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True) for t in texts]
    ids = [i["input_ids"] if hasattr(i, "keys") else i for i in ids]
    return left_pad(ids, tokenizer.pad_token_id)


def test_shapes_masks_and_behaviour_logprobs_match_training_forward(policy, tokenizer):
    ids, mask = _prompts(tokenizer, ["hi", "a much longer prompt than the first one"])
    torch.manual_seed(1)
    out = generate_batched(
        policy.get_base_model(),
        tokenizer,
        ids,
        mask,
        3,
        SamplingParams(max_new_tokens=12, temperature=0.8),
        batch_size=3,
    )
    B, C = out.completion_ids.shape
    assert B == 6 and C <= 12 and len(out.texts) == 6
    # rows of one prompt are consecutive and carry that prompt
    assert torch.equal(out.prompt_ids[0], out.prompt_ids[2]) and not torch.equal(out.prompt_ids[0], out.prompt_ids[3])
    # the mask is a prefix; padding after it; truncated rows are exactly the full-length ones without EOS
    lengths = out.completion_mask.sum(-1)
    for row, n in zip(out.completion_mask, lengths):
        assert row[:n].all() and not row[n:].any()
    eos = tokenizer.eos_token_id
    for i in range(B):
        ended = (out.completion_ids[i, : lengths[i]] == eos).any().item()
        assert out.truncated[i].item() == (not ended and lengths[i].item() == 12)
    # the trainer's forward (another code path: full sequence, no cache) gives the same log-probs at T = 0.8
    with torch.no_grad():
        po = Policy(policy)(out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask, 0.8)
    torch.testing.assert_close(po.logprobs, out.logprobs, atol=2e-4, rtol=1e-4)
    assert (out.logprobs[out.completion_mask == 0] == 0).all()


def test_finished_rows_leave_the_decoding_batch_without_changing_the_rest(policy, tokenizer):
    """Rows that ended are dropped from the batch (and the KV cache) as decoding goes on; every remaining row must
    still be decoded against its own cache: its behaviour log-probs equal the plain training forward's."""
    ids, mask = _prompts(tokenizer, ["hi", "a much longer prompt than the first one", "third"])
    model = policy.get_base_model()
    batch_sizes = []
    hook = model.register_forward_pre_hook(
        lambda mod, args, kwargs: batch_sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        torch.manual_seed(5)  # stop strings common in random text, so rows end at many different steps
        out = generate_batched(model, tokenizer, ids, mask, 4, SamplingParams(max_new_tokens=16, stop=["ing"]))
    finally:
        hook.remove()
    lengths = out.completion_mask.sum(-1)
    assert len(set(lengths.tolist())) > 3
    decode = batch_sizes[1:]  # after the prefill of the 3 distinct prompts
    assert decode[0] == 12 and min(decode) < 12 and decode == sorted(decode, reverse=True)
    for step, n in enumerate(decode, start=1):  # the batch always holds every row still running at that step
        assert n >= int((lengths > step).sum())
    with torch.no_grad():
        po = Policy(policy)(out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask)
    torch.testing.assert_close(po.logprobs, out.logprobs, atol=2e-4, rtol=1e-4)


def test_merged_adapter_is_exact_and_restores_bits(policy, tokenizer):
    ids, mask = _prompts(tokenizer, ["x", "y z"])
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    params = SamplingParams(max_new_tokens=8, greedy=True)
    plain = generate_batched(policy.get_base_model(), tokenizer, ids, mask, 1, params)
    with merged_adapter(policy):
        merged = generate_batched(policy.get_base_model(), tokenizer, ids, mask, 1, params)
    assert torch.equal(plain.completion_ids, merged.completion_ids)
    torch.testing.assert_close(plain.logprobs, merged.logprobs, atol=1e-4, rtol=1e-4)
    for n, p in policy.named_parameters():
        assert torch.equal(p, before[n]), n


def test_merged_adapter_restores_bfloat16_bits(tiny_model_dir):
    model = load_policy(tiny_model_dir, dtype="bfloat16", lora_r=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(3):
        with merged_adapter(model):
            pass
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_greedy_is_deterministic_and_picks_argmax():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 0.0]])
    tokens, logp = sample_next(logits, SamplingParams(greedy=True))
    assert tokens.tolist() == [1, 0]
    torch.testing.assert_close(logp, logits.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1))


def test_top_k_and_top_p_only_sample_allowed_tokens():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    tokens, _ = sample_next(logits, SamplingParams(top_k=2))
    assert set(tokens.tolist()) == {0, 1}
    # top_p = 0.7: 0.5 alone < 0.7, 0.5 + 0.3 >= 0.7 -> tokens {0, 1}
    tokens, logp = sample_next(logits, SamplingParams(top_p=0.7))
    assert set(tokens.tolist()) == {0, 1}
    # log-probs are those of the untruncated temperature-1 distribution
    torch.testing.assert_close(
        logp[tokens == 1], torch.full_like(logp[tokens == 1], torch.log(torch.tensor(0.3)).item())
    )
    frac0 = (tokens == 0).float().mean().item()
    assert abs(frac0 - 0.5 / 0.8) < 0.05  # renormalised within the nucleus


def test_stop_strings(policy, tokenizer):
    checker = StopChecker(tokenizer, ["\n\n", "STOP"])
    gen = [tokenizer("abc STOP")["input_ids"], tokenizer("abc")["input_ids"]]
    hit = checker(gen, torch.tensor([True, True]))
    assert hit.tolist() == [True, False]
    # in generation: a stop string that occurs ends the completion there (kept in it), and it is not truncated
    ids, mask = _prompts(tokenizer, ["hello"])
    torch.manual_seed(0)
    free = generate_batched(policy.get_base_model(), tokenizer, ids, mask, 4, SamplingParams(max_new_tokens=20))
    text = free.texts[0]
    stop = text[3:5] if len(text) >= 5 else None
    if stop and stop.strip():
        torch.manual_seed(0)
        cut = generate_batched(
            policy.get_base_model(), tokenizer, ids, mask, 4, SamplingParams(max_new_tokens=20, stop=[stop])
        )
        assert stop in cut.texts[0] and len(cut.texts[0]) <= len(text)
        assert not cut.truncated[0]


def test_shared_prompt_forward_equals_plain_forward_and_gradients(policy, tokenizer):
    ids, mask = _prompts(tokenizer, ["one prompt", "another, longer prompt here"])
    torch.manual_seed(3)
    out = generate_batched(policy.get_base_model(), tokenizer, ids, mask, 3, SamplingParams(max_new_tokens=7))
    pol = Policy(policy)
    args = (out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask, 0.9)
    weights = torch.randn(out.completion_ids.shape)
    grads = []
    for group_size in (1, 3):
        assert shares_prompts(out.prompt_ids, out.prompt_mask, group_size, pol.base) == (group_size == 3)
        policy.zero_grad()
        lp = pol(*args, group_size=group_size).logprobs
        (lp * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad})
        if group_size == 1:
            plain = lp.detach()
        else:
            torch.testing.assert_close(lp.detach(), plain, atol=1e-5, rtol=1e-5)
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=2e-4, rtol=1e-3)  # summation order only
    # rows whose prompts differ inside a "group" fall back to the plain path
    assert not shares_prompts(out.prompt_ids[2:6], out.prompt_mask[2:6], 2, pol.base)


def test_length_buckets_minimise_padded_work():
    lengths = torch.tensor([64, 3, 60, 4, 5, 62])
    runs = length_buckets(lengths, overhead_tokens=10)
    # sorted [3,4,5,60,62,64]: two runs cost 3*5 + 3*64 + 20 = 227; one run 6*64 + 10 = 394; three or more cost more
    assert [r.tolist() for r in runs] == [[1, 3, 4], [2, 5, 0]]
    assert [r.tolist() for r in length_buckets(lengths, overhead_tokens=1000)] == [[1, 3, 4, 2, 5, 0]]
    assert len(length_buckets(lengths, overhead_tokens=0)) == 6
    assert length_buckets(lengths, overhead_tokens=-1)[0].tolist() == [1, 3, 4, 2, 5, 0]  # disabled: one run
    assert len(length_buckets(torch.full((8,), 16), overhead_tokens=0)) == 1  # equal lengths never split


def test_length_buckets_keep_logprobs_values_and_gradients(policy, tokenizer):
    """Scoring rows in runs of similar completion length gives the same numbers as padding all to the longest,
    with and without the shared prompt encoding."""
    ids, mask = _prompts(tokenizer, ["one prompt", "another, longer prompt here"])
    torch.manual_seed(4)
    out = generate_batched(policy.get_base_model(), tokenizer, ids, mask, 3, SamplingParams(max_new_tokens=9))
    cmask = out.completion_mask.clone()
    for row, keep in enumerate([1, 9, 4, 2, 9, 6]):  # very different lengths, so the runs really split
        cmask[row, keep:] = 0
    args = (out.prompt_ids, out.prompt_mask, out.completion_ids, cmask, 1.0)
    weights = torch.randn(cmask.shape)
    results = []
    for overhead, group_size in ((-1, 1), (0, 1), (-1, 3), (2, 3)):
        policy.zero_grad()
        lp = Policy(policy, bucket_overhead=overhead)(*args, group_size=group_size).logprobs
        (lp * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}
        results.append((lp.detach(), grads))
    assert len(length_buckets(cmask.sum(-1), 2)) > 1
    ref_lp, ref_grads = results[0]
    assert (ref_lp[cmask == 0] == 0).all()
    for lp, grads in results[1:]:
        torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-5)
        for n in ref_grads:
            torch.testing.assert_close(grads[n], ref_grads[n], atol=2e-4, rtol=1e-3)


def test_categorical_sampler_matches_probabilities_and_skips_zero_mass():
    from rlhf.rollout import _sample_categorical

    torch.manual_seed(0)
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3, 0.0]]).repeat(20000, 1)
    tokens = _sample_categorical(probs)
    freq = torch.bincount(tokens, minlength=6).float() / len(tokens)
    assert freq[[0, 2, 5]].sum() == 0
    torch.testing.assert_close(freq, probs[0], atol=0.015, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_untruncated_sampling_follows_the_tempered_softmax(temperature):
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0]]).repeat(20000, 1)
    tokens, logp = sample_next(logits, SamplingParams(temperature=temperature))
    probs = (logits[0] / temperature).softmax(-1)
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    torch.testing.assert_close(logp, probs.log()[tokens])
