"""The fused nodes as opaque operators under torch.compile (mcr/opaque.py): the operators are what the
compiled graph calls, their fake (shape) functions agree with them, and value and every gradient equal the
eager nodes' and the readable references', float64."""

from __future__ import annotations

import pytest
import torch

from mcrlab.mcr import contrastive_loss, permuted_mean_divergence, permuted_relu_linear_divergence
from tests.mcr.reference import div_reference


def _inputs(seed=0, M=2, B=6, C=3, S=4):
    g = torch.Generator().manual_seed(seed)
    p, rest, contrib = (torch.randn(M, B, C, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    perms = torch.stack([torch.randperm(B, generator=g) for _ in range(S)])
    return p, rest, contrib, perms


def _compiled_graph_ops(fn, *args):
    """Run fn under torch.compile with a backend that records dynamo's graphs; -> (result, called targets)."""
    targets: list[str] = []

    def backend(gm, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return out, targets


def _grads(value, inputs):
    return torch.autograd.grad(value.sum() if value.dim() else value, inputs)


@pytest.mark.parametrize("kind", ["jsd", "kl", "mse"])
def test_permuted_mean_divergence_compiled_is_the_opaque_operator_and_exact(kind):
    p, rest, contrib, perms = _inputs()
    w = torch.tensor([0.7, -1.3], dtype=torch.float64)  # distinct weights per row: the gradient is per row
    fn = lambda a, b, c, pi: permuted_mean_divergence(a, b, c, pi, kind) * w  # noqa: E731
    eager = fn(p, rest, contrib, perms)
    compiled, ops = _compiled_graph_ops(fn, p, rest, contrib, perms)
    assert "mcrlab.permuted_mean_divergence" in ops
    # the reference: q_{s,i} = rest_i + contrib[pi_s(i)], mean over (s, i) of div(p_i, q_{s,i})
    ref = torch.stack([torch.stack([div_reference(p[m], rest[m] + contrib[m][perms[s]], kind).mean()
                                    for s in range(perms.shape[0])]).mean() for m in range(p.shape[0])]) * w
    torch.testing.assert_close(compiled, eager, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(compiled, ref, rtol=1e-10, atol=1e-12)
    for a, b, c in zip(_grads(compiled, [p, rest, contrib]), _grads(eager, [p, rest, contrib]),
                       _grads(ref, [p, rest, contrib]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [None, 2 * 6 * 5])  # one chunk of permutations / one permutation per chunk
def test_relu_linear_divergence_compiled_is_the_opaque_operator_and_exact(chunk, monkeypatch):
    """The MLP game path (the re-run node in chunks of permutations, then the divergence node), eager and
    compiled (both nodes as one operator), against the reference loop."""
    if chunk is not None:
        monkeypatch.setattr("mcrlab.mcr.unique._CHUNK_ELEMS", chunk)
    p, rest, contrib, perms = _inputs(seed=1, C=5)  # hidden width H = 5
    g = torch.Generator().manual_seed(2)
    weight, bias = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    logits = p[..., :3]  # (M, B, C = 3)
    fn = lambda a, b, c, pi: permuted_relu_linear_divergence(a, b, c, pi, weight, bias, "jsd")  # noqa: E731
    eager = fn(logits, rest, contrib, perms)
    compiled, ops = _compiled_graph_ops(fn, logits, rest, contrib, perms)
    assert "mcrlab.permuted_relu_linear_divergence" in ops
    tail = lambda h: torch.relu(h) @ weight.T + bias  # noqa: E731
    ref = torch.stack([torch.stack([div_reference(logits[m], tail(rest[m] + contrib[m][perms[s]]), "jsd").mean()
                                    for s in range(perms.shape[0])]).mean() for m in range(2)])
    torch.testing.assert_close(compiled, eager, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(compiled, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(_grads(compiled * torch.tensor([1.0, -2.0], dtype=torch.float64), [p, rest, contrib]),
                    _grads(ref * torch.tensor([1.0, -2.0], dtype=torch.float64), [p, rest, contrib]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bound", ["supcon", "infonce"])
def test_contrastive_loss_compiled_is_the_opaque_operator_and_exact(bound):
    g = torch.Generator().manual_seed(3)
    embs = [torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    y = torch.randint(0, 3, (8,), generator=g)
    fn = lambda a, b: contrastive_loss([a, b], y, 0.5, bound, num_classes=3)  # noqa: E731
    eager = fn(*embs)
    compiled, ops = _compiled_graph_ops(fn, *embs)
    assert "mcrlab.nt_xent" in ops
    torch.testing.assert_close(compiled, eager, rtol=1e-13, atol=1e-15)
    for a, b in zip(_grads(compiled, embs), _grads(eager, embs), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_the_operators_pass_torch_library_opcheck():
    """Schema, fake (shape) functions and dispatch of the three operators agree with their real outputs."""
    p, rest, contrib, perms = (t.detach() if t.is_floating_point() else t for t in _inputs())
    torch.library.opcheck(torch.ops.mcrlab.permuted_mean_divergence.default, (p, rest, contrib, perms, "jsd"),
                          test_utils=("test_schema", "test_faketensor"))
    weight, bias = torch.randn(3, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.mcrlab.permuted_relu_linear_divergence.default,
                          (p, rest, contrib, perms, weight, bias, "jsd"), test_utils=("test_schema", "test_faketensor"))
    x = torch.randn(8, 4, dtype=torch.float64)
    onehot = torch.eye(3, dtype=torch.float64)[torch.tensor([0, 1, 2, 0])]
    torch.library.opcheck(torch.ops.mcrlab.nt_xent.default, (x, onehot, 2, 2 ** 0.5),
                          test_utils=("test_schema", "test_faketensor"))
