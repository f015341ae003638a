"""Metric-based weighting (``metric_weighting``)."""

from __future__ import annotations

import torch
from torch import Tensor

from taskbalance.engine.needs import Need
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register
from taskbalance.methods.weighting._scaling import normalise_to_num_tasks


@register
class MetricWeighting(Method):
    """Weights from a per-task score in ``[0, 1]`` that the user reports (e.g. accuracy).

    ``w_i = T * (1 - acc_i) / sum_j (1 - acc_j)``: the worse a task does, the more weight it
    gets (for two tasks, ``w_A`` is ``T`` times ``(1 - acc_A) / ((1 - acc_A) + (1 - acc_B))``).

    Report metrics with ``Balancer.backward(..., metrics=...)`` (or ``aggregate``'s
    ``Context``); the last reported metrics are kept in the state, so they may be reported
    once per epoch after validation. Before any report, and when every task is perfect,
    the weights are equal. Metrics outside ``[0, 1]`` raise ``ValueError``.
    """

    name = "metric_weighting"
    scale = "sum to T"
    needs_note = "losses + metrics"
    family = "loss weighting"
    needs = Need.LOSSES
    reference = (
        "Common heuristic (performance-based weighting, w_i ∝ 1 - metric_i); the KPI-driven "
        "relative of Guo et al., Dynamic Task Prioritization, ECCV 2018 (dtp), without its "
        "focal exponent."
    )
    state_attributes = ("last_metrics",)

    def __init__(self) -> None:
        self.last_metrics: Tensor | None = None

    def combine(self, ctx: Context) -> Combination:
        if ctx.metrics is not None:
            metrics = ctx.metrics.detach().to(torch.float64)
            if metrics.shape != (ctx.num_tasks,):
                raise ValueError(
                    f"metric_weighting: got {metrics.numel()} metrics for {ctx.num_tasks} tasks"
                )
            if bool(((metrics < 0) | (metrics > 1) | ~torch.isfinite(metrics)).any()):
                raise ValueError(
                    f"metric_weighting needs metrics in [0, 1] (e.g. accuracy), got "
                    f"{metrics.tolist()}"
                )
            self.last_metrics = metrics.clone()
        if self.last_metrics is None:
            device = ctx.losses.device if ctx.losses is not None else None
            return Combination(
                weights=torch.ones(ctx.num_tasks, dtype=torch.float64, device=device)
            )
        return Combination(weights=normalise_to_num_tasks(1.0 - self.last_metrics))
