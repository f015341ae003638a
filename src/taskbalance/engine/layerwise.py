"""The Gram matrix of the task gradients without ever holding the ``T x P`` Jacobian.

For methods that read only ``G = J J^T`` (MGDA, UPGrad, CAGrad, Nash-MTL, ...) the Jacobian is
an intermediate: ``G = sum_p J_p J_p^T`` over the parameter tensors ``p`` (``J_p`` is the
``T x |p|`` slice of task gradients for ``p``). This module computes the ``T`` vector-Jacobian
products in one vectorised backward (``torch.vmap`` over ``torch.autograd.grad``) and, as soon
as the ``T`` rows of one tensor's gradient exist, folds them into the Gram matrix and drops
them. A gradient hook on each input tensor sees the rows (the hook fires once per tensor, with
the gradient summed over every use of the tensor, so weight sharing is handled exactly); a
small custom autograd function with a ``vmap`` rule lifts the hook out of the vmap so it sees
all ``T`` rows at once, adds ``J_p J_p^T`` to the accumulator, and hands autograd back a
zero-stride tensor instead of the block, so nothing of size ``T x |p|`` outlives its own
contribution. Peak extra memory is then one tensor's ``T x |p|`` block plus the ``T`` copies of
the activation gradients of the backward pass (the same as TorchJD's autogram engine), instead
of the whole ``T x P`` Jacobian.

The weighted combination ``J^T w`` that follows is one ordinary backward of
``sum_i w_i (dL_i/dz)`` (or of ``sum_i w_i L_i``) instead of a matrix product with ``J``;
see :class:`taskbalance.engine.task_gradients.GramianGradients`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from taskbalance.engine.gramian import in_safe_range
from taskbalance.engine.jacobian import warn_once

__all__ = ["layerwise_gramian"]


class _GramAccumulator:
    """Running sum of ``J_p J_p^T`` over the input tensors, in float64."""

    def __init__(self) -> None:
        self.total: Tensor | None = None

    def add(self, rows: Tensor) -> None:
        flat = rows.reshape(rows.shape[0], -1)
        contribution = (flat @ flat.T).to(torch.float64)
        self.total = contribution if self.total is None else self.total + contribution


def _fold_into(accumulator: _GramAccumulator) -> Callable[[Tensor], Tensor]:
    """A gradient hook that adds the ``T`` rows it sees to ``accumulator`` and drops them."""

    class _Fold(torch.autograd.Function):
        @staticmethod
        def forward(grad: Tensor) -> Tensor:  # one row only: outside a vmap
            raise RuntimeError("the layer-wise Gram hook ran outside of a vectorised backward")

        @staticmethod
        def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
            pass

        @staticmethod
        def vmap(info: Any, in_dims: tuple[int | None], grad: Tensor) -> tuple[Tensor, None]:
            (dim,) = in_dims
            if dim is None:  # the same gradient for every row
                rows = grad.unsqueeze(0).expand(info.batch_size, *grad.shape)
            else:
                rows = grad.movedim(dim, 0)
            accumulator.add(rows)
            zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
            return zero.expand(rows.shape[1:]), None

    def hook(grad: Tensor) -> Tensor:
        result: Tensor = _Fold.apply(grad)  # type: ignore[no-untyped-call]
        return result

    return hook


def layerwise_gramian(
    outputs: Tensor, inputs: Sequence[Tensor], grad_outputs: Tensor
) -> Tensor | None:
    """``(T, T)`` float64 Gram matrix of the rows ``grad_outputs[i]^T d outputs / d inputs``.

    Args:
        outputs: tensor attached to the graph (the losses, or the shared representation).
        inputs: tensors to differentiate with respect to (the shared parameters).
        grad_outputs: ``(T, *outputs.shape)`` output gradients, one per row.

    Returns:
        The Gram matrix, or ``None`` when the model's backward cannot be vectorised (an
        operation without a vmap rule) or when the float32 products overflow or underflow
        (gradients beyond ``1e15`` or below ``1e-15``): the caller then materialises the
        Jacobian, whose Gram matrix is formed with rescaling. The graph is retained.
    """
    accumulator = _GramAccumulator()
    hook = _fold_into(accumulator)
    handles = [x.register_hook(hook) for x in inputs]  # type: ignore[no-untyped-call]

    def rows(grad_output: Tensor) -> tuple[Tensor, ...]:
        grads = torch.autograd.grad(
            outputs, list(inputs), grad_outputs=grad_output, retain_graph=True, allow_unused=True
        )
        return tuple(g for g in grads if g is not None)

    try:
        torch.vmap(rows)(grad_outputs)
    except RuntimeError as error:
        warn_once(
            error,
            "the layer-wise Gram matrix needs a vectorisable backward (%s); "
            "materialising the Jacobian instead",
        )
        return None
    finally:
        for handle in handles:
            handle.remove()
    total = accumulator.total
    if total is None:
        num_rows = grad_outputs.shape[0]
        return torch.zeros(num_rows, num_rows, dtype=torch.float64, device=grad_outputs.device)
    if not in_safe_range(total):
        return None  # float32 products overflowed or underflowed: the caller rescales blocks
    return total
