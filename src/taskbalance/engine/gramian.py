"""The Gram matrix of the task gradients, robust to their scale.

``G = sum_blocks B B^T`` over the flattened Jacobian blocks, accumulated block by block so the
``T x P`` Jacobian is never concatenated. The small ``T x T`` result is returned in float64.

Gradients of size 1e20 would overflow a float32 Gram matrix (1e40 > 3e38) and gradients of size
1e-20 would underflow it; when the fast float32 product is non-finite or its diagonal leaves
``[1e-30, 1e30]``, the blocks are rescaled by their largest absolute entry ``s`` and
``G = s^2 (J/s)(J/s)^T`` is formed in float64.

Beyond float64's own range (gradients above ~1e154 or below ~1e-154, where ``G`` itself
overflows or underflows), :func:`normalised_gramian_of_blocks` returns the pair
``(G / s^2, s)`` with ``s`` a power of two (so the division is exact): methods whose result
is homogeneous in the gradients' scale are then solved on the normalised matrix (see
:meth:`taskbalance.methods.base.Method.scale_degree`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from taskbalance.engine.host import fetch

__all__ = [
    "gramian_of_blocks",
    "in_float64_range",
    "in_safe_range",
    "normalised_gramian_of_blocks",
    "power_of_two",
    "representable_factor",
]

_LOW, _HIGH = 1e-30, 1e30


def _accumulate(blocks: Sequence[Tensor], scale: Tensor | None) -> Tensor:
    num_tasks = blocks[0].shape[0]
    total: Tensor | None = None
    for block in blocks:
        flat = block.reshape(num_tasks, -1)
        if scale is not None:
            flat = flat / scale.to(flat.dtype)
        contribution = flat @ flat.T
        total = contribution if total is None else total + contribution
    assert total is not None
    return total.to(torch.float64)


def _largest_entry(blocks: Sequence[Tensor]) -> Tensor:
    """Largest absolute entry of the blocks, in float64 (0 when they are empty)."""
    maxima = [b.detach().abs().amax().to(torch.float64) for b in blocks if b.numel()]
    return torch.stack(maxima).amax() if maxima else torch.zeros((), dtype=torch.float64)


def in_safe_range(gramian: Tensor) -> bool:
    """Whether a Gram matrix formed in float32 can be trusted: finite, and its largest diagonal
    entry within ``[1e-30, 1e30]`` (no overflow, no loss to underflow). An all-zero matrix is
    not trusted either: gradients below ~2.5e-23 square to zero in float32, and only the
    rescaled path can tell them from gradients that are really zero."""
    return in_float64_range(gramian, _LOW, _HIGH)


def gramian_of_blocks(blocks: Sequence[Tensor]) -> Tensor:
    """``(T, T)`` float64 Gram matrix of the rows of the (block-split) Jacobian, on the host
    (one transfer, see :mod:`taskbalance.engine.host`)."""
    if not blocks:
        raise ValueError("no gradient blocks to build a Gram matrix from")
    (fast,) = fetch(_accumulate(blocks, None))
    if in_safe_range(fast):
        return fast
    return fetch(_rescaled_gramian(blocks, fast))[0]


def _rescaled_gramian(blocks: Sequence[Tensor], fast: Tensor) -> Tensor:
    """The Gram matrix formed in float64 on blocks divided by their largest entry (the slow,
    exact path where the float32 product over- or underflowed)."""
    scale = _largest_entry(blocks)
    if not bool(torch.isfinite(scale)):
        return torch.full_like(fast, float("nan"))
    if bool(scale == 0):
        return torch.zeros_like(fast)
    scaled = _accumulate([b.to(torch.float64) for b in blocks], scale)
    return scaled * scale**2


def power_of_two(value: float) -> float:
    """The power of two nearest to ``value`` (> 0) in log scale: dividing by it is exact."""
    mantissa, exponent = math.frexp(value)
    return math.ldexp(1.0, exponent - 1 if mantissa < 0.7071 else exponent)


def representable_factor(weights: Tensor, dtype: torch.dtype) -> float:
    """A power of two ``s`` such that ``weights / s`` lies well inside ``dtype``'s range: 1
    unless some weight exceeds ``2^(3/4 maxexp)`` (``2^96`` for float32), else the ``s``
    that brings the largest to ``2^(maxexp / 2)``.

    Weights that float32 cannot hold are right where the gradients are tiny (Nash-MTL's
    ``w ~ 1/||g||`` on gradients of 1e-40, CAGrad or PCGrad mixing gradients of 1e-20 and
    1e20): ``w_i g_i`` is representable although ``w_i`` is not. The caller applies
    ``w / s`` and multiplies the result by ``s`` (exact: a power of two). Host weights are
    checked as a Python list (~3 us at T = 10); weights on a device are left alone (reading
    them would synchronise)."""
    if weights.device.type != "cpu" or not dtype.is_floating_point:
        return 1.0
    largest = max(map(abs, weights.tolist()), default=0.0)
    maxexp = _MAX_EXPONENTS.get(dtype)
    if maxexp is None:
        maxexp = _MAX_EXPONENTS[dtype] = math.frexp(torch.finfo(dtype).max)[1]  # 128: float32
    if not largest > math.ldexp(1.0, maxexp * 3 // 4) or not math.isfinite(largest):
        return 1.0
    return math.ldexp(1.0, math.frexp(largest)[1] - maxexp // 2)


_MAX_EXPONENTS: dict[torch.dtype, int] = {}


def in_float64_range(gramian: Tensor, low: float = 1e-200, high: float = 1e200) -> bool:
    """Whether a float64 Gram matrix is finite with its largest diagonal entry in
    ``[low, high]`` (an all-zero matrix is not: it may be gradients that underflowed).
    A ``T x T`` matrix on the host (the engine's) is checked in NumPy: a few microseconds
    instead of the dispatch of four tensor operations and two scalar reads."""
    if gramian.device.type == "cpu" and gramian.dtype == torch.float64:
        values = gramian.detach().numpy()
        return bool(np.isfinite(values).all()) and low <= float(values.diagonal().max()) <= high
    if not bool(torch.isfinite(gramian).all()):
        return False
    return low <= float(gramian.diagonal().max()) <= high


def normalised_gramian_of_blocks(blocks: Sequence[Tensor]) -> tuple[Tensor, float]:
    """``(G / s^2, s)`` for the rows of the (block-split) Jacobian, in float64, with ``s`` the
    power of two nearest to the largest absolute entry (``s = 1`` for an all-zero matrix):
    exact where ``G`` itself would overflow or underflow float64."""
    if not blocks:
        raise ValueError("no gradient blocks to build a Gram matrix from")
    largest = float(_largest_entry(blocks))
    if not math.isfinite(largest):
        raise ValueError("the task gradients have non-finite entries")
    scale = power_of_two(largest) if largest > 0 else 1.0
    divisor = torch.tensor(scale, dtype=torch.float64)
    (normalised,) = fetch(_accumulate([b.to(torch.float64) for b in blocks], divisor))
    return normalised, scale
