"""Cholesky factors that say when they cannot be trusted.

A symmetric positive semi-definite matrix whose Cholesky pivots span more than seven orders
of magnitude (condition number above ~1e14) is numerically singular for the solvers' needs:
an answer from its factor would be accurate only to ~1e-11, so callers take another path
(a least-squares or exact active-set solve, or a different starting point) instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["PIVOT_RATIO", "cholesky_or_none", "reliable"]

PIVOT_RATIO = 1e-7
"""Smallest ratio of the smallest to the largest Cholesky pivot that is trusted."""


def reliable(factor: Tensor, info: Tensor) -> Tensor:
    """Per matrix of a (batched) ``cholesky_ex`` result: the factorisation succeeded and its
    pivots stay within ``PIVOT_RATIO`` of each other."""
    pivots = factor.diagonal(dim1=-2, dim2=-1).abs()
    return (info == 0) & (pivots.amin(-1) > PIVOT_RATIO * pivots.amax(-1))


def cholesky_or_none(matrix: Tensor) -> Tensor | None:
    """The lower Cholesky factor of ``matrix``, or None where it is not :func:`reliable`."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    return factor if bool(reliable(factor, info)) else None
