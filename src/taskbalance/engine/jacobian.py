"""Per-task gradients by vector-Jacobian products, at the cost floor of each level.

Three primitives, composed by the balancer:

* :func:`representation_jacobian`: the gradient of each task loss with respect to the shared
  representation ``z``, one small backward per task. Task ``i``'s backward only runs through
  the part of the graph between ``L_i`` and ``z`` (its head), so the total cost is about one
  backward through all heads. (Differentiating the *stacked* losses instead would push zero
  gradients through every head for every task: ``T^2`` head backwards.)
* :func:`batched_vjp`: ``T`` vector-Jacobian products of the same outputs in one call, with
  ``torch.autograd.grad(..., is_grads_batched=True)`` (a vmap over the backward pass). Used to
  carry the ``T`` representation gradients through the trunk at once (parameter level with a
  representation: ``J_theta = J_z dz/dtheta``), or with identity output gradients on the
  stacked losses when no representation is known. Where vmap cannot batch an operation
  (custom autograd functions without a vmap rule, some fused kernels) it falls back to ``T``
  sequential backwards and says why in one log line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor

from taskbalance.engine.heads import head_backwards
from taskbalance.engine.sparse import dense_gradient

__all__ = [
    "JacobianBlocks",
    "batched_vjp",
    "representation_jacobian",
    "task_jacobian",
    "warn_once",
]

logger = logging.getLogger(__name__)

JacobianBlocks = list[Tensor]
_warned: set[str] = set()


def warn_once(error: Exception, message: str) -> None:
    """Log ``message % reason`` once per distinct reason (the first line of ``error``), so a
    model that cannot take a fast path says why once, not every step."""
    reason = str(error).splitlines()[0]
    if reason not in _warned:
        _warned.add(reason)
        logger.warning(message, reason)


def _zeros_for_unused(
    grads: Sequence[Tensor | None], inputs: Sequence[Tensor], batch: int
) -> JacobianBlocks:
    return [
        torch.zeros((batch, *x.shape), dtype=x.dtype, device=x.device) if g is None else g
        for g, x in zip(grads, inputs, strict=True)
    ]


def batched_vjp(
    outputs: Tensor,
    inputs: Sequence[Tensor],
    grad_outputs: Tensor,
    *,
    batched: bool = True,
    retain_graph: bool = True,
) -> tuple[JacobianBlocks, bool]:
    """Rows ``grad_outputs[i]^T d outputs / d inputs`` for every ``i``, per input tensor.

    Args:
        outputs: tensor attached to the graph.
        inputs: tensors to differentiate with respect to.
        grad_outputs: ``(T, *outputs.shape)`` output gradients, one per row.
        batched: try the vmap path first.
        retain_graph: ``False`` frees the saved tensors the backward runs through (the
            sequential fallback frees them with its last row; the vmap path only where the
            caller knows it vectorises, since a failure part-way would leave the graph
            unusable for the fallback).

    Returns:
        ``(blocks, batched_ok)``: one ``(T, *x.shape)`` block per input (zeros where the output
        does not depend on it), and whether the batched path was used (callers remember a
        failure so that they do not retry every step).
    """
    num_rows = grad_outputs.shape[0]
    if batched:
        try:
            grads = torch.autograd.grad(
                outputs,
                list(inputs),
                grad_outputs=grad_outputs,
                is_grads_batched=True,
                retain_graph=retain_graph,
                allow_unused=True,
            )
            return _zeros_for_unused(grads, inputs, num_rows), True
        except RuntimeError as error:
            warn_once(
                error,
                "batched per-task backward is not supported by this model (%s); "
                f"falling back to {num_rows} sequential backward passes",
            )
    rows = [
        torch.autograd.grad(
            outputs,
            list(inputs),
            grad_outputs=row,
            retain_graph=retain_graph or index < num_rows - 1,
            allow_unused=True,
        )
        for index, row in enumerate(grad_outputs)
    ]
    blocks = []
    for position, x in enumerate(inputs):
        column = [r[position] for r in rows]
        blocks.append(torch.stack([_dense_row(g, x) for g in column]))
    return blocks, False


def _dense_row(grad: Tensor | None, x: Tensor) -> Tensor:
    """One row of a block: zeros where the output does not reach ``x``; a sparse gradient
    (``nn.Embedding(sparse=True)``, which the batched path cannot take) made dense."""
    return torch.zeros_like(x) if grad is None else dense_gradient(grad, x)


def task_jacobian(
    losses: Tensor, inputs: Sequence[Tensor], *, batched: bool = True
) -> tuple[JacobianBlocks, bool]:
    """Gradients of each of the ``T`` stacked losses with respect to each input.

    One batched backward with the identity as output gradients; see :func:`batched_vjp`.
    """
    identity = torch.eye(losses.shape[0], dtype=losses.dtype, device=losses.device)
    return batched_vjp(losses, inputs, identity, batched=batched)


def representation_jacobian(losses: Sequence[Tensor], representation: Tensor) -> Tensor:
    """``(T, *z.shape)`` gradients of each loss with respect to the representation ``z``.

    One backward per task from the task's own (unstacked) loss, so each runs through that
    task's head only. Zeros for a loss that does not depend on ``z``. The graph is retained.
    (:func:`taskbalance.engine.heads.head_backwards` also returns the heads' gradients.)
    """
    rows = head_backwards(losses, representation, [()] * len(losses)).rows
    assert rows is not None
    return rows
