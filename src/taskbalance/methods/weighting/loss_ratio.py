"""Inverse-loss weighting (``loss_ratio``)."""

from __future__ import annotations

import torch

from taskbalance.engine.needs import Need
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register
from taskbalance.methods.weighting._losses import non_negative_losses
from taskbalance.methods.weighting._scaling import normalise_to_num_tasks


@register
class LossRatioWeighting(Method):
    """Loss-ratio weighting: each task is weighted by the inverse of its current loss.

    For two tasks this is the rule ``w_A = L_B / (L_A + L_B)``, ``w_B = L_A / (L_A + L_B)``;
    for ``T`` tasks ``w_i`` is proportional to ``1 / L_i``, normalised to sum to ``T``
    (the library's convention, so two tasks get ``w_A = 2 L_B / (L_A + L_B)``):

    ``w_i = T * (1 / L_i) / sum_j (1 / L_j)``.

    The effect is that every weighted loss ``w_i L_i`` equals the harmonic mean of the losses:
    no task's loss dominates the sum. Weights are constants (losses are detached).

    Losses must be non-negative (a negative loss raises ``ValueError``). A zero loss is treated as
    ``max_j L_j * 1e-12``, so it takes almost all the weight but stays finite; all-zero losses
    give equal weights.
    """

    name = "loss_ratio"
    scale = "sum to T"
    family = "loss weighting"
    needs = Need.LOSSES
    reference = (
        "Common heuristic (inverse-loss weighting: every weighted loss equals the harmonic "
        "mean of the losses); no single paper."
    )

    def combine(self, ctx: Context) -> Combination:
        losses = non_negative_losses(ctx, self.name)
        floor = losses.max() * 1e-12
        safe = torch.maximum(losses, floor)
        inverse = torch.where(safe > 0, 1.0 / torch.where(safe > 0, safe, 1.0), 0.0)
        return Combination(weights=normalise_to_num_tasks(inverse))
