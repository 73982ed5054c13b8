import pytest
import torch

from rlhf.logprobs import naive_token_logprobs, token_logprobs


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_equals_plain_and_gradients_match(temperature):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g, requires_grad=True)
    weight = torch.randn(101, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 101, (37,), generator=g)
    upstream = torch.randn(37, generator=g)  # a non-uniform incoming gradient, as a loss with advantages gives
    chunked, entropy = token_logprobs(hidden, weight, targets, temperature, chunk_tokens=8, with_entropy=True)
    plain = naive_token_logprobs(hidden, weight, targets, temperature)
    torch.testing.assert_close(chunked, plain)
    g1 = torch.autograd.grad((chunked * upstream).sum(), (hidden, weight), retain_graph=True)
    g2 = torch.autograd.grad((plain * upstream).sum(), (hidden, weight), retain_graph=True)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    logp = (hidden @ weight.T / temperature).log_softmax(-1)
    plain_entropy = -(logp.exp() * logp).sum(-1)
    torch.testing.assert_close(entropy, plain_entropy)
    # the entropy is differentiable too (an entropy bonus), together with the log-probs
    g3 = torch.autograd.grad((entropy * upstream).sum() + chunked.sum(), (hidden, weight))
    g4 = torch.autograd.grad((plain_entropy * upstream).sum() + plain.sum(), (hidden, weight))
    for a, b in zip(g3, g4):  # float32 sums over the vocabulary: AVX2 kernels order them differently (1.3e-5 seen)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bfloat16_hidden_gets_a_bfloat16_gradient_close_to_float32():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(20, 32, generator=g)
    weight = torch.randn(300, 32, generator=g) * 0.2
    targets = torch.randint(0, 300, (20,), generator=g)
    h16 = hidden.bfloat16().requires_grad_()
    h32 = h16.detach().float().requires_grad_()
    lp16, _ = token_logprobs(h16, weight.bfloat16(), targets)
    lp32 = naive_token_logprobs(h32, weight.bfloat16().float(), targets)
    torch.testing.assert_close(lp16, lp32, atol=1e-5, rtol=1e-5)  # the head itself runs in float32
    lp16.sum().backward()
    lp32.sum().backward()
    assert h16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(h16.grad.float(), h32.grad, atol=2e-2, rtol=2e-2)


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


def test_common_left_padding_counts_columns_padded_in_every_row():
    from rlhf.logprobs import common_left_padding

    assert common_left_padding(torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])) == 1
    assert common_left_padding(torch.tensor([[1, 1], [0, 1]])) == 0
    assert common_left_padding(torch.zeros(2, 3)) == 0  # nothing but padding: nothing cut
