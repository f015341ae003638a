"""Per-task gradients by batched vector-Jacobian products.

``task_jacobian(losses, inputs)`` returns, for each input tensor ``x`` (a shared parameter, or
the shared representation), the block ``dL/dx`` of shape ``(T, *x.shape)``: row ``i`` is the
gradient of task ``i``'s loss. All ``T`` rows come from one call to
``torch.autograd.grad(..., is_grads_batched=True)`` (a vmap over the backward pass with the
identity as batched output gradients). Where vmap cannot batch an operation (custom autograd
functions without a vmap rule, some fused kernels), it falls back to ``T`` sequential backwards
and says why in one log line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["JacobianBlocks", "task_jacobian"]

logger = logging.getLogger(__name__)

JacobianBlocks = list[Tensor]
_warned: set[str] = set()


def _batched(losses: Tensor, inputs: Sequence[Tensor]) -> tuple[Tensor | None, ...]:
    identity = torch.eye(losses.shape[0], dtype=losses.dtype, device=losses.device)
    return torch.autograd.grad(
        losses,
        list(inputs),
        grad_outputs=identity,
        is_grads_batched=True,
        retain_graph=True,
        allow_unused=True,
    )


def _sequential(losses: Tensor, inputs: Sequence[Tensor]) -> list[tuple[Tensor | None, ...]]:
    return [
        torch.autograd.grad(loss, list(inputs), retain_graph=True, allow_unused=True)
        for loss in losses
    ]


def task_jacobian(
    losses: Tensor, inputs: Sequence[Tensor], *, batched: bool = True
) -> tuple[JacobianBlocks, bool]:
    """Gradients of each of the ``T`` losses with respect to each input.

    Args:
        losses: ``(T,)`` tensor of task losses attached to the graph.
        inputs: tensors to differentiate with respect to.
        batched: try the batched path first.

    Returns:
        ``(blocks, batched_ok)``: one ``(T, *x.shape)`` block per input (zeros for inputs that
        a loss does not reach), and whether the batched path was used (callers remember a
        failure so that they do not retry it every step). The graph is retained.
    """
    num_tasks = losses.shape[0]
    if batched:
        try:
            grads = _batched(losses, inputs)
            return [
                torch.zeros((num_tasks, *x.shape), dtype=x.dtype, device=x.device)
                if g is None
                else g
                for g, x in zip(grads, inputs, strict=True)
            ], True
        except RuntimeError as error:
            reason = str(error).splitlines()[0]
            if reason not in _warned:
                _warned.add(reason)
                logger.warning(
                    "batched per-task backward is not supported by this model (%s); "
                    "falling back to %d sequential backward passes",
                    reason,
                    num_tasks,
                )
    per_task = _sequential(losses, inputs)
    blocks = []
    for position, x in enumerate(inputs):
        rows = []
        for task_grads in per_task:
            grad = task_grads[position]
            rows.append(torch.zeros_like(x) if grad is None else grad)
        blocks.append(torch.stack(rows))
    return blocks, False
