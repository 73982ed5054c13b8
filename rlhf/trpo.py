"""Trust-region policy optimisation (Schulman et al. 2015, arXiv:1502.05477) on the trainable (LoRA) parameters.

One step:  g = grad of the surrogate L(theta) = mean_t ratio_t * A_t  at theta_old;
           s = F^-1 g by conjugate gradient, F = Hessian of the mean KL(pi_old || pi_theta) at theta_old (the Fisher
               matrix), applied as Hessian-vector products, never formed;
           full step = sqrt(2 delta / s^T F s) * s  (the largest step along s whose quadratic KL model equals delta);
           backtracking: try full step * ratio^k, accept the first that improves L and keeps the measured KL <= delta,
           else leave theta unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def flatten(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1).float() for t in tensors])


def unflatten_into(params: list[torch.nn.Parameter], flat: Tensor) -> None:
    """Write a flat vector into the parameters (in place, no autograd)."""
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p).to(p.dtype))
            offset += n


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, tol: float = 1e-10
) -> tuple[Tensor, float]:
    """Solve A x = b for a symmetric positive-definite A given only x -> A x. Returns (x, final residual norm)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r.dot(r)
    for _ in range(iters):
        if rr <= tol:
            break
        Ap = matvec(p)
        alpha = rr / p.dot(Ap).clamp(min=1e-20)
        x += alpha * p
        r -= alpha * Ap
        rr_new = r.dot(r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, rr.sqrt().item()


@dataclass
class TRPOResult:
    accepted: bool
    step_frac: float  # the accepted fraction of the full step (0 when rejected)
    kl: float  # measured mean KL of the accepted step (or of the last try when rejected)
    surrogate_gain: float  # L(theta_new) - L(theta_old); 0 when rejected
    expected_gain: float  # g . full_step: the first-order prediction for the full step
    cg_residual: float


def trpo_step(
    params: list[torch.nn.Parameter],
    grad: Tensor,
    fisher_vp: Callable[[Tensor], Tensor],
    evaluate: Callable[[], tuple[float, float]],
    surrogate_old: float,
    max_kl: float,
    cg_iters: int = 10,
    backtrack_steps: int = 10,
    backtrack_ratio: float = 0.5,
) -> TRPOResult:
    """Take one trust-region step on `params` (left unchanged when no step is accepted).

    grad: flat gradient of the surrogate at the current parameters; fisher_vp: v -> (F + damping I) v;
    evaluate: () -> (surrogate, mean KL to the old policy) at the parameters as they are now."""
    direction, residual = conjugate_gradient(fisher_vp, grad, cg_iters)
    shs = direction.dot(fisher_vp(direction)).item()
    if not shs > 0:
        return TRPOResult(False, 0.0, 0.0, 0.0, 0.0, residual)
    full_step = direction * (2.0 * max_kl / shs) ** 0.5
    expected = grad.dot(full_step).item()
    saved = [p.detach().clone() for p in params]  # restored exactly when no step is accepted
    theta_old = flatten(saved)
    kl = 0.0
    for k in range(backtrack_steps):
        frac = backtrack_ratio**k
        unflatten_into(params, theta_old + frac * full_step)
        surrogate, kl = evaluate()
        if kl <= max_kl and surrogate > surrogate_old:
            return TRPOResult(True, frac, kl, surrogate - surrogate_old, expected, residual)
    with torch.no_grad():
        for p, old in zip(params, saved):
            p.copy_(old)
    return TRPOResult(False, 0.0, kl, 0.0, expected, residual)


@dataclass(frozen=True)
class TRPOSettings:
    """`algorithm.trpo.*` as plain values (built once), and the micro-batch size of the forward passes."""

    max_kl: float = 0.01
    cg_iters: int = 10
    damping: float = 0.1
    fisher_fraction: float = 0.25
    backtrack_steps: int = 10
    backtrack_ratio: float = 0.5
    micro_batch_size: int = 32


def trpo_update(policy, batch, total: Callable[[Tensor | float], Tensor], s: TRPOSettings) -> dict[str, float]:
    """TRPO's natural-gradient step of `policy` (the unwrapped `rlhf.policy.Policy`) on a StepBatch whose old
    log-probs and advantages are set; the value model is fitted before this by the optimizer. `total(x)` sums a
    tensor or scalar over ranks: gradients and Fisher-vector products are summed by hand (the step happens outside
    DDP's hooks) and every rank takes the same step, so the adapters stay identical. Returns the trpo/* metrics."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    params = policy.policy_parameters()
    n_tokens = max(total(batch.loss_mask.sum()).item(), 1.0)
    G, mb, B = batch.rollout.group_size, s.micro_batch_size, len(batch.advantages)
    # the Fisher comes from the first whole groups (rows are in random prompt order); the gradient from all rows
    n_fisher = min(B, max(G, round(s.fisher_fraction * B / G) * G))
    spans = [(s, min(s + mb, n_fisher)) for s in range(0, n_fisher, mb)] + [
        (s, min(s + mb, B)) for s in range(n_fisher, B, mb)
    ]
    parts = [batch.rows(slice(a, b)).trimmed() for a, b in spans]
    is_fisher = [a < n_fisher for a, _ in spans]
    fisher_tokens = max(total(batch.loss_mask[:n_fisher].sum()).item(), 1.0)
    reduce = lambda x: total(x).float()

    def surrogate_and_kl(part, logp: Tensor, logp_old: Tensor) -> tuple[Tensor, Tensor]:
        """Sums over the part's action tokens: (ratio * A, KL(pi_old || pi)), each divided by the whole batch's
        count."""
        m = part.rollout.action_mask.bool()
        w = part.loss_mask[m].float()
        lp = logp.gather(-1, part.rollout.completion_ids[m][:, None]).squeeze(-1)
        ratio = torch.exp(lp - part.old_logprobs[m])
        surrogate = (ratio * part.advantages[m] * w).sum() / n_tokens
        kl = ((logp_old.exp() * (logp_old - logp)).sum(-1) * w).sum() / n_tokens
        return surrogate, kl

    policy.eval()
    # the math attention kernel has a double backward (Hessian-vector products); the fused CPU kernel does not
    with sdpa_kernel(SDPBackend.MATH):
        grad = torch.zeros(sum(p.numel() for p in params))
        kl_grads, olds, surrogate_old = [], [], 0.0
        for part, fisher in zip(parts, is_fisher):
            logp = policy.full_logprobs(part.rollout)
            logp_old = logp.detach()
            surrogate, kl = surrogate_and_kl(part, logp, logp_old)
            grad += flatten(torch.autograd.grad(surrogate, params, retain_graph=fisher))
            if fisher:  # the mean KL over the Fisher rows' tokens
                kl_grads.append(torch.autograd.grad(kl * n_tokens / fisher_tokens, params, create_graph=True))
            olds.append(logp_old)
            surrogate_old += surrogate.item()
        grad = reduce(grad)
        surrogate_old = reduce(surrogate_old).item()

        def fisher_vp(vec: Tensor) -> Tensor:
            out = torch.zeros_like(vec)
            for g in kl_grads:
                out += flatten(torch.autograd.grad(flatten(g).dot(vec), params, retain_graph=True))
            return reduce(out) + s.damping * vec

        @torch.no_grad()
        def evaluate() -> tuple[float, float]:
            s_total, kl_total = 0.0, 0.0
            for part, logp_old in zip(parts, olds):
                sur, k = surrogate_and_kl(part, policy.full_logprobs(part.rollout), logp_old)
                s_total, kl_total = s_total + sur.item(), kl_total + k.item()
            return reduce(s_total).item(), reduce(kl_total).item()

        if grad.abs().max() == 0:  # every advantage is zero: nothing to step towards
            result = TRPOResult(False, 0.0, 0.0, 0.0, 0.0, 0.0)
        else:
            result = trpo_step(
                params, grad, fisher_vp, evaluate, surrogate_old, s.max_kl, s.cg_iters, s.backtrack_steps,
                s.backtrack_ratio,
            )  # fmt: skip
    kl_grads.clear()  # frees the retained double-backward graphs
    return {
        "trpo/accepted": float(result.accepted),
        "trpo/step_frac": result.step_frac,
        "trpo/kl": result.kl,
        "trpo/surrogate_gain": result.surrogate_gain,
        "trpo/expected_gain": result.expected_gain,
        "trpo/cg_residual": result.cg_residual,
        "policy/approx_kl": result.kl,
    }
