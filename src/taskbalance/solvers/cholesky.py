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
(``dpotrs``); the factors agree to 2e-13 relative. Other devices, and CPUs without SciPy, use
the torch operations (the same results to rounding).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "PIVOT_RATIO",
    "cholesky_or_none",
    "reliable",
    "solve_with_factor",
    "submatrix",
]

PIVOT_RATIO = 1e-7
"""Smallest ratio of the smallest to the largest Cholesky pivot that is trusted."""

_HAS_SCIPY = importlib.util.find_spec("scipy") is not None
_LAPACK_DTYPES = (torch.float32, torch.float64)


def reliable(factor: Tensor, info: Tensor) -> Tensor:
    """Per matrix of a (batched) ``cholesky_ex`` result: the factorisation succeeded and its
    pivots stay within ``PIVOT_RATIO`` of each other."""
    pivots = factor.diagonal(dim1=-2, dim2=-1).abs()
    return (info == 0) & (pivots.amin(-1) > PIVOT_RATIO * pivots.amax(-1))


def _on_host_lapack(*tensors: Tensor) -> bool:
    """Whether ``tensors`` (2-D, one CPU dtype that LAPACK takes, no autograd) go to SciPy."""
    first = tensors[0]
    return (
        _HAS_SCIPY
        and first.device.type == "cpu"
        and first.dtype in _LAPACK_DTYPES
        and all(t.dim() == 2 and t.dtype == first.dtype and not t.requires_grad for t in tensors)
    )


def submatrix(matrix: Tensor, rows: Tensor, columns: Tensor | None = None) -> Tensor:
    """``matrix[rows][:, columns]`` (``columns`` defaults to ``rows``: a principal
    sub-matrix) for 1-D integer index tensors; on the CPU by NumPy's ``take`` (one row gather
    and one column gather of the rows, without the intermediate copies of ``index_select``)."""
    columns = rows if columns is None else columns
    if matrix.device.type == "cpu" and not matrix.requires_grad:
        host = matrix.numpy()
        return torch.from_numpy(np.take(np.take(host, rows.numpy(), 0), columns.numpy(), 1))
    return matrix.index_select(0, rows).index_select(1, columns)


def cholesky_or_none(matrix: Tensor) -> Tensor | None:
    """The lower Cholesky factor of ``matrix``, or None where it is not :func:`reliable`."""
    if matrix.dim() == 2 and _on_host_lapack(matrix):
        from scipy.linalg import lapack

        potrf = lapack.dpotrf if matrix.dtype == torch.float64 else lapack.spotrf
        # the transpose of a C-ordered matrix is its transpose in Fortran order, read without
        # a copy: its upper factor U (from its upper triangle, i.e. ``matrix``'s lower one, as
        # torch reads) is the transpose of ``matrix``'s lower factor L
        upper, info = potrf(matrix.numpy().T, lower=0, clean=1, overwrite_a=0)
        factor = torch.from_numpy(upper.T)
        info_tensor = torch.tensor(int(info))
    else:
        factor, info_tensor = torch.linalg.cholesky_ex(matrix)
    return factor if bool(reliable(factor, info_tensor)) else None


def solve_with_factor(rhs: Tensor, factor: Tensor) -> Tensor:
    """``(L L^T)^{-1} rhs`` for the lower Cholesky factor ``L`` and a ``(m, k)`` ``rhs``
    (``torch.cholesky_solve``)."""
    if _on_host_lapack(rhs, factor):
        from scipy.linalg import lapack

        potrs = lapack.dpotrs if factor.dtype == torch.float64 else lapack.spotrs
        # (L^T is U in Fortran order: no copy of the factor)
        solution, _ = potrs(factor.numpy().T, rhs.numpy(), lower=0)
        return torch.from_numpy(solution)
    return torch.cholesky_solve(rhs, factor)
