"""Cholesky factors that say when they cannot be trusted, and the dense kernels around them.

A symmetric positive semi-definite matrix whose Cholesky pivots span more than seven orders
of magnitude (condition number above ~1e14) is numerically singular for the solvers' needs:
an answer from its factor would be accurate only to ~1e-11, so callers take another path
(a least-squares or exact active-set solve, or a different starting point) instead.

On the CPU the sub-matrix gathers, factorisations and solves of the row-by-row solvers go to
NumPy and SciPy's LAPACK wrappers where SciPy is installed (it comes with scikit-learn, i.e.
with the ``cli`` and ``bench`` extras): measured on this project's CPU, one thread, a
480-wide principal sub-matrix of a 1000 x 1000 float64 matrix in 0.40 against 0.95 ms (two
``index_select``), its factorisation in 1.3-1.5 against 2.1-2.4 ms (``dpotrf`` against
``torch.linalg.cholesky_ex``), a solve with 30 right-hand sides in 0.43 against 0.63 ms
(``dpotrs``); the factors agree to 2e-13 relative. Without SciPy the factor comes from
NumPy's ``cholesky`` and the solve from ``torch.cholesky_solve``; other devices factor with
torch (the same results to rounding).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "PIVOT_RATIO",
    "cholesky_or_none",
    "host_cholesky_or_none",
    "host_solve_with_factor",
    "host_submatrix",
    "reliable",
]

PIVOT_RATIO = 1e-7
"""Smallest ratio of the smallest to the largest Cholesky pivot that is trusted."""

_HAS_SCIPY = importlib.util.find_spec("scipy") is not None
_LAPACK_DTYPES = (torch.float32, torch.float64)

Array = np.ndarray[Any, Any]


def reliable(factor: Tensor, info: Tensor) -> Tensor:
    """Per matrix of a (batched) ``cholesky_ex`` result: the factorisation succeeded and its
    pivots stay within ``PIVOT_RATIO`` of each other."""
    pivots = factor.diagonal(dim1=-2, dim2=-1).abs()
    return (info == 0) & (pivots.amin(-1) > PIVOT_RATIO * pivots.amax(-1))


def host_submatrix(matrix: Array, rows: Array, columns: Array | None = None) -> Array:
    """``matrix[rows][:, columns]`` (``columns`` defaults to ``rows``: a principal
    sub-matrix) for 1-D integer index arrays, by NumPy's ``take`` (a row gather, then a
    column gather of those rows)."""
    columns = rows if columns is None else columns
    return np.take(np.take(matrix, rows, 0), columns, 1)


def _pivots_trusted(factor: Array) -> bool:
    pivots = np.abs(np.diagonal(factor))
    return bool(pivots.min() > PIVOT_RATIO * pivots.max())


def host_cholesky_or_none(matrix: Array) -> Array | None:
    """The lower Cholesky factor of the float32/float64 array ``matrix`` (its lower triangle
    is read), or None where it is not trusted (failed, or pivots beyond ``PIVOT_RATIO``)."""
    if not np.isfinite(matrix).all():
        return None
    if _HAS_SCIPY:
        from scipy.linalg import lapack

        potrf = lapack.dpotrf if matrix.dtype == np.float64 else lapack.spotrf
        # the transpose of a C-ordered matrix is its transpose in Fortran order, read without
        # a copy: its upper factor U (from its upper triangle, i.e. ``matrix``'s lower one)
        # is the transpose of ``matrix``'s lower factor L
        upper, info = potrf(np.ascontiguousarray(matrix).T, lower=0, clean=1, overwrite_a=0)
        if info != 0:
            return None
        factor: Array = upper.T
    else:
        try:
            factor = np.linalg.cholesky(matrix)  # (reads the lower triangle)
        except np.linalg.LinAlgError:
            return None
    return factor if _pivots_trusted(factor) else None


def host_solve_with_factor(rhs: Array, factor: Array) -> Array:
    """``(L L^T)^{-1} rhs`` for a lower Cholesky factor ``L`` and a ``(m, k)`` ``rhs``."""
    if _HAS_SCIPY:
        from scipy.linalg import lapack

        potrs = lapack.dpotrs if factor.dtype == np.float64 else lapack.spotrs
        # (L^T is U in Fortran order where L is C-ordered: no copy of the factor)
        solution, _ = potrs(np.ascontiguousarray(factor).T, rhs, lower=0)
        return np.asarray(solution)
    result = torch.cholesky_solve(torch.from_numpy(rhs), torch.from_numpy(factor))
    return result.numpy()


def cholesky_or_none(matrix: Tensor) -> Tensor | None:
    """The lower Cholesky factor of ``matrix``, or None where it is not :func:`reliable`
    (on the CPU by :func:`host_cholesky_or_none`)."""
    if matrix.device.type == "cpu" and matrix.dim() == 2 and matrix.dtype in _LAPACK_DTYPES:
        factor = host_cholesky_or_none(matrix.detach().numpy())
        return None if factor is None else torch.from_numpy(factor)
    factor_tensor, info = torch.linalg.cholesky_ex(matrix)
    return factor_tensor if bool(reliable(factor_tensor, info)) else None
