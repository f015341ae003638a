"""One backward per task head: the representation gradients and the heads' own gradients.

With a shared representation ``z`` and one head per task (``L_i = l_i(h_i(z; phi_i))``, the
heads sharing no computation), the step needs, per task, ``dL_i/dz`` (the rows of the
representation Jacobian ``J_z``) and ``dL_i/dphi_i``. Both come out of the same backward of
``L_i`` through head ``i``, which is then not traversed again: for any combination
``sum_i a_i L_i`` of the losses

* the trunk's gradient is one backward from ``z`` with ``J_z^T a = sum_i a_i dL_i/dz``;
* head ``i``'s gradient is ``a_i dL_i/dphi_i`` (the head is reached by ``L_i`` alone).

This saves a second pass through every head (a weighted objective's backward would traverse
them again) and lets each head's saved tensors be freed as soon as its backward has run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["HeadGradients", "head_backwards"]


@dataclass(frozen=True)
class HeadGradients:
    """``rows[i] = dL_i/dz`` (``None`` without a representation) and, per task, its head's
    parameters and their gradients."""

    rows: Tensor | None
    params: list[list[Tensor]]
    grads: list[list[Tensor]]

    def combined_rows(self, factors: Tensor) -> Tensor:
        """``sum_i a_i dL_i/dz``: the output gradient of ``z`` for the objective
        ``sum_i a_i L_i``."""
        if self.rows is None:
            raise ValueError("these head gradients were taken without a representation")
        combined: Tensor = torch.tensordot(factors.to(self.rows.dtype), self.rows, dims=1)
        return combined

    def weighted(
        self, factors: Tensor, unscale: float = 1.0, then: float = 1.0
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The heads' parameters and gradients for the objective ``sum_i a_i L_i``: head
        ``i``'s gradient times ``a_i`` (and ``unscale``, undoing a loss scale), then times
        ``then`` (a power of two taken out of factors that leave the gradients' dtype)."""
        scaled = (factors * unscale).unbind() if self.params else ()
        params: list[Tensor] = []
        grads: list[Tensor] = []
        for factor, task_params, task_grads in zip(scaled, self.params, self.grads, strict=True):
            if task_grads:
                params.extend(task_params)
                grads.extend(torch._foreach_mul(task_grads, factor))  # (in each grad's dtype)
        if then != 1.0 and grads:
            torch._foreach_mul_(grads, then)
        return params, grads


def head_backwards(
    losses: Sequence[Tensor],
    representation: Tensor | None,
    heads: Sequence[Sequence[Tensor]],
    *,
    retain_graph: bool = True,
) -> HeadGradients:
    """One backward per task from its own loss to ``representation`` and to ``heads[i]``
    (task ``i``'s own parameters). A loss that does not depend on ``z`` gets a zero row; a
    head parameter the loss does not reach is left out. ``retain_graph=False`` frees each
    head's saved tensors after its backward: only for heads that share no node (the trunk
    below ``z`` is not traversed, and stays usable). Without a representation only the
    heads' gradients are taken (each backward stops at the task's own parameters)."""
    if len(heads) != len(losses):
        raise ValueError(f"{len(heads)} heads for {len(losses)} losses")
    rows: list[Tensor] = []
    params: list[list[Tensor]] = []
    grads: list[list[Tensor]] = []
    for loss, head in zip(losses, heads, strict=True):
        row, kept, kept_grads = None, [], []
        inputs = list(head) if representation is None else [representation, *head]
        if loss.requires_grad and inputs:
            grads_of_loss = torch.autograd.grad(
                loss, inputs, retain_graph=retain_graph, allow_unused=True
            )
            if representation is not None:
                row, *head_grads = grads_of_loss
            else:
                head_grads = list(grads_of_loss)
            pairs = [(p, g) for p, g in zip(head, head_grads, strict=True) if g is not None]
            kept, kept_grads = [p for p, _ in pairs], [g for _, g in pairs]
        if representation is not None:
            rows.append(torch.zeros_like(representation) if row is None else row)
        params.append(kept)
        grads.append(kept_grads)
    return HeadGradients(None if representation is None else torch.stack(rows), params, grads)
