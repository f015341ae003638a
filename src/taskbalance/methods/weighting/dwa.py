"""Dynamic weight average (``dwa``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from taskbalance.engine.needs import Need
from taskbalance.methods._validation import check_count, check_positive
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register
from taskbalance.methods.weighting._losses import check_num_tasks, non_negative_losses


@register
class DynamicWeightAverage(Method):
    """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019).

    ``lambda_k(t) = T exp(r_k / temp) / sum_i exp(r_i / temp)`` with
    ``r_k = L_k(t-1) / L_k(t-2)``, the ratio of task ``k``'s mean loss over the last two
    completed periods: a task whose loss falls more slowly gets more weight. Weights are 1
    until two periods of history exist.

    A period is an epoch (``period_steps=None``: call ``Balancer.end_epoch()``, which the
    trainer does) or a fixed number of steps. The period mean is the mean of the step losses.

    Scale: weights sum to ``T`` (paper, LibMTL).

    Args:
        temperature: softmax temperature ``temp`` (paper: 2).
        period_steps: steps per period, or ``None`` for epochs.
    """

    name = "dwa"
    scale = "sum to T"
    needs_note = "losses (+ epoch ends)"
    family = "loss weighting"
    needs = Need.LOSSES
    reference = "Liu, Johns & Davison, End-to-End Multi-Task Learning with Attention, CVPR 2019."
    state_attributes = ("period_sum", "period_count", "history", "periods_done")

    def __init__(self, temperature: float = 2.0, period_steps: int | None = None) -> None:
        self.temperature = check_positive(self.name, "temperature", temperature)
        self.period_steps = check_count(self.name, "period_steps", period_steps, allow_none=True)
        self.period_sum: Tensor | None = None
        self.period_count = 0
        self.history: Tensor | None = None  # (2, T): mean losses of the last two periods
        self.periods_done = 0

    def hparams(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "period_steps": self.period_steps}

    def end_epoch(self) -> None:
        if self.period_steps is None:
            self._close_period()

    def _close_period(self) -> None:
        if self.period_sum is None or self.period_count == 0:
            return
        mean = self.period_sum / self.period_count
        previous = mean if self.history is None else self.history[1]
        self.history = torch.stack([previous, mean])
        self.periods_done += 1
        self.period_sum = torch.zeros_like(self.period_sum)
        self.period_count = 0

    def combine(self, ctx: Context) -> Combination:
        # (the ratio of two negative period means reads an improvement as a slowdown)
        losses = non_negative_losses(ctx, self.name)
        check_num_tasks(self.name, self.period_sum, ctx.num_tasks)
        if self.history is not None and self.periods_done >= 2:
            older, last = self.history[0], self.history[1]
            ratios = last / torch.where(older > 0, older, torch.ones_like(older))
            weights = ctx.num_tasks * torch.softmax(ratios / self.temperature, dim=0)
        else:
            weights = torch.ones_like(losses)
        self.period_sum = losses.clone() if self.period_sum is None else self.period_sum + losses
        self.period_count += 1
        if self.period_steps is not None and self.period_count >= self.period_steps:
            self._close_period()
        return Combination(weights=weights)
