"""Gradient clipping: global norm, per-task norm (before combining), and value."""

from __future__ import annotations

import torch
from torch import Tensor

from taskbalance.transforms.base import CombinedTransform, PerTaskTransform, global_norm, positive

__all__ = ["ClipGlobalNorm", "ClipPerTaskNorm", "ClipValue"]

_EPS = 1e-6


class ClipGlobalNorm(CombinedTransform):
    """Rescale the combined update so that its global norm is at most ``max_norm``.

    ``g <- g * min(1, max_norm / (||g|| + 1e-6))`` with ``||g||`` the norm of all gradients
    together: the same rule as ``torch.nn.utils.clip_grad_norm_``, applied after the tasks are
    combined (so it bounds the step, whatever the method). The factor multiplies the gradients
    in its own precision, so half-precision gradients are scaled down by factors below
    float16's smallest number (~6e-8) instead of being zeroed.
    """

    def __init__(self, max_norm: float) -> None:
        self.max_norm = positive("max_norm", max_norm)

    def apply(self, grads: list[Tensor], params: list[Tensor]) -> list[Tensor]:
        total = global_norm(grads)
        factor = torch.clamp(self.max_norm / (total + _EPS), max=1.0)
        return [g * factor for g in grads]  # (a 0-dim factor keeps each gradient's dtype)

    def __repr__(self) -> str:
        return f"ClipGlobalNorm(max_norm={self.max_norm})"


class ClipPerTaskNorm(PerTaskTransform):
    """Clip each task's gradient to norm ``max_norm`` *before* combining.

    ``g_i <- g_i * min(1, max_norm / (||g_i|| + 1e-6))``. Unlike global clipping, one task with
    an exploding gradient cannot shrink the others' contributions or dominate the combination.
    The norms are those of the gradients the engine computed: with respect to the shared
    parameters at parameter level, to the shared representation at representation level.
    Forces the Gram matrix to be computed for loss-weighting methods.
    """

    def __init__(self, max_norm: float) -> None:
        self.max_norm = positive("max_norm", max_norm)

    def row_scale(self, norms: Tensor) -> Tensor:
        return torch.clamp(self.max_norm / (norms + _EPS), max=1.0)

    def __repr__(self) -> str:
        return f"ClipPerTaskNorm(max_norm={self.max_norm})"


class ClipValue(CombinedTransform):
    """Clamp every gradient entry to ``[-clip_value, clip_value]`` (after combining).

    The rule of ``torch.nn.utils.clip_grad_value_``, with one difference: an entry that is
    ``inf`` (an overflowed gradient) stays ``inf``, so the balancer skips the step (or, with a
    ``GradScaler``, lets the scaler see the overflow and lower its scale) instead of writing
    ``+-clip_value`` as if the gradient had been finite. Changes the direction of the update;
    prefer norm clipping unless individual coordinates explode.
    """

    def __init__(self, clip_value: float) -> None:
        self.clip_value = positive("clip_value", clip_value)

    def apply(self, grads: list[Tensor], params: list[Tensor]) -> list[Tensor]:
        return [self._clamp(g) for g in grads]

    def _clamp(self, g: Tensor) -> Tensor:
        if self.clip_value >= torch.finfo(g.dtype).max:
            return g  # (no finite entry of this dtype exceeds it)
        if g.is_sparse:  # (nn.Embedding(sparse=True)): the summed entries, kept sparse
            coalesced = g.coalesce()
            values = self._clamp(coalesced.values())
            return torch.sparse_coo_tensor(
                coalesced.indices(), values, g.shape, is_coalesced=True, check_invariants=False
            )
        clamped = g.clamp(-self.clip_value, self.clip_value)
        return torch.where(torch.isinf(g), g, clamped)  # (NaN stays NaN through clamp)

    def __repr__(self) -> str:
        return f"ClipValue(clip_value={self.clip_value})"
