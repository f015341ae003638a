"""Small helpers on Gram matrices shared by the gradient methods."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["inverse_norms", "normalised_gramian"]


def inverse_norms(gramian: Tensor) -> Tensor:
    """``1 / |g_i|`` from the diagonal, 0 for zero gradients (float64)."""
    norms = gramian.diagonal().to(torch.float64).clamp_min(0).sqrt()
    positive = norms > 0
    return torch.where(positive, 1.0 / torch.where(positive, norms, 1.0), 0.0)


def normalised_gramian(gramian: Tensor) -> Tensor:
    """``G / max_i G_ii`` in float64 (unchanged when all gradients are zero)."""
    G = gramian.to(torch.float64)
    G = 0.5 * (G + G.T)
    scale = G.diagonal().max()
    return G / scale if bool(scale > 0) else G


_SAFE_LOW, _SAFE_HIGH = 1e-15, 1e15


def weighted_sum_of_rows(coefficients: Tensor, matrix: Tensor) -> Tensor:
    """``coefficients @ matrix`` in the matrix's dtype for float64 ``coefficients`` that may
    exceed it (``max_j |g_j| / |g_i|`` on gradients of 1e-20 and 1e20): a power of two ``s``
    is taken out of them and put back on the result (exact), computed on the device (no
    read); ``s = 1`` unless the largest coefficient exceeds ``2^(maxexp / 2)``."""
    maxexp = math.frexp(torch.finfo(matrix.dtype).max)[1]
    largest = coefficients.abs().amax()
    shift = (torch.frexp(largest).exponent - maxexp // 2).clamp_min(0)
    scale = torch.ldexp(torch.ones_like(largest), shift)
    combined: Tensor = (coefficients / scale).to(matrix.dtype) @ matrix
    return combined.mul_(scale.to(matrix.dtype))


def row_norms(matrix: Tensor) -> Tensor:
    """Euclidean norms of the rows in float64, without overflow or underflow at any scale.

    Entries of moderate size (largest in ``[1e-15, 1e15]``) are summed in the matrix's own
    precision (no wide copy of a ``T x P`` matrix); otherwise the rows are rescaled by the
    largest entry and summed in float64."""
    if matrix.numel() == 0:  # no coordinates (e.g. a (T, 0) Jacobian): zero norms
        return torch.zeros(matrix.shape[:-1], dtype=torch.float64, device=matrix.device)
    low, high = torch.aminmax(matrix.detach())
    scale = torch.maximum(-low, high).to(torch.float64)
    norms: Tensor
    if _SAFE_LOW <= float(scale) <= _SAFE_HIGH:
        norms = torch.linalg.vector_norm(matrix, dim=-1).to(torch.float64)
        return norms
    wide = matrix.to(torch.float64)
    if not bool(scale > 0) or not bool(torch.isfinite(scale)):
        norms = torch.linalg.vector_norm(wide, dim=-1)
        return norms
    norms = torch.linalg.vector_norm(wide / scale, dim=-1) * scale
    return norms
