"""``aggregate``: combine a matrix of task gradients the user already has."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from taskbalance.balancer import make_context, resolve_method, unnormalise
from taskbalance.engine.gramian import representable_factor
from taskbalance.engine.needs import Need
from taskbalance.engine.task_gradients import TaskGradients
from taskbalance.methods.base import Combination, Method

__all__ = ["aggregate", "combine_jacobian"]


def _vector(values: Tensor | Sequence[float] | None, num_tasks: int, what: str) -> Tensor | None:
    if values is None:
        return None
    vector = torch.as_tensor(values).detach().to(torch.float64).flatten()
    if vector.numel() != num_tasks:
        raise ValueError(
            f"got {vector.numel()} {what} for {num_tasks} tasks (rows of the Jacobian)"
        )
    if not bool(torch.isfinite(vector).all()):
        # (the balancer skips such a step; a method given them would weight from NaN, or a
        # stateful one keep it in its state)
        raise ValueError(f"{what} must be finite, got {vector.tolist()}")
    return vector


def aggregate(
    method: Method | str,
    jacobian: Tensor,
    *,
    losses: Tensor | Sequence[float] | None = None,
    metrics: Tensor | Sequence[float] | None = None,
) -> Tensor:
    """Combine a ``(T, P)`` matrix of per-task gradients into one ``(P,)`` update direction.

    Row ``i`` of ``jacobian`` is the gradient of task ``i``'s loss. Loss-weighting methods use
    ``losses`` (and ``metrics`` where they need them); gradient methods use the matrix (its
    Gram matrix when that suffices). A method given by name is created fresh on each call; pass
    an instance to keep its state (random generator, moving averages) across calls.

    >>> import torch, taskbalance
    >>> J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    >>> taskbalance.aggregate("pcgrad", J)
    tensor([0.5000, 1.5000])
    """
    method = resolve_method(method)
    combination = combine_jacobian(method, jacobian, losses=losses, metrics=metrics)
    if combination.weights is not None:
        # weights beyond the matrix's dtype (w ~ 1/|g| on float32 subnormals) as (w / s) g s
        factor = representable_factor(combination.weights, jacobian.dtype)
        weights = (combination.weights / factor).to(jacobian.device)
        combined = TaskGradients.from_matrix(jacobian.detach()).combine(weights)[0]
        return combined if factor == 1.0 else combined.mul_(factor)
    assert combination.direction is not None
    if combination.direction.shape != (jacobian.shape[1],):
        raise RuntimeError(f"{method.name} returned a direction of the wrong shape")
    return combination.direction.to(jacobian.dtype)


def combine_jacobian(
    method: Method | str,
    jacobian: Tensor,
    *,
    losses: Tensor | Sequence[float] | None = None,
    metrics: Tensor | Sequence[float] | None = None,
) -> Combination:
    """What :func:`aggregate` computes before applying it: the method's weights ``(T,)`` or
    direction ``(P,)`` for this matrix of task gradients (e.g. to reuse weights later)."""
    method = resolve_method(method)
    if not isinstance(jacobian, Tensor):
        raise TypeError(f"jacobian must be a tensor, got {type(jacobian).__name__}")
    if not jacobian.is_floating_point():
        # (an integer update would be the real one truncated; a complex one has no order)
        raise TypeError(
            f"jacobian must be a real floating-point tensor, got {jacobian.dtype}: "
            "convert it first, e.g. jacobian.double()"
        )
    if jacobian.ndim != 2 or jacobian.shape[0] < 1:
        raise ValueError(
            f"jacobian must have shape (T, P) with one row per task, got {tuple(jacobian.shape)}"
        )
    if not bool(torch.isfinite(jacobian).all()):
        raise ValueError("jacobian has non-finite entries (NaN or inf)")
    num_tasks = jacobian.shape[0]
    grads = TaskGradients.from_matrix(jacobian.detach())
    ctx = make_context(
        method,
        grads if method.needs >= Need.GRAMIAN else None,
        num_tasks=num_tasks,
        losses=_vector(losses, num_tasks, "losses"),
        metrics=_vector(metrics, num_tasks, "metrics"),
    )
    return unnormalise(method, method(ctx), ctx)
