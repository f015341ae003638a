"""Gradient sign dropout (``graddrop``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from taskbalance.engine.needs import Need
from taskbalance.methods._validation import check_fraction
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register

_EPS = 1e-7


@register
class GradDrop(Method):
    """Gradient sign dropout (Chen et al., NeurIPS 2020).

    For every coordinate, the sign purity ``P = 1/2 (1 + sum_i g_i / sum_i |g_i|)`` is the
    probability of keeping the positive parts: with ``U ~ Uniform(0, 1)``, task ``i``'s
    gradient is kept where ``(P > U and g_i > 0)`` or ``(P < U and g_i < 0)`` and dropped
    elsewhere (scaled by ``leak`` instead of 0 when ``leak > 0``); the update is the sum of the
    masked gradients. Conflicting signs are thus resolved stochastically in proportion to their
    mass.

    As in the paper, use it at ``level="representation"``: there the purity is computed per
    feature after summing the per-sample gradients over the batch (the first dimension of the
    representation), and the mask is shared by the batch. At parameter level each parameter
    coordinate is its own unit. (The paper's optional sign correction by the preceding
    activation is not applied.)

    Args:
        leak: weight of the dropped gradients, in ``[0, 1)`` (paper: 0).
        seed: seed of the uniform draws (checkpointed).

    Scale: sum of the masked task gradients (paper, LibMTL).
    """

    name = "graddrop"
    family = "gradient manipulation"
    needs = Need.JACOBIAN
    reference = (
        "Chen et al., Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign "
        "Dropout, NeurIPS 2020."
    )
    state_attributes = ("generator",)

    def __init__(self, leak: float = 0.0, seed: int = 0) -> None:
        self.leak = check_fraction(self.name, "leak", leak)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def hparams(self) -> dict[str, Any]:
        return {"leak": self.leak, "seed": self.seed}

    def combine(self, ctx: Context) -> Combination:
        J = ctx.require_jacobian(self.name)
        num_tasks = J.shape[0]
        pooled = (
            ctx.level == "representation"
            and len(ctx.block_shapes) == 1
            and len(ctx.block_shapes[0]) > 1
        )
        if pooled:
            per_sample = J.reshape(num_tasks, ctx.block_shapes[0][0], -1)
            units = per_sample.sum(dim=1)  # (T, features)
        else:
            units = J
        scale = units.abs().amax().clamp_min(torch.finfo(units.dtype).tiny)
        normalised = units / scale  # purity is scale-free; avoid overflow of the sums
        purity = 0.5 * (1 + normalised.sum(dim=0) / (normalised.abs().sum(dim=0) + _EPS))
        uniform = torch.rand(purity.shape, generator=self.generator, dtype=purity.dtype).to(
            J.device
        )
        keep = ((purity > uniform) & (units > 0)) | ((purity < uniform) & (units < 0))
        mask: Tensor = self.leak + (1 - self.leak) * keep.to(J.dtype)
        if pooled:
            mask = mask.unsqueeze(1).expand_as(per_sample).reshape(num_tasks, -1)
        return Combination(direction=(mask * J).sum(dim=0))
