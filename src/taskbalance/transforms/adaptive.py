"""Adaptive clipping: AutoClip (percentile of the norm history) and AGC (unit-wise ratio)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from taskbalance.transforms.base import (
    HALF_DTYPES,
    CombinedTransform,
    PerTaskTransform,
    global_norm,
    positive,
)

__all__ = ["AGC", "AutoClip", "AutoClipPerTask"]

_EPS = 1e-6


class _NormHistory:
    """Ring buffer of observed norms (one column per tracked quantity), as tensors."""

    def __init__(self, percentile: float, max_history: int) -> None:
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        if not isinstance(max_history, int) or max_history < 1:
            raise ValueError(f"max_history must be a positive int, got {max_history!r}")
        self.percentile = float(percentile)
        self.max_history = max_history
        self.history: Tensor | None = None  # (n, k)

    def threshold(self, norms: Tensor) -> Tensor:
        """Record ``norms`` (``(k,)``) and return the percentile of each column so far.

        A norm that is not finite (a step the balancer will skip) is kept as NaN, which the
        percentile ignores: it neither lowers the threshold (as a 0 would) nor raises it; a
        column with no finite norm yet has a NaN threshold, so its update is not finite and
        the step is skipped."""
        row = norms.detach().to(torch.float64).reshape(1, -1)
        row = torch.where(torch.isfinite(row), row, torch.nan)
        if self.history is None or self.history.shape[1] != row.shape[1]:
            self.history = row
        else:
            self.history = torch.cat([self.history, row])[-self.max_history :]
        return torch.nanquantile(self.history, self.percentile / 100.0, dim=0)

    def state_dict(self) -> dict[str, Any]:
        return {"history": None if self.history is None else self.history.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        history = state["history"]
        self.history = None if history is None else history.clone()


class _WithHistory:
    """State handling shared by the AutoClip transforms (the norm history)."""

    _history: _NormHistory

    def state_dict(self) -> dict[str, Any]:
        return self._history.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._history.load_state_dict(state)

    def reset(self) -> None:
        self._history.history = None


class AutoClip(_WithHistory, CombinedTransform):
    """AutoClip (Seetharaman et al., MLSP 2020) on the combined update.

    Every step the global norm of the update is added to a history and the update is clipped to
    the ``percentile``-th percentile of that history (``g <- g min(1, q / (||g|| + 1e-6))``).
    No threshold to tune: it adapts to the scale of the gradients, and only clips the rare
    spikes (10th percentile in the paper clips most steps a little; 90 clips only outliers).

    Args:
        percentile: in ``(0, 100]`` (paper: 10).
        max_history: keep the last ``max_history`` norms (a window; the paper keeps all).
    """

    def __init__(self, percentile: float = 10.0, max_history: int = 10_000) -> None:
        self._history = _NormHistory(percentile, max_history)

    def apply(self, grads: list[Tensor], params: list[Tensor]) -> list[Tensor]:
        total = global_norm(grads)
        threshold = self._history.threshold(total.reshape(1))[0]
        factor = torch.clamp(threshold / (total + _EPS), max=1.0)
        return [g * factor for g in grads]  # (a 0-dim factor keeps each gradient's dtype)

    def __repr__(self) -> str:
        return f"AutoClip(percentile={self._history.percentile})"


class AutoClipPerTask(_WithHistory, PerTaskTransform):
    """AutoClip applied to each task's gradient before combining, with one norm history per
    task: a task whose gradient suddenly spikes is clipped back to its own usual size, without
    shrinking the other tasks. Needs the per-task gradient norms (the Gram diagonal).

    Args:
        percentile: in ``(0, 100]``.
        max_history: window of norms kept per task.
    """

    def __init__(self, percentile: float = 10.0, max_history: int = 10_000) -> None:
        self._history = _NormHistory(percentile, max_history)

    def row_scale(self, norms: Tensor) -> Tensor:
        thresholds = self._history.threshold(norms).to(norms)
        return torch.clamp(thresholds / (norms + _EPS), max=1.0)

    def __repr__(self) -> str:
        return f"AutoClipPerTask(percentile={self._history.percentile})"


def unitwise_norm(x: Tensor) -> Tensor:
    """Norm per output unit (over all dimensions but the first) for matrices and kernels,
    the whole norm for vectors and scalars, broadcastable against ``x``; float32 for
    half-precision ``x`` (whose norms overflow at 65504), else ``x``'s dtype."""
    dtype = torch.float32 if x.dtype in HALF_DTYPES else None
    norms: Tensor
    if x.ndim <= 1:
        norms = torch.linalg.vector_norm(x, dtype=dtype).expand(x.shape)
    else:
        norms = torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True, dtype=dtype)
    return norms


def _exact_unitwise_norm(x: Tensor) -> Tensor:
    """:func:`unitwise_norm` in float64 from each unit's largest entry: finite wherever the
    unit's norm is (squares of entries beyond ~1e19 overflow float32), NaN where ``x`` is."""
    dims = tuple(range(x.ndim)) if x.ndim <= 1 else tuple(range(1, x.ndim))
    wide = x.detach().to(torch.float64)
    peak = wide.abs().amax(dim=dims, keepdim=True)
    unit = torch.where(peak > 0, peak, 1.0)
    norms: Tensor = torch.linalg.vector_norm(wide / unit, dim=dims, keepdim=True) * unit
    return norms.expand(x.shape) if x.ndim <= 1 else norms


def _unitwise_norms(tensors: list[Tensor]) -> list[Tensor]:
    """:func:`unitwise_norm` of each tensor, recomputed exactly (:func:`_exact_unitwise_norm`)
    where one overflowed: one host read per call."""
    norms = [unitwise_norm(t) for t in tensors]
    if not norms:
        return norms
    peaks = torch.stack([n.amax().to(torch.float64) for n in norms])
    if bool(torch.isfinite(peaks).all()):
        return norms
    return [
        n if bool(torch.isfinite(n).all()) else _exact_unitwise_norm(t)
        for n, t in zip(norms, tensors, strict=True)
    ]


def _units(grad: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor]]:
    """``(gradient, weight, back)`` with the same units along the first dimension, and
    ``back`` making a clipped gradient of that form into one like ``grad``. A sparse
    gradient whose rows are the units (``nn.Embedding(sparse=True)``) is clipped on its
    stored rows against those rows of the weight, and stays sparse; another sparse layout is
    clipped dense."""
    if not grad.is_sparse:
        return grad, weight, lambda clipped: clipped
    if grad.sparse_dim() != 1 or grad.ndim < 2:
        return grad.to_dense(), weight, lambda clipped: clipped
    coalesced = grad.coalesce()
    rows = coalesced.indices()

    def back(clipped: Tensor) -> Tensor:
        return torch.sparse_coo_tensor(
            rows, clipped, grad.shape, is_coalesced=True, check_invariants=False
        )

    return coalesced.values(), weight[rows[0]], back


class AGC(CombinedTransform):
    """Adaptive gradient clipping (Brock et al., ICML 2021, NFNets).

    For every unit ``i`` of every parameter (a row of a weight matrix, an output channel of a
    convolution kernel, a whole bias vector):

    ``G_i <- G_i * min(1, lambda * max(||W_i||, eps) / ||G_i||)``,

    i.e. a unit's gradient may not exceed a fraction ``lambda`` of its weights' norm. Scale-free
    across layers, which makes it the clipping of choice for deep networks whose layers have
    very different weight scales; applied after combining.

    Args:
        clipping: ``lambda`` (paper: 0.01 for large batches, larger for small ones).
        eps: floor of the weight norm (paper: 1e-3), so zero-initialised units can move.
    """

    def __init__(self, clipping: float = 0.01, eps: float = 1e-3) -> None:
        self.clipping = positive("clipping", clipping)
        self.eps = positive("eps", eps)

    def apply(self, grads: list[Tensor], params: list[Tensor]) -> list[Tensor]:
        units = [_units(g, p.detach()) for g, p in zip(grads, params, strict=True)]
        # (weights and gradients together: one host read for the overflow check)
        norms = _unitwise_norms([w for _, w, _ in units] + [g for g, _, _ in units])
        weight_norms, grad_norms = norms[: len(params)], norms[len(params) :]
        clipped = []
        for (g, _, back), weight_norm, grad_norm in zip(
            units, weight_norms, grad_norms, strict=True
        ):
            max_norm = self.clipping * weight_norm.clamp_min(self.eps)
            factor = torch.where(grad_norm > max_norm, max_norm / grad_norm.clamp_min(1e-30), 1.0)
            # (in the factor's precision: a half-precision factor would flush small ones to 0)
            clipped.append(back((g * factor).to(g.dtype)))
        return clipped

    def __repr__(self) -> str:
        return f"AGC(clipping={self.clipping}, eps={self.eps})"
