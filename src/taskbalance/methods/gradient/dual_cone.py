"""Projections onto the dual cone of the task gradients: UPGrad and DualProj."""

from __future__ import annotations

import torch
from torch import Tensor

from taskbalance.engine.needs import Need
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register
from taskbalance.solvers.nonneg_qp import dual_cone_weights

_REFERENCE = "Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, 2024 (TorchJD)."


@register
class UPGrad(Method):
    """Unconflicting projection of gradients (Quinton & Rey, 2024).

    Every task gradient ``g_i`` is projected onto the dual cone ``{d : J d >= 0}`` (the
    directions that conflict with no task) and the projections are averaged:
    ``d = 1/T sum_i pi(g_i)``, with ``pi(J^T e_i) = J^T v_i``,
    ``v_i = argmin_{v >= e_i} v^T G v`` solved exactly from the Gram matrix
    (:func:`taskbalance.solvers.dual_cone_weights`, an active-set NNLS). Guarantees
    ``J d >= 0`` (no task's loss increases to first order) at every scale: unlike TorchJD, no
    regularisation and no fallback to the mean for small gradients.

    Scale: TorchJD's (the mean of the projections; ``d`` equals the mean gradient when no
    gradients conflict).

    Consecutive steps usually share which constraints ``v >= e_i`` are tight, so each solve
    starts from the previous step's pattern (a warm start: fewer active-set iterations, the
    same exact solution; kept in ``state_dict``).
    """

    name = "upgrad"
    scale = "mean of projections (TorchJD)"
    family = "gradient manipulation"
    needs = Need.GRAMIAN
    homogeneity = 1.0
    reference = _REFERENCE
    state_attributes = ("previous_tight",)

    def __init__(self) -> None:
        self.previous_tight: Tensor | None = None

    def supports_task_subsets(self) -> bool:
        return True  # the warm start is only a hint, used when the task count matches

    def combine(self, ctx: Context) -> Combination:
        G = ctx.require_gramian(self.name)
        targets = torch.eye(ctx.num_tasks, dtype=torch.float64, device=G.device)
        # (the solver ignores a start of another shape, e.g. after a step with fewer tasks)
        weights = dual_cone_weights(G, targets, start=self.previous_tight)
        self.previous_tight = (weights - targets) == 0  # v_i == e_i where the bound is tight
        return Combination(weights=weights.mean(dim=0))


@register
class DualProj(Method):
    """Projection of the mean gradient onto the dual cone (Quinton & Rey, 2024; after GEM).

    ``d = pi(1/T sum_i g_i) = J^T v``, ``v = argmin_{v >= 1/T} v^T G v``: the closest
    direction to the mean gradient that conflicts with no task (``J d >= 0``). Exact, from the
    Gram matrix, at any scale.

    Scale: the mean gradient's (TorchJD's convention).
    """

    name = "dualproj"
    scale = "projected mean gradient (TorchJD)"
    family = "gradient manipulation"
    needs = Need.GRAMIAN
    homogeneity = 1.0
    reference = _REFERENCE

    def combine(self, ctx: Context) -> Combination:
        G = ctx.require_gramian(self.name)
        mean = torch.full(
            (1, ctx.num_tasks), 1.0 / ctx.num_tasks, dtype=torch.float64, device=G.device
        )
        # (a warm start as in UPGrad does not pay here: the cold guess needs 1-2 solves)
        return Combination(weights=dual_cone_weights(G, mean)[0])
