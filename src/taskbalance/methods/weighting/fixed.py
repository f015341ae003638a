"""Fixed, user-chosen task weights (``fixed``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from taskbalance.engine.needs import Need
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register


@register
class FixedWeighting(Method):
    """Fixed weights: the update is the gradient of ``sum_i w_i L_i`` for constant ``w``.

    Args:
        weights: one non-negative finite weight per task, as a sequence in task order or a
            mapping ``task name -> weight`` (every task must be named). Used as given (not
            renormalised), so ``fixed`` with all ones equals ``ew``.
    """

    name = "fixed"
    scale = "as given"
    family = "loss weighting"
    needs = Need.LOSSES
    reference = "Manual weighting (grid-searched weights are the usual MTL baseline)."

    def __init__(self, weights: Sequence[float] | Mapping[str, float]) -> None:
        values = list(weights.values()) if isinstance(weights, Mapping) else list(weights)
        if not values:
            raise ValueError("fixed: weights must name at least one task")
        for value in values:
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"fixed: weights must be finite and >= 0, got {value!r}")
        self.weights = dict(weights) if isinstance(weights, Mapping) else [float(v) for v in values]

    def hparams(self) -> dict[str, Any]:
        return {"weights": self.weights}

    def supports_task_subsets(self) -> bool:
        return isinstance(self.weights, dict)  # by name: a subset of tasks is well defined

    def _ordered(self, ctx: Context) -> list[float]:
        if isinstance(self.weights, dict):
            names = ctx.task_names
            missing = [n for n in names if n not in self.weights]
            if not names or missing:
                raise ValueError(
                    f"fixed: weights are keyed by task name but the tasks are {list(names)}; "
                    f"no weight for {missing}. Pass losses as a dict keyed by the weights' names."
                )
            return [float(self.weights[n]) for n in names]
        if len(self.weights) != ctx.num_tasks:
            raise ValueError(
                f"fixed: got {len(self.weights)} weights for {ctx.num_tasks} tasks; "
                "give exactly one weight per task"
            )
        return list(self.weights)

    def combine(self, ctx: Context) -> Combination:
        device = ctx.losses.device if ctx.losses is not None else None
        values = self._ordered(ctx)
        return Combination(weights=torch.tensor(values, dtype=torch.float64, device=device))
