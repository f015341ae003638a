"""Equal weighting (``ew``)."""

from __future__ import annotations

import torch

from taskbalance.engine.needs import Need
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register


@register
class EqualWeighting(Method):
    """Equal weighting: ``w_i = 1``, i.e. the update is the gradient of ``sum_i L_i``.

    The baseline of every MTL paper (called EW in LibMTL; TorchJD's ``Mean`` is this divided by
    ``T``). Needs only the losses: one ordinary backward, no per-task gradient.
    """

    name = "ew"
    scale = "weights sum to T (sum of losses)"
    family = "loss weighting"
    needs = Need.LOSSES
    reference = "Baseline: linear scalarisation with unit weights."

    def combine(self, ctx: Context) -> Combination:
        if ctx.losses is None:
            return Combination(weights=torch.ones(ctx.num_tasks, dtype=torch.float64))
        # (in the losses' dtype: 1 is exact in every float type, and nothing is converted)
        weights = torch.ones(ctx.num_tasks, dtype=ctx.losses.dtype, device=ctx.losses.device)
        return Combination(weights=weights)
