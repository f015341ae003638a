"""Geometric loss strategy (``gls``)."""

from __future__ import annotations

import torch

from taskbalance.engine.needs import Need
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register
from taskbalance.methods.weighting._losses import non_negative_losses

_TINY = 1e-30


@register
class GeometricLossStrategy(Method):
    """Geometric loss strategy (Chennupati et al., CVPR Workshops 2019).

    Minimises the geometric mean ``(prod_i L_i)^(1/T)``. Its gradient is
    ``sum_i w_i grad L_i`` with ``w_i = (prod_j L_j)^(1/T) / (T L_i)``, computed in log space
    (``exp(mean_j log L_j - log L_i) / T``), so it neither overflows nor underflows with many
    tasks or extreme losses (a direct product of 40 losses of 1e-10 underflows to 0).

    Losses must be non-negative; a zero loss is treated as 1e-30.

    Scale: weights are the gradient of the geometric mean (they equal ``1/T`` when all losses
    are equal), like LibMTL's GLS.
    """

    name = "gls"
    scale = "gradient of the geometric mean"
    family = "loss weighting"
    needs = Need.LOSSES
    reference = (
        "Chennupati et al., MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss "
        "Strategy for Multi-Task Learning, CVPR Workshops 2019."
    )

    def combine(self, ctx: Context) -> Combination:
        log_losses = non_negative_losses(ctx, self.name).clamp_min(_TINY).log()
        weights = torch.exp(log_losses.mean() - log_losses) / ctx.num_tasks
        return Combination(weights=weights)
