"""Gradient transforms: small composable steps between the method and ``.grad`` (optax-like).

Two stages exist, and a transform belongs to one:

* :class:`PerTaskTransform` acts on each task's gradient *before* the tasks are combined. It
  sees the per-task gradient norms and returns a factor per task (a row scaling of the task
  Jacobian), so it needs at least the Gram matrix, never a copy of the gradients.
* :class:`CombinedTransform` acts on the final gradients of all parameters the balancer writes
  (shared and task-specific), *after* combining.

A list of transforms passed to :class:`taskbalance.Balancer` is applied in order within each
stage (the chain). Every transform has ``state_dict`` / ``load_state_dict`` / ``reset``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from taskbalance._validation import finite_number
from taskbalance.engine.needs import Need

__all__ = [
    "HALF_DTYPES",
    "CombinedTransform",
    "PerTaskTransform",
    "Transform",
    "fast_global_norm",
    "global_norm",
    "positive",
    "stored_entries",
]


def positive(name: str, value: float) -> float:
    """Validate a strictly positive finite hyperparameter."""
    return finite_number(name, value)


# half-precision dtypes, whose norms are taken in float32 (float16 overflows at 65504)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def fast_global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """Euclidean norm of all entries of ``tensors`` together, without reading anything on the
    host: exact unless it is not finite (an entry is inf/NaN, or finite float32 gradients
    whose norm exceeds ~1.8e19 overflow the squares), where :func:`global_norm` decides."""
    if not tensors:
        return torch.zeros((), dtype=torch.float64)
    tensors = _stored_entries(tensors)
    first = tensors[0].dtype
    if first not in HALF_DTYPES and all(t.dtype == first for t in tensors):
        # the usual case, with as few operations as possible (each small one costs ~10x its
        # warm time right after a backward: measured 100 us for the general path's extras)
        common: Tensor = torch.linalg.vector_norm(
            torch.stack(torch._foreach_norm(list(tensors))), dtype=torch.float64
        )
        return common
    low_precision = [t for t in tensors if t.dtype in HALF_DTYPES]
    regular = [t for t in tensors if t.dtype not in HALF_DTYPES]
    norms: list[Tensor] = list(torch._foreach_norm(regular)) if regular else []
    # half-precision norms overflow at 65504: take them in float32
    norms += [torch.linalg.vector_norm(t, dtype=torch.float32) for t in low_precision]
    dtype = torch.float64 if any(n.dtype == torch.float64 for n in norms) else torch.float32
    stacked = torch.stack([n if n.dtype == dtype else n.to(dtype) for n in norms])
    total: Tensor = torch.linalg.vector_norm(stacked, dtype=torch.float64)
    return total


def stored_entries(tensor: Tensor) -> Tensor:
    """``tensor``, or for a sparse one (``nn.Embedding(sparse=True)``'s gradient) its coalesced
    values: the same norm, and dense operations apply to it."""
    return tensor.coalesce().values() if tensor.is_sparse else tensor


def _stored_entries(tensors: Sequence[Tensor]) -> Sequence[Tensor]:
    if not any(t.is_sparse for t in tensors):
        return tensors
    return [stored_entries(t) for t in tensors]


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """Euclidean norm of all entries of ``tensors`` together (as one flat vector), exact at
    any scale: inf only where it exceeds float64, NaN where an entry is NaN. Sparse tensors
    count their stored entries (after coalescing)."""
    if not tensors:
        return torch.zeros(())
    tensors = _stored_entries(tensors)
    total = fast_global_norm(tensors)
    if bool(torch.isfinite(total)):
        return total
    # a norm overflowed (float32 squares beyond 3e38, float64 beyond 1e308) or an entry is
    # not finite: rescale by the largest entry, in float64, so finite gradients get their
    # true norm (inf only when it exceeds float64) and non-finite ones stay non-finite
    largest = torch.stack([t.detach().abs().amax().to(torch.float64) for t in tensors if t.numel()])
    peak = largest.max()
    if not bool(torch.isfinite(peak)) or not bool(peak > 0):
        return torch.full((), float("nan") if bool(torch.isnan(peak)) else float("inf"))
    scaled = [torch.linalg.vector_norm(t.to(torch.float64) / peak) for t in tensors]
    rescaled: Tensor = torch.linalg.vector_norm(torch.stack(scaled)) * peak
    return rescaled


class Transform(ABC):
    """Common base: a stage, what it needs from the engine, and (empty) state."""

    stage: ClassVar[str]
    needs: ClassVar[Need]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")

    def reset(self) -> None:  # noqa: B027 (stateless transforms have nothing to forget)
        """Forget all state."""


class PerTaskTransform(Transform):
    """Acts on every task's gradient before combining, through a factor per task."""

    stage = "per_task"
    needs = Need.GRAMIAN

    @abstractmethod
    def row_scale(self, norms: Tensor) -> Tensor:
        """Factor ``s_i`` for each task given the task-gradient norms ``(T,)``."""


class CombinedTransform(Transform):
    """Acts on the combined gradients of all parameters, after combining."""

    stage = "combined"
    needs = Need.LOSSES

    @abstractmethod
    def apply(self, grads: list[Tensor], params: list[Tensor]) -> list[Tensor]:
        """New gradients for ``params`` (same order and shapes)."""
