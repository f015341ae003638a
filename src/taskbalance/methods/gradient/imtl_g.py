"""IMTL-G: the gradient-balance half of IMTL (``imtl_g``)."""

from __future__ import annotations

import torch
from torch import Tensor

from taskbalance.engine.needs import Need
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.gradient._gram import inverse_norms, normalised_gramian
from taskbalance.methods.registry import register


def equal_projection_weights(gramian: Tensor) -> Tensor:
    """Weights ``alpha`` (summing to 1) such that ``d = J^T alpha`` has the same projection
    onto every unit task gradient ``u_i = g_i / |g_i|``.

    With ``p(alpha) = (g_j . u_i)_i^T alpha`` the projections, IMTL-G's conditions are
    ``(I - 1 1^T / T) p(alpha) = 0`` and ``1^T alpha = 1``: one linear system, read off the
    Gram matrix, solved by the pseudo-inverse. Where the gradients are in general position
    this is the paper's closed form (``alpha_{2:T} = (g_1 U^T)(D U^T)^{-1}``). Where the
    solution is not unique (parallel or duplicate gradients: every ``alpha`` gives equal
    projections) the pseudo-inverse picks the minimum-norm ``alpha``, and where no exact
    solution exists, the least-squares one; both are symmetric in the tasks, so the update
    does not depend on their order (the closed form, which singles out task 1, returned
    task 1's gradient for parallel gradients). Zero gradients get ``u_i = 0``.
    """
    G = normalised_gramian(gramian)
    num_tasks = G.shape[0]
    if num_tasks == 1:
        return torch.ones(1, dtype=torch.float64, device=G.device)
    inv = inverse_norms(G)
    projections = (G * inv.unsqueeze(0)).T  # [i, j] = g_j . u_i
    centred = projections - projections.mean(dim=0, keepdim=True)
    ones = torch.ones(1, num_tasks, dtype=G.dtype, device=G.device)
    system = torch.cat([centred, ones])
    target = torch.zeros(num_tasks + 1, dtype=G.dtype, device=G.device)
    target[-1] = 1.0
    square = _square_solve(system, target) if num_tasks >= _SQUARE_FROM else None
    if square is not None:
        return square
    weights: Tensor = torch.linalg.pinv(system, rtol=1e-10) @ target
    return weights


_SQUARE_FROM = 16
"""Tasks from which the LU solve is tried first (below, the pseudo-inverse of the tiny system
costs less than the LU, its checks and the residual: measured 18-28% at T = 2-3, equal at 10,
half at 40)."""


def _square_solve(system: Tensor, target: Tensor) -> Tensor | None:
    """The unique solution where there is one, by LU instead of an SVD (twice as fast at
    T = 40, 14x at T = 1000): the centred rows sum to zero, so the last of them is implied by the
    others and the remaining ``T x T`` system has the same solutions. None (use the
    pseudo-inverse) where its LU pivots say it is near singular (ratio below 1e-7, where the
    minimum-norm choice matters) or the solution does not satisfy the full system."""
    square = torch.cat([system[:-2], system[-1:]])
    factor, pivots, info = torch.linalg.lu_factor_ex(square)
    diagonal = factor.diagonal().abs()
    if int(info) != 0 or not bool(diagonal.min() > 1e-7 * diagonal.max()):
        return None
    rhs = torch.cat([target[:-2], target[-1:]]).unsqueeze(1)
    solution: Tensor = torch.linalg.lu_solve(factor, pivots, rhs).squeeze(1)
    residual = system @ solution - target
    if not bool(torch.isfinite(solution).all()) or float(residual.abs().max()) > 1e-9:
        return None
    return solution


@register
class IMTLG(Method):
    """IMTL-G (Liu et al., ICLR 2021): the update has equal projections on all task gradients.

    Finds ``d = sum_i alpha_i g_i`` with ``sum alpha_i = 1`` and ``d . u_i`` the same for every
    unit task gradient ``u_i``, so no task is favoured in the direction of its own gradient
    (closed form, see :func:`equal_projection_weights`). From the Gram matrix only.

    Scale: weights sum to 1 (paper, LibMTL).
    """

    name = "imtl_g"
    scale = "weights sum to 1"
    family = "gradient manipulation"
    needs = Need.GRAMIAN
    homogeneity = 1.0
    reference = "Liu et al., Towards Impartial Multi-task Learning, ICLR 2021 (IMTL-G)."

    def combine(self, ctx: Context) -> Combination:
        return Combination(weights=equal_projection_weights(ctx.require_gramian(self.name)))
