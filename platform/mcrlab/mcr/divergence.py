"""Per-sample divergences between the clean prediction p and a perturbed prediction q, from logits.

Inputs are logits of broadcastable shapes (..., C); outputs have the broadcast shape without C.
Natural-log units. Half-precision logits (bf16 autocast) are upcast to float32 first, because the
differences of log-probabilities these sums are made of vanish in bf16.

- ``jsd`` (default): Jensen-Shannon divergence, bounded by ln 2 and symmetric.
- ``kl``:  KL(p || q) = sum_c p_c (log p_c - log q_c).
- ``mse``: mean over classes of (logit_p - logit_q)^2, the regression form.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mcrlab.mcr.opaque import with_gradients

__all__ = ["DIVERGENCES", "divergence", "mean_divergence", "permuted_mean_divergence"]

DIVERGENCES = ("jsd", "kl", "mse")
_LN2 = math.log(2.0)
# 1/2 as a CPU scalar tensor, so that torch.add(_HALF, x, alpha=0.5) = (1 + x) / 2 is one pass on any device
# (a CPU 0-d operand is a kernel argument: no host-to-device copy). Only in code that runs eagerly (the
# opaque operator's body), never in code dynamo may trace.
_HALF = torch.tensor(0.5, dtype=torch.float64)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, kind: str = "jsd") -> torch.Tensor:
    """div(p, q) per sample: (..., C), (..., C) -> (...) (broadcasting, e.g. (B, C) with (S, B, C))."""
    p_logits, q_logits = _upcast(p_logits), _upcast(q_logits)
    if kind == "mse":
        return (p_logits - q_logits).pow(2).mean(-1)
    logp = F.log_softmax(p_logits, dim=-1)
    logq = F.log_softmax(q_logits, dim=-1)
    if kind == "kl":
        return (logp.exp() * (logp - logq)).sum(-1)
    if kind == "jsd":
        # JSD = 1/2 KL(p||m) + 1/2 KL(q||m), m = (p+q)/2. With delta = log q - log p:
        #   log p - log m = ln 2 - softplus(delta),   log q - log m = ln 2 - softplus(-delta)
        # which is stable for any logits and exactly 0 where q == p (softplus(0) == ln 2).
        delta = logq - logp
        kl_pm = logp.exp() * (_LN2 - F.softplus(delta))
        kl_qm = logq.exp() * (_LN2 - F.softplus(-delta))
        return 0.5 * (kl_pm + kl_qm).sum(-1)
    raise ValueError(f"unknown divergence {kind!r}; choose from {DIVERGENCES}")


def mean_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, kind: str = "jsd") -> torch.Tensor:
    """mean_{s,i} div(p_i, q_{s,i}) per leading index: p (M, B, C), q (M, S, B, C) -> (M,).

    The same values as ``divergence(p.unsqueeze(1), q, kind).mean((1, 2))``, computed by one fused
    autograd node with a hand-written backward (MCR's training hot path; see ``_core_forward``).
    """
    _check(kind)
    return _MeanDivergence.apply(_upcast(p_logits), _upcast(q_logits), kind)


def permuted_mean_divergence(p_logits: torch.Tensor, rest: torch.Tensor, contrib: torch.Tensor,
                             perms: torch.Tensor, kind: str = "jsd") -> torch.Tensor:
    """``mean_divergence(p, rest.unsqueeze(1) + contrib[:, perms], kind)`` without materialising the
    permuted logits outside the node: p, rest, contrib (M, B, C), perms (S, B) -> (M,).

    This is the late-fusion fast path, q_{s,i} = l_m[pi_s(i)] + (everything else)_i, in one node.
    """
    _check(kind)
    args = (_upcast(p_logits), _upcast(rest), _upcast(contrib))
    if torch.compiler.is_compiling():  # train.compile: the node stays one opaque operator (mcr/opaque.py)
        val, *grads = torch.ops.mcrlab.permuted_mean_divergence(*(a.detach() for a in args), perms, kind)
        return with_gradients(val, list(args), grads)
    return _PermutedMeanDivergence.apply(*args, perms, kind)


def inverse_permutations(perms: torch.Tensor, flat: bool = False) -> torch.Tensor:
    """Row-wise inverses of permutations (S, B) by one scatter (no sort). ``flat`` adds s * B to row s,
    giving row indices into a flattened (S * B) axis."""
    S, B = perms.shape
    src = torch.arange(B, device=perms.device).expand(S, B)
    if flat:
        src = src + torch.arange(S, device=perms.device).unsqueeze(1) * B
    return torch.empty_like(perms).scatter_(1, perms, src)


def _check(kind: str) -> None:
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence {kind!r}; choose from {DIVERGENCES}")


# Working arrays of the fused kernels, reused across calls. On a CPU a fresh multi-page array costs a page
# fault per 4 KiB page on first touch (the allocator hands large blocks back to the OS when they are freed):
# ~130 us for one (2, 10, 32, 256) float32 array, more than the arithmetic done on it. So temporaries that
# die within a call come from a per-thread set of buffers, one per (slot, shape, dtype); no value, gradient
# or saved tensor is ever one of them. Off the CPU the caching allocator already reuses memory, and under
# autograd (an input that requires grad) ``out=`` is not allowed: fresh arrays there.
_WORKSPACE = threading.local()
_WORKSPACE_MAX_BYTES = 64 * 2**20  # per buffer; a larger problem allocates per call
_WORKSPACE_MAX_BUFFERS = 16  # per thread; past it the set starts again (shapes that keep changing)


def _workspace(like: torch.Tensor, shape: tuple[int, ...], *inputs: torch.Tensor
               ) -> Callable[[int], torch.Tensor | None]:
    """slot -> the ``out=`` array for a temporary of ``shape``: an uninitialised array with ``like``'s dtype
    and device, the same one for every call with that slot, shape, dtype and thread; or None (the op
    allocates) off the CPU, above the size cap, while compiling, or when ``like`` or ``inputs`` is tracked
    by autograd."""
    tracked = torch.is_grad_enabled() and any(x.requires_grad for x in (like, *inputs))
    # (under torch.compile the traced node's arrays are the compiler's to plan: never a shared buffer)
    if (tracked or torch.compiler.is_compiling() or like.device.type != "cpu"
            or math.prod(shape) * like.element_size() > _WORKSPACE_MAX_BYTES):
        return lambda slot: None
    buffers = _WORKSPACE.__dict__.setdefault("buffers", {})
    inference = torch.is_inference_mode_enabled()

    def get(slot: int) -> torch.Tensor:
        # (an array made under inference_mode cannot be written outside it, and the other way round)
        key = (slot, tuple(shape), like.dtype, inference)
        buf = buffers.get(key)
        if buf is None:
            if len(buffers) >= _WORKSPACE_MAX_BUFFERS:
                buffers.clear()
            buf = buffers[key] = like.new_empty(shape)
        return buf

    return get


# The fused kernels work in a class-major layout, p (M, C, 1, B) and q (M, C, S, B): with few classes,
# reductions over C then run as vectorised element-wise passes over S*B-long rows (2-4x faster on CPU
# than reducing a short last axis). The JSD needs  a = log p - log m  and  b = log q - log m, computed
# from a softplus that cannot overflow and gives exactly 0 where p == q.


def _core_forward(kind: str, p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """Per-m means over (S, B) of div(p, q): p (M, C, 1, B), q (M, C, S, B) -> (M,), and what backward needs.
    ``q`` may be overwritten (callers pass a buffer of their own)."""
    S, B = q.shape[2], q.shape[3]
    if kind == "mse":
        diff = q - p
        return diff.square().sum(1).sum((1, 2)) / (diff.shape[1] * S * B), (diff,)
    logp = F.log_softmax(p, dim=1)
    pp = logp.exp()
    if kind == "kl":
        logq = F.log_softmax(q, dim=1)
        qq = logq.exp()
        w = logq.neg_().add_(logp)  # log p - log q
        return (pp * w).sum(1).sum((1, 2)) / (S * B), (pp, qq, w)
    # JSD, few passes over the (M, C, S, B) array. q's softmax from one exp; then, with d = log q - log p
    # and e = log(1 + exp(-|d|)) in [0, ln 2]  (the log-add-exp's correction: log m = max(log p, log q) + e - ln 2)
    #   a = log p - log m = ln 2 - e - max(d, 0),   b = log q - log m = ln 2 - e + min(d, 0)
    # each exact for any logits (no b = a + d, which would cancel for large |d|), and exactly 0 where q == p.
    # (log(1 + x) rather than log1p: ~3x faster on CPU; x <= 1, so the absolute error stays one ulp of 1.)
    #   value = 1/2 sum_c (p a + q b);  the p side is summed over S first (p does not depend on s).
    # The two temporaries come from the workspace (slots 10-11; the permuted node's own are 0-3): with
    # n = e - ln 2 = log(1/2 + exp(-|d|) / 2) in [-ln 2, 0]  (exactly 0 where d == 0),
    # a = -(n + max(d, 0)) and b = min(d, 0) - n.
    ws = _workspace(q, tuple(q.shape), p)
    qmax = q.amax(1, keepdim=True)
    logq = q.sub_(qmax)
    qq = logq.exp()
    se = qq.sum(1, keepdim=True)
    qq.mul_(se.reciprocal())
    logq.sub_(se.log_())
    d = logq.sub_(logp)  # overwrites log q: d = log q - log p
    n = torch.abs(d, out=ws(10)).neg_().exp_()
    n = n.mul_(0.5).add_(0.5).log_()  # e - ln 2 (Python scalars only: dynamo may trace this node)
    a_sum = torch.clamp_min(d, 0.0, out=ws(11)).add_(n).sum(2, keepdim=True).neg_()  # sum_s a, (M, C, 1, B)
    b = d.clamp_max_(0.0).sub_(n)  # overwrites d
    t = qq * b  # q b per class: its class sum is KL(q || m) per row, reused in backward
    r_q = t.sum(1, keepdim=True)  # (M, 1, S, B)
    val = ((pp * a_sum).sum((1, 2, 3)) + r_q.sum((1, 2, 3))) * (0.5 / (S * B))
    return val, (pp, qq, a_sum, t, r_q)


def _core_backward(kind: str, saved: tuple, grad: torch.Tensor, S: int, B: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """d/dp (M, C, 1, B) and d/dq (M, C, S, B) for the incoming gradient (M,) of the per-m means."""
    g = (grad / (S * B)).view(-1, 1, 1, 1)
    if kind == "mse":
        (diff,) = saved
        dq = diff * (g * (2.0 / diff.shape[1]))
        return -dq.sum(2, keepdim=True), dq
    if kind == "kl":
        pp, qq, w = saved
        dq = (qq - pp) * g
        return _softmax_vjp(pp, w * g).sum(2, keepdim=True), dq
    # dJSD/d(q logits) = 1/2 q (b - sum_c q b) = 1/2 (t - q r_q); the p side: 1/2 p (A - sum_c p A), A = sum_s a
    pp, qq, a_sum, t, r_q = saved
    dq = torch.addcmul(t, qq, r_q, value=-1.0).mul_(0.5 * g)
    return _softmax_vjp(pp, a_sum * (0.5 * g)), dq


def _softmax_vjp(prob: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Logit gradient through a softmax over dim 1: prob * (u - sum_c prob u). ``u`` is overwritten."""
    return u.sub_((prob * u).sum(1, keepdim=True)).mul_(prob)


class _MeanDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p_logits, q_logits, kind):
        pt = p_logits.transpose(1, 2).unsqueeze(2).contiguous()  # (M, C, 1, B)
        qt = q_logits.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)  # (M, C, S, B), own
        val, saved = _core_forward(kind, pt, qt)
        ctx.kind, ctx.sb = kind, qt.shape[2:]
        ctx.save_for_backward(*saved)
        return val

    @staticmethod
    def backward(ctx, grad):
        dp, dq = _core_backward(ctx.kind, ctx.saved_tensors, grad, *ctx.sb)
        return dp.squeeze(2).transpose(1, 2), dq.permute(0, 2, 3, 1), None


class _PermutedMeanDivergence(torch.autograd.Function):
    # The node's gradient is linear in its incoming gradient row by row (output m depends on inputs[m] only),
    # so forward computes the gradients at grad = 1 while its (M, C, S, B) temporaries are still in cache
    # and saves only those three (M, B, C) arrays; backward scales them by grad[m].
    @staticmethod
    def forward(ctx, p_logits, rest, contrib, perms, kind):
        if not any(ctx.needs_input_grad[:3]):
            return _permuted_value_and_grads(p_logits, rest, contrib, perms, kind, grads=False)[0]
        val, *grads = _permuted_value_and_grads(p_logits, rest, contrib, perms, kind)
        ctx.save_for_backward(*grads)
        return val

    @staticmethod
    def backward(ctx, grad):
        g = grad.view(-1, 1, 1)
        return (*(g * unit for unit in ctx.saved_tensors), None, None)


def _permuted_value_and_grads(p_logits: torch.Tensor, rest: torch.Tensor, contrib: torch.Tensor,
                              perms: torch.Tensor, kind: str, grads: bool = True) -> tuple[torch.Tensor, ...]:
    """``permuted_mean_divergence``'s value (M,) and, with ``grads``, d value[m] / d (p, rest, contrib),
    each (M, B, C): p, rest, contrib (M, B, C), perms (S, B). No big array outlives the call; the gradients
    are explicit (no autograd graph is recorded)."""
    with torch.no_grad():
        return _permuted_value_and_grads_untracked(p_logits, rest, contrib, perms, kind, grads)


def _permuted_value_and_grads_untracked(p_logits: torch.Tensor, rest: torch.Tensor, contrib: torch.Tensor,
                                        perms: torch.Tensor, kind: str, grads: bool
                                        ) -> tuple[torch.Tensor, ...]:
    S, B = perms.shape
    M, C = contrib.shape[0], contrib.shape[2]
    pt = p_logits.transpose(1, 2).unsqueeze(2).contiguous()  # (M, C, 1, B)
    ws = _workspace(contrib, (M, C, S, B))
    # q[m, c, s, i] = contrib[m, pi_s(i), c] + rest[m, i, c]: whole rows of contrib picked by one
    # index_select (rows of C contiguous values), then the add of rest writes them class-major (half the
    # time of a gather along the last axis of the class-major layout, then an add)
    rows = ws(1)  # (q's softmax reuses this buffer later)
    rows = torch.index_select(contrib, 1, perms.reshape(S * B),
                              out=None if rows is None else rows.view(M, S * B, C))
    qt = ws(0)
    qt = torch.add(rows.view(M, S, B, C).permute(0, 3, 1, 2), rest.transpose(1, 2).unsqueeze(2),
                   out=contrib.new_empty(M, C, S, B) if qt is None else qt)
    if kind == "jsd":  # (also for the value alone: the gradient's extra passes cost less than fresh arrays)
        val, dp, dq, scale = _jsd_value_and_grads(pt, qt, ws)
        if not grads:
            return (val,)
    elif not grads:
        return (_core_forward(kind, pt, qt)[0],)
    else:
        val, saved = _core_forward(kind, pt, qt)
        dp, dq = _core_backward(kind, saved, torch.ones_like(val), S, B)
        scale = 1.0
    d_rest = dq.sum(2)
    d_contrib = _sum_through_permutations(dq, perms, index_add=dq.device.type == "cpu")
    if scale != 1.0:
        d_rest.mul_(scale)
        d_contrib.mul_(scale)
    return (val, dp.squeeze(2).transpose(1, 2), d_rest.transpose(1, 2), d_contrib.transpose(1, 2))


def _sum_through_permutations(dq: torch.Tensor, perms: torch.Tensor, index_add: bool) -> torch.Tensor:
    """sum_{(s, i): pi_s(i) = k} dq[..., s, i] for each k: dq (M, C, S, B), perms (S, B) -> (M, C, B), the
    gradient reaching contrib[k] (which sits at q[s, i] wherever pi_s(i) = k). ``index_add``: one index_add
    into (M, C, B) (no inverse permutations, no gathered copy; the CPU's choice); else a gather through the
    inverse permutations and a sum over s (on a GPU, where index_add's atomics would vary the sums' order)."""
    M, C, S, B = dq.shape
    if index_add:
        flat = dq.new_zeros(M * C, B).index_add_(1, perms.reshape(S * B), dq.reshape(M * C, S * B))
        return flat.view(M, C, B)
    return torch.gather(dq, 3, inverse_permutations(perms).expand_as(dq)).sum(2)


def _jsd_value_and_grads(p: torch.Tensor, q: torch.Tensor, ws: Callable[[int], torch.Tensor | None]
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """``_core_forward`` then ``_core_backward`` at grad = 1 for the JSD, every (M, C, S, B) step in place in
    q and three workspace buffers: p (M, C, 1, B), q (M, C, S, B) (overwritten) -> (value (M,), d/dp
    (M, C, 1, B), dq, scale) with d/dq = scale * dq (the constant goes on dq's small reductions instead).

    The formulas of ``_core_forward`` with the signs flipped so that no pass adds ln 2:
    n = e - ln 2 = log(1/2 + exp(-|d|) / 2)  (exactly 0 where d == 0),
    -a = n + max(d, 0),  -b = n - min(d, 0)."""
    S, B = q.shape[2], q.shape[3]
    logp = F.log_softmax(p, dim=1)
    pp = logp.exp()
    logq = q.sub_(q.amax(1, keepdim=True))
    qq = torch.exp(logq, out=ws(1))
    se = qq.sum(1, keepdim=True)
    qq.mul_(se.reciprocal())
    d = logq.sub_(se.log_()).sub_(logp)  # d = log q - log p
    n = torch.abs(d, out=ws(2)).neg_().exp_()
    n = torch.add(_HALF, n, alpha=0.5, out=n).log_()  # e - ln 2
    neg_a_sum = torch.clamp_min(d, 0.0, out=ws(3)).add_(n).sum(2, keepdim=True)  # -sum_s a, (M, C, 1, B)
    neg_t = torch.sub(n, d.clamp_max_(0.0), out=d).mul_(qq)  # -q b
    neg_r_q = neg_t.sum(1, keepdim=True)  # -sum_c q b, (M, 1, S, B)
    k = -0.5 / (S * B)
    val = ((pp * neg_a_sum).sum((1, 2, 3)) + neg_r_q.sum((1, 2, 3))) * k
    # dJSD/d(q logits) = 1/2 q (b - sum_c q b) = 1/2 (t - q r_q); the p side: 1/2 p (A - sum_c p A)
    neg_dq = neg_t.addcmul_(qq, neg_r_q, value=-1.0)
    return val, _softmax_vjp(pp, neg_a_sum.mul_(k)), neg_dq, k


@torch.library.custom_op("mcrlab::permuted_mean_divergence", mutates_args=())
def _permuted_mean_divergence_op(p_logits: torch.Tensor, rest: torch.Tensor, contrib: torch.Tensor,
                                 perms: torch.Tensor, kind: str
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_PermutedMeanDivergence`` as one operator: (value (M,), d value[m] / d p, rest, contrib)."""
    val, dp, d_rest, d_contrib = _permuted_value_and_grads(p_logits, rest, contrib, perms, kind)
    return val, dp.contiguous(), d_rest.contiguous(), d_contrib.contiguous()


@_permuted_mean_divergence_op.register_fake
def _(p_logits, rest, contrib, perms, kind):
    return (p_logits.new_empty(p_logits.shape[0]), torch.empty_like(p_logits), torch.empty_like(rest),
            torch.empty_like(contrib))
