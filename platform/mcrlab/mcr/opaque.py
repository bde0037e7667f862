"""The fused nodes as opaque operators for ``torch.compile`` (train.compile), with their exact gradients.

Inductor would trace through the hand-written autograd nodes (``_PermutedMeanDivergence``, ``_NTXent``,
the MLP head's ``relu_linear_divergence_and_grads``) and regenerate their loops; on a CPU its code for these
class-major reductions and permutation gathers is slower than theirs (measured: the late-fusion JSD node at
S = 32, B = 256 takes 1.5 + 1.1 ms forward + backward compiled against 1.4 + 0.4 ms eager). So under
compilation each node runs as one opaque custom operator that returns its value *and* the gradient of
each output row with respect to its inputs, computed by the node's own forward and backward (so the
numbers are the eager node's). That is exact because every one of these nodes is linear in its
incoming gradient row by row: output m depends on inputs[m] only (or the output is a scalar), so
d out / d inputs = grad[m] * J[m] with J the gradient at grad = 1. ``with_gradients`` then puts the
value into the compiled graph with that gradient (one multiply per input, fused by inductor), and
everything around the nodes (cross-entropies, the coefficient einsum, projections, sums) is compiled.
"""

from __future__ import annotations

import torch

__all__ = ["NodeContext", "value_and_unit_grads", "with_gradients"]


class NodeContext:
    """What an autograd.Function's forward and backward read and write on ``ctx``, outside autograd."""

    def __init__(self, needs_input_grad: tuple[bool, ...] = ()):
        self.needs_input_grad = needs_input_grad
        self.saved_tensors: tuple[torch.Tensor, ...] = ()

    def save_for_backward(self, *tensors: torch.Tensor) -> None:
        self.saved_tensors = tensors


def value_and_unit_grads(node: type[torch.autograd.Function], *args, needs_input_grad: tuple[bool, ...] = ()
                         ) -> tuple[torch.Tensor, tuple]:
    """``node``'s forward value and its backward at an incoming gradient of ones: (value, input grads)."""
    ctx = NodeContext(needs_input_grad or (True,) * len(args))
    value = node.forward(ctx, *args)
    return value, node.backward(ctx, torch.ones_like(value))


def with_gradients(value: torch.Tensor, inputs: list[torch.Tensor], unit_grads: list[torch.Tensor]
                   ) -> torch.Tensor:
    """``value`` (computed without autograd) as a differentiable function of ``inputs``: its gradient
    into inputs[i] is grad_out[m] * unit_grads[i][m] row by row (value (M,) or a scalar)."""
    return _WithGradients.apply(value, len(inputs), *inputs, *unit_grads)


class _WithGradients(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, n, *tensors):
        ctx.n = n
        ctx.save_for_backward(*tensors[n:])
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        grads = [grad.reshape(grad.shape + (1,) * (j.dim() - grad.dim())) * j for j in ctx.saved_tensors]
        return (None, None, *grads, *([None] * ctx.n))
