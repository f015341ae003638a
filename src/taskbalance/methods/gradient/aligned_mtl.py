"""Aligned-MTL (``aligned_mtl``): align the task gradients' principal components."""

from __future__ import annotations

from typing import Any, Literal

import torch

from taskbalance.engine.needs import Need
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register
from taskbalance.solvers.symmetric_eigen import truncated_inverse_sqrt

_EPS = torch.finfo(torch.float32).eps


@register
class AlignedMTL(Method):
    """Aligned-MTL (Senushkin et al., CVPR 2023): make the system of task gradients
    well-conditioned.

    With ``G = V diag(lambda) V^T`` (:mod:`taskbalance.solvers.symmetric_eigen`; eigenvalues below
    ``lambda_max * T * eps_float32`` dropped as numerical noise, as in the reference code), the
    aligned gradients are ``J_hat = B J`` with ``B = sigma V diag(lambda)^(-1/2) V^T``: all their
    singular values equal ``sigma`` (condition number 1). The update is ``J_hat^T 1 = J^T B 1``.

    ``sigma`` (``scale_mode``): ``"min"`` the smallest kept singular value ``sqrt(lambda_min)``
    (paper), ``"median"`` the median one, ``"rmse"`` ``sqrt(mean lambda)``.

    Scale: ``"min"`` as in the paper and LibMTL (sum over tasks of aligned gradients).
    """

    name = "aligned_mtl"
    scale = "sum of aligned gradients, `σ_min` (`scale_mode`)"
    family = "gradient manipulation"
    needs = Need.GRAMIAN
    homogeneity = 1.0
    reference = (
        "Senushkin et al., Independent Component Alignment for Multi-Task Learning, CVPR 2023."
    )

    def __init__(self, scale_mode: Literal["min", "median", "rmse"] = "min") -> None:
        if scale_mode not in ("min", "median", "rmse"):
            raise ValueError(
                f"aligned_mtl: scale_mode must be min, median or rmse, got {scale_mode!r}"
            )
        self.scale_mode = scale_mode

    def hparams(self) -> dict[str, Any]:
        return {"scale_mode": self.scale_mode}

    def combine(self, ctx: Context) -> Combination:
        G = ctx.require_gramian(self.name).to(torch.float64)
        G = 0.5 * (G + G.T)
        # eigenvalues below lambda_max * T * eps_float32 are noise (reference code); w = B 1
        # with B = sigma V diag(lambda^-1/2) V^T needs V only applied to the vector 1 (the
        # T x T product B was a third of the method's time at T = 1000, V itself another
        # half: see taskbalance.solvers.symmetric_eigen)
        ones = torch.ones(ctx.num_tasks, dtype=G.dtype, device=G.device)
        eigenvalues, aligned = truncated_inverse_sqrt(G, ones, ctx.num_tasks * _EPS)
        largest = eigenvalues.max()
        if not bool(largest > 0):
            return Combination(
                weights=torch.zeros(ctx.num_tasks, dtype=torch.float64, device=G.device)
            )
        values = eigenvalues[eigenvalues > largest * ctx.num_tasks * _EPS]
        if self.scale_mode == "min":
            sigma = values.min().sqrt()
        elif self.scale_mode == "median":
            sigma = values.sqrt().median()
        else:
            sigma = values.mean().sqrt()
        return Combination(weights=sigma * aligned.to(G.device))
