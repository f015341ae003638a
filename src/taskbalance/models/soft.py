"""Soft parameter sharing: one network per task, tied by a regulariser in the loss."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from taskbalance._validation import check_choice, finite_number
from taskbalance.models.contract import MultiTaskModel

__all__ = ["Regulariser", "SoftSharing"]

Regulariser = Literal["l2_to_mean", "pairwise_l2", "trace_norm"]


class _NuclearNorm(torch.autograd.Function):
    """``|X|_* = sum_i sigma_i(X)``, whose backward is the minimal-norm subgradient
    ``U_r V_r^T`` over the singular values above the rank tolerance
    ``max(T, P) eps sigma_max`` (where the nuclear norm is differentiable, its gradient).

    ``torch.linalg.matrix_norm(X, "nuc")`` back-propagates ``U V^T`` over *all* singular
    vectors, including those of zero singular values, whose directions are arbitrary: on
    columns initialised identically (a rank-1 stack) it pushed each column in a different
    random direction of norm ~1, raising the rank the regulariser is meant to lower."""

    @staticmethod
    def forward(ctx: Any, stacked: Tensor) -> Tensor:
        u, sigma, vh = torch.linalg.svd(stacked, full_matrices=False)
        tolerance = sigma.max() * max(stacked.shape) * torch.finfo(stacked.dtype).eps
        ctx.save_for_backward(u * (sigma > tolerance).to(u.dtype), vh)
        total: Tensor = sigma.sum()
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        u, vh = ctx.saved_tensors
        subgradient: Tensor = grad * (u @ vh)
        return subgradient


def nuclear_norm(stacked: Tensor) -> Tensor:
    """The nuclear norm of a matrix, with the minimal-norm subgradient (see
    :class:`_NuclearNorm`)."""
    norm: Tensor = _NuclearNorm.apply(stacked)  # type: ignore[no-untyped-call]
    return norm


class SoftSharing(MultiTaskModel):
    """Soft parameter sharing (Duong et al., ACL 2015; Yang & Hospedales, ICLR-W 2017).

    Every task has its own column (a full network with the same architecture), and
    corresponding parameters of the columns (same name and shape) are pulled together by a
    task-interaction regulariser, returned by :meth:`regularisation` as its **own loss term** so
    you see it and can weight or balance it like a task::

        predictions = model(x)
        losses = {t: loss_fn[t](predictions[t], y[t]) for t in model.task_names}
        losses["coupling"] = model.regularisation()
        balancer.backward(losses)

    Regularisers (``theta_t``: one parameter tensor of column ``t``, flattened; summed over
    the parameter tensors):

    * ``"l2_to_mean"``: ``sum_t |theta_t - mean_s theta_s|^2``;
    * ``"pairwise_l2"``: ``sum_{s<t} |theta_s - theta_t|^2``;
    * ``"trace_norm"``: the nuclear norm of the ``T x P`` stack of the ``theta_t`` (a convex
      surrogate of its rank: encourages the columns to share a low-dimensional subspace).
      Where the stack is rank-deficient (columns initialised identically) its gradient is
      the minimal-norm subgradient ``U_r V_r^T``: identical columns get identical gradients.

    Data flow: ``x -> column_t -> prediction_t`` for every task; the only interaction is the
    regulariser. No parameter is used by two tasks' predictions, so for the balancer all
    column parameters count as "shared" (gradient methods then see every task's gradient,
    disjoint except through the regulariser term) and :meth:`task_parameters` is empty.
    There is no shared representation: use ``level="parameters"``.

    Args:
        columns: ``task name -> network``; identical parameter names and shapes.
        regulariser: one of the names above.
        strength: multiplier of the regulariser.
    """

    supports_representation = False

    def __init__(
        self,
        columns: Mapping[str, nn.Module],
        regulariser: Regulariser = "l2_to_mean",
        strength: float = 1e-3,
    ) -> None:
        super().__init__(tuple(columns))
        check_choice(regulariser, get_args(Regulariser), "regulariser")
        finite_number("strength", strength, allow_zero=True)
        self.columns = nn.ModuleDict(dict(columns))
        self.regulariser = regulariser
        self.strength = float(strength)
        shapes = [
            {name: p.shape for name, p in column.named_parameters()}
            for column in self.columns.values()
        ]
        for task, column_shapes in zip(self.task_names[1:], shapes[1:], strict=True):
            if column_shapes != shapes[0]:
                raise ValueError(
                    f"column {task!r} does not match column {self.task_names[0]!r}: soft "
                    "sharing ties corresponding parameters, so columns need the same names and "
                    "shapes"
                )

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        return {task: column(*args, **kwargs) for task, column in self.columns.items()}

    def regularisation(self) -> Tensor:
        """The task-interaction loss term (already multiplied by ``strength``)."""
        named = [dict(column.named_parameters()) for column in self.columns.values()]
        total = torch.zeros(())
        for name in named[0]:
            stacked = torch.stack([params[name].reshape(-1) for params in named])  # (T, P)
            if self.regulariser == "l2_to_mean":
                term = (stacked - stacked.mean(dim=0, keepdim=True)).pow(2).sum()
            elif self.regulariser == "pairwise_l2":
                differences = stacked.unsqueeze(0) - stacked.unsqueeze(1)
                term = differences.pow(2).sum() / 2
            else:
                term = nuclear_norm(stacked)
            total = total.to(term) + term
        return self.strength * total

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.columns.parameters()

    def task_parameters(self, task: str | None = None) -> Iterator[nn.Parameter]:
        if task is not None:
            self.check_task(task)
        return iter(())

    def column_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """Parameters of one task's column."""
        return self.columns[self.check_task(task)].parameters()
