"""A symmetric matrix's truncated inverse square root applied to one vector.

For ``G = V diag(lambda) V^T`` and a relative cut-off ``c``, :func:`truncated_inverse_sqrt`
returns the eigenvalues and ``V_k diag(lambda_k^(-1/2)) V_k^T b`` over the eigenvalues
``lambda_k > c lambda_max``
(Aligned-MTL's ``B 1`` up to its scale ``sigma``). Only one vector is needed, not ``V``
itself, so for large matrices on the CPU the eigenvectors are never formed in the original
basis: with the Householder tridiagonalisation ``G = Q T Q^T`` (LAPACK ``dsytrd``) and
``T = S diag(lambda) S^T`` (``dstemr``, multiple relatively robust representations),

    V_k diag(lambda_k^(-1/2)) V_k^T b = Q S_k diag(lambda_k^(-1/2)) S_k^T Q^T b,

where ``Q^T b`` and ``Q z`` apply the reflectors to one vector (``dormqr``, ``O(n^2)``): the
reduction (``4/3 n^3``) and the tridiagonal eigenvectors are all the work, against a full
``eigh`` whose back-transformation of ``V`` costs as much again (measured at n = 1000, one
thread: 130 against 240 ms, the same result to 1e-13 relative). This path needs SciPy's
LAPACK wrappers (installed with scikit-learn, i.e. with the ``cli`` and ``bench`` extras);
without SciPy, on other devices and below ``TRIDIAGONAL_FROM`` the answer comes from
``torch.linalg.eigh`` (the same to rounding).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import torch
from torch import Tensor

from taskbalance.solvers.host_threads import blas_threads_like_torch

__all__ = ["TRIDIAGONAL_FROM", "truncated_inverse_sqrt"]

TRIDIAGONAL_FROM = 256
"""Size from which the tridiagonal path is taken on the CPU (measured, one thread: 10.2 against
9.1 ms at n = 256, 1.8 against 3.3 ms at n = 128; 60 against 34 ms at n = 512)."""

_HAS_SCIPY = importlib.util.find_spec("scipy") is not None


def truncated_inverse_sqrt(
    gramian: Tensor, vector: Tensor, relative_cutoff: float
) -> tuple[Tensor, Tensor]:
    """``(lambda, V_k diag(lambda_k^(-1/2)) V_k^T vector)`` for the symmetric float64
    ``gramian`` (``lambda``: all its eigenvalues, ascending), over the eigenvalues above
    ``relative_cutoff * lambda_max``; the second is zero when none is (``lambda_max <= 0``)."""
    n = gramian.shape[0]
    if gramian.device.type == "cpu" and n >= TRIDIAGONAL_FROM and _HAS_SCIPY:
        matrix = np.asfortranarray(gramian.detach().numpy(), dtype=np.float64)
        if np.isfinite(matrix).all():
            with blas_threads_like_torch():
                values, result = _tridiagonal_path(matrix, vector.detach().numpy(), relative_cutoff)
            return torch.from_numpy(values), torch.from_numpy(result)
    eigenvalues, vectors = torch.linalg.eigh(gramian)
    kept = eigenvalues > relative_cutoff * eigenvalues.max().clamp_min(0)
    basis, values = vectors[:, kept], eigenvalues[kept]
    return eigenvalues, basis @ (values.rsqrt() * (basis.T @ vector))


def _tridiagonal_path(
    matrix: np.ndarray[Any, Any], vector: np.ndarray[Any, Any], relative_cutoff: float
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    from scipy.linalg import eigh_tridiagonal, lapack

    n = matrix.shape[0]
    work = int(lapack.dsytrd_lwork(n, lower=1)[0])
    reflectors, diagonal, off_diagonal, tau, info = lapack.dsytrd(
        matrix, lower=1, lwork=work, overwrite_a=1
    )
    if info != 0:
        raise RuntimeError(f"LAPACK dsytrd failed (info = {info})")
    eigenvalues, tridiagonal_vectors = eigh_tridiagonal(
        diagonal, off_diagonal, lapack_driver="stemr", check_finite=False
    )
    # Q = diag(1, Q'), Q' the product of the n - 1 reflectors stored below the subdiagonal as
    # a QR factorisation of the trailing (n - 1) x (n - 1) block (dormqr's layout)
    stored = reflectors[1:, : n - 1]

    def apply(transpose: bool, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        out = np.array(x, dtype=np.float64, copy=True)
        tail = np.asfortranarray(out[1:].reshape(-1, 1))
        product, _, status = lapack.dormqr(
            b"L", b"T" if transpose else b"N", stored, tau, tail, max(64 * n, 1)
        )
        if status != 0:
            raise RuntimeError(f"LAPACK dormqr failed (info = {status})")
        out[1:] = product[:, 0]
        return out

    kept = eigenvalues > relative_cutoff * max(float(eigenvalues.max()), 0.0)
    basis, values = tridiagonal_vectors[:, kept], eigenvalues[kept]
    rotated = apply(True, vector)  # Q^T b
    inner = basis @ ((basis.T @ rotated) / np.sqrt(values))
    return eigenvalues, apply(False, inner)
