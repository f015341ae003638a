"""Random loss weighting (``rlw``)."""

from __future__ import annotations

from typing import Any

import torch

from taskbalance.engine.needs import Need
from taskbalance.methods._validation import check_seed
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register


@register
class RandomLossWeighting(Method):
    """Random loss weighting (Lin et al., TMLR 2022).

    Every step draws ``lambda ~ N(0, I_T)`` and uses ``w = softmax(lambda)``: a random point of
    the simplex, so in expectation every task is weighted equally while the optimiser sees
    varied trade-offs. Draws come from the method's own seeded generator (checkpointed).

    Scale: weights sum to 1 (the paper's and LibMTL's convention).

    Args:
        seed: seed of the generator.
    """

    name = "rlw"
    scale = "sum to 1"
    family = "loss weighting"
    needs = Need.LOSSES
    reference = "Lin et al., Reasonable Effectiveness of Random Weighting, TMLR 2022."
    state_attributes = ("generator",)

    def __init__(self, seed: int = 0) -> None:
        self.seed = check_seed("rlw", seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def hparams(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def combine(self, ctx: Context) -> Combination:
        draw = torch.randn(ctx.num_tasks, generator=self.generator, dtype=torch.float64)
        weights = torch.softmax(draw, dim=0)
        if ctx.losses is not None:
            weights = weights.to(ctx.losses.device)
        return Combination(weights=weights)
