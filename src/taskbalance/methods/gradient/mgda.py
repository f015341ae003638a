"""MGDA: the minimum-norm point of the convex hull of the task gradients (``mgda``)."""

from __future__ import annotations

from taskbalance.engine.needs import Need
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register
from taskbalance.solvers.simplex import min_norm_simplex


@register
class MGDA(Method):
    """Multiple-gradient descent algorithm (Désidéri 2012; Sener & Koltun, NeurIPS 2018).

    ``w* = argmin_{w in simplex} || sum_i w_i g_i ||^2 = argmin w^T G w``, update ``J^T w*``.

    The min-norm point ``d`` is a common descent direction: ``g_i . d >= ||d||^2 >= 0`` for
    every task (KKT conditions), and ``d = 0`` exactly at Pareto-stationary points. Solved
    exactly from the Gram matrix (:func:`taskbalance.solvers.min_norm_simplex`), no Frank-Wolfe
    approximation, no cvxpy.

    Scale: weights sum to 1 (the paper's convention), so the update is a convex combination of
    the task gradients and can be much shorter than any of them.

    MGDA-UB (the paper's "upper bound" variant) is this method at representation level:
    ``Balancer("mgda", shared_params, level="representation")`` computes ``G`` from the gradients
    with respect to the shared features, which costs ``T`` backwards through the heads only.
    """

    name = "mgda"
    family = "gradient manipulation"
    needs = Need.GRAMIAN
    reference = "Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018."

    def combine(self, ctx: Context) -> Combination:
        return Combination(weights=min_norm_simplex(ctx.require_gramian(self.name)))
