"""Dynamic task prioritisation (``dtp``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from taskbalance.engine.needs import Need
from taskbalance.methods._validation import check_fraction, check_positive
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register
from taskbalance.methods.weighting._losses import check_num_tasks

_CLAMP = 1e-6


@register
class DynamicTaskPrioritization(Method):
    """Dynamic task prioritisation (Guo et al., ECCV 2018).

    From a key performance indicator ``kappa_t`` in ``(0, 1)`` per task (accuracy, IoU, ...;
    higher is better) that the user reports as ``metrics``, smoothed with an exponential moving
    average ``k_t = alpha kappa_t + (1 - alpha) k_{t-1}``, the task-level focal weight is
    ``w_t = -(1 - k_t)^gamma log(k_t)``: hard tasks (low KPI) get large weights, tasks close to
    perfect fade out. ``k`` is clamped to ``[1e-6, 1 - 1e-6]`` so weights stay finite and
    positive. Weights are 1 until a KPI is reported; the last smoothed KPIs are kept (report
    them per step or per epoch).

    Scale: not normalised (the paper's focal form).

    Args:
        gamma: focusing parameter (>= 0).
        momentum: ``1 - alpha``, the weight of the past in the KPI average (in ``[0, 1)``).
    """

    name = "dtp"
    scale = "focal weights, unnormalised"
    needs_note = "losses + KPIs"
    family = "loss weighting"
    needs = Need.LOSSES
    reference = "Guo et al., Dynamic Task Prioritization for Multitask Learning, ECCV 2018."
    state_attributes = ("kpi",)

    def __init__(self, gamma: float = 1.0, momentum: float = 0.9) -> None:
        self.gamma = check_positive(self.name, "gamma", gamma, allow_zero=True)
        self.momentum = check_fraction(self.name, "momentum", momentum)
        self.kpi: Tensor | None = None

    def hparams(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "momentum": self.momentum}

    def combine(self, ctx: Context) -> Combination:
        check_num_tasks(self.name, self.kpi, ctx.num_tasks)
        if ctx.metrics is not None:
            kpi = ctx.metrics.to(torch.float64)
            if kpi.shape != (ctx.num_tasks,) or bool(((kpi < 0) | (kpi > 1) | kpi.isnan()).any()):
                raise ValueError(f"dtp needs one KPI in [0, 1] per task, got {kpi.tolist()}")
            self.kpi = (
                kpi if self.kpi is None else self.momentum * self.kpi + (1 - self.momentum) * kpi
            )
        if self.kpi is None:
            device = ctx.losses.device if ctx.losses is not None else None
            return Combination(
                weights=torch.ones(ctx.num_tasks, dtype=torch.float64, device=device)
            )
        k = self.kpi.clamp(_CLAMP, 1 - _CLAMP)
        return Combination(weights=-((1 - k) ** self.gamma) * torch.log(k))
