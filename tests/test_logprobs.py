import torch

from rlhf.logprobs import naive_token_logprobs, token_logprobs


def test_chunked_equals_plain_and_gradients_match():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g, requires_grad=True)
    weight = torch.randn(101, 16, generator=g)
    targets = torch.randint(0, 101, (37,), generator=g)
    chunked, entropy = token_logprobs(hidden, weight, targets, temperature=0.7, chunk_tokens=8, with_entropy=True)
    plain = naive_token_logprobs(hidden, weight, targets, temperature=0.7)
    torch.testing.assert_close(chunked, plain)
    (g1,) = torch.autograd.grad(chunked.sum(), hidden)
    (g2,) = torch.autograd.grad(plain.sum(), hidden)
    torch.testing.assert_close(g1, g2)
    logp = (hidden.detach() @ weight.T / 0.7).log_softmax(-1)
    torch.testing.assert_close(entropy, -(logp.exp() * logp).sum(-1))


def test_chunked_peak_memory_is_lower_on_long_vocabulary():

    hidden = torch.randn(512, 64, requires_grad=True)
    weight = torch.randn(32000, 64)
    targets = torch.randint(0, 32000, (512,))

    def saved_bytes(fn) -> int:
        total, seen = 0, set()

        def pack(t):  # count each storage once: the head weight is saved by every chunk but never copied
            nonlocal total
            if t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return total

    chunked = saved_bytes(lambda: token_logprobs(hidden, weight, targets, chunk_tokens=64))
    plain = saved_bytes(lambda: naive_token_logprobs(hidden, weight, targets))
    full_logits = 512 * 32000 * 4
    assert plain >= full_logits  # the plain path keeps [N, V] float32 for backward
    assert chunked < full_logits / 4, (chunked, plain)
