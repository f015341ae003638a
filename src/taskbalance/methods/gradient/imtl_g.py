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

    IMTL-G's closed form: with ``D`` the rows ``g_1 - g_i`` and ``U`` the rows
    ``u_1 - u_i`` (``i = 2..T``), ``alpha_{2:T} = (g_1 U^T) (D U^T)^+`` and
    ``alpha_1 = 1 - sum alpha_{2:T}``; every product is read off the Gram matrix. The
    pseudo-inverse keeps it finite for collinear gradients (then the projections cannot all be
    made equal and the least-squares solution is used). Zero gradients get ``u_i = 0``.
    """
    G = normalised_gramian(gramian)
    num_tasks = G.shape[0]
    if num_tasks == 1:
        return torch.ones(1, dtype=torch.float64, device=G.device)
    inv = inverse_norms(G)
    # GU[i, k] = g_i . u_k
    GU = G * inv.unsqueeze(0)
    first_dot_U = GU[0, 0] - GU[0, 1:]  # g_1 . (u_1 - u_k)
    # (g_1 - g_j) . (u_1 - u_k) = GU[0,0] - GU[0,k] - GU[j,0] + GU[j,k]
    DU = GU[0, 0] - GU[0, 1:].unsqueeze(0) - GU[1:, 0].unsqueeze(1) + GU[1:, 1:]
    rest = first_dot_U @ torch.linalg.pinv(DU, rtol=1e-10, hermitian=False)
    return torch.cat([(1.0 - rest.sum()).unsqueeze(0), rest])


@register
class IMTLG(Method):
    """IMTL-G (Liu et al., ICLR 2021): the update has equal projections on all task gradients.

    Finds ``d = sum_i alpha_i g_i`` with ``sum alpha_i = 1`` and ``d . u_i`` the same for every
    unit task gradient ``u_i``, so no task is favoured in the direction of its own gradient
    (closed form, see :func:`equal_projection_weights`). From the Gram matrix only.

    Scale: weights sum to 1 (paper, LibMTL).
    """

    name = "imtl_g"
    family = "gradient manipulation"
    needs = Need.GRAMIAN
    reference = "Liu et al., Towards Impartial Multi-task Learning, ICLR 2021 (IMTL-G)."

    def combine(self, ctx: Context) -> Combination:
        return Combination(weights=equal_projection_weights(ctx.require_gramian(self.name)))
