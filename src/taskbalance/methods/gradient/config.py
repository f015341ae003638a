"""ConFIG: conflict-free inverse gradients (``config``)."""

from __future__ import annotations

import torch

from taskbalance.engine.needs import Need
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.gradient._gram import inverse_norms, normalised_gramian
from taskbalance.methods.registry import register


@register
class ConFIG(Method):
    """ConFIG (Liu, Chen & Thuerey, ICLR 2025): a direction with the same positive cosine to
    every task gradient, as long as their sum of projections.

    ``v = U^+ 1`` for the matrix ``U`` of unit task gradients (the least-norm ``v`` with
    ``u_i . v = 1`` for all ``i``), ``g_u = v / |v|`` and ``d = (sum_i g_i . g_u) g_u``.
    Because ``v = U^T (U U^T)^+ 1`` lies in the span of the gradients, everything follows from
    the cosine matrix ``U U^T``: ``v = sum_i beta_i u_i`` with ``beta = (U U^T)^+ 1``. So the
    method needs only the Gram matrix (no pseudo-inverse of the ``T x P`` Jacobian). Zero
    gradients are left out of ``U``; where ``v = 0`` (no direction has a positive cosine to
    the gradients in the least-squares sense, e.g. opposite gradients in balance) ``d = 0``.

    Scale: the paper's (length = sum of the projections of the task gradients on ``g_u``).
    """

    name = "config"
    scale = "sum of projections on the common direction"
    family = "gradient manipulation"
    needs = Need.GRAMIAN
    homogeneity = 1.0
    reference = (
        "Liu, Chen & Thuerey, ConFIG: Towards Conflict-free Training of Physics Informed "
        "Neural Networks, ICLR 2025."
    )

    def combine(self, ctx: Context) -> Combination:
        G = normalised_gramian(ctx.require_gramian(self.name))
        inv = inverse_norms(G)
        cosines = G * inv.unsqueeze(0) * inv.unsqueeze(1)
        present = (inv > 0).to(torch.float64)
        beta = torch.linalg.pinv(cosines, rtol=1e-10, hermitian=True) @ present
        # no direction with positive cosine to the gradients in the least-squares sense
        # (e.g. as many anti-parallel gradients each way: v = U^+ 1 = 0): the rounding
        # residue of v would be normalised to an arbitrary unit direction, so it is zeroed
        beta = torch.where(beta.abs().max() <= 1e-10, torch.zeros_like(beta), beta)
        coefficients = inv * beta  # v = J^T (inv * beta)
        v_squared = (coefficients @ G @ coefficients).clamp_min(0)
        projection_sum = (G @ coefficients).sum()  # sum_i g_i . v
        factor = torch.where(
            v_squared > 0, projection_sum / torch.where(v_squared > 0, v_squared, 1.0), 0.0
        )
        # d = (sum_i g_i . v / |v|) v / |v|, and the original scale is restored by the caller's J
        return Combination(weights=factor * coefficients)
