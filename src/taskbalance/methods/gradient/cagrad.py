"""CAGrad: conflict-averse gradient descent (``cagrad``)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from taskbalance.engine.needs import Need
from taskbalance.methods._validation import check_positive
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register
from taskbalance.solvers.conflict_averse import conflict_averse_weights


def _conflicts(G: Tensor, weights: Tensor) -> bool:
    """Whether ``d = J^T weights`` has a negative inner product with a task gradient beyond
    rounding (``g_i . d = (G weights)_i``, relative to ``|g_i| |d|``)."""
    improvements = G @ weights
    norms = G.diagonal().clamp_min(0).sqrt()
    d_norm = (weights @ G @ weights).clamp_min(0).sqrt()
    return bool((improvements < -1e-9 * norms * d_norm).any())


@register
class CAGrad(Method):
    """Conflict-averse gradient descent (Liu et al., NeurIPS 2021).

    Maximises the worst task improvement within a ball around the mean gradient ``g_0``:
    ``max_d min_i g_i . d  s.t.  |d - g_0| <= c |g_0|``. Its dual over the simplex,
    ``w* = argmin_w g_w . g_0 + sqrt(phi) |g_w|`` with ``phi = c^2 |g_0|^2``, gives

    ``d = g_0 + sqrt(phi) / |g_w*| g_w*``, divided by ``1 + c^2`` (``rescale=1``, default),
    ``1 + c`` (``rescale=2``) or not (``rescale=0``), as in the paper's code.

    ``c = 0`` is the mean gradient. For ``c >= 1`` the ball holds ``d = 0``, so the optimum
    never conflicts with a task; at (and numerically near) Pareto-stationary points, where the
    recovery of ``d`` from the dual is undefined, ``d = 0`` is returned (the optimum there).
    The dual is solved from the Gram matrix by exact inner min-norm problems and a convex 1-D
    search (:func:`conflict_averse_weights`); no scipy. Each step first tries the previous
    step's support (kept in ``state_dict``): where it is still the optimum's, no inner solve
    is needed (the same optimum either way).

    Args:
        c: radius of the ball, relative to ``|g_0|`` (paper default 0.4; 0.5 in LibMTL).
        rescale: 0, 1 or 2 (see above).

    Scale: ``d`` is of the order of the mean gradient (paper).
    """

    name = "cagrad"
    scale = "the mean gradient's order, `/(1+c²)`"
    family = "gradient manipulation"
    needs = Need.GRAMIAN
    homogeneity = 1.0
    reference = (
        "Liu et al., Conflict-Averse Gradient Descent for Multi-task Learning, NeurIPS 2021."
    )

    state_attributes = ("previous_weights",)

    def __init__(self, c: float = 0.4, rescale: Literal[0, 1, 2] = 1) -> None:
        self.c = check_positive(self.name, "c", c, allow_zero=True)
        if rescale not in (0, 1, 2):
            raise ValueError(f"cagrad: rescale must be 0, 1 or 2, got {rescale!r}")
        self.rescale = rescale
        self.previous_weights: torch.Tensor | None = None

    def supports_task_subsets(self) -> bool:
        return True  # the warm start is only a hint, used when the task count matches

    def hparams(self) -> dict[str, Any]:
        return {"c": self.c, "rescale": self.rescale}

    def combine(self, ctx: Context) -> Combination:
        G = ctx.require_gramian(self.name).to(torch.float64)
        num_tasks = ctx.num_tasks
        mean = torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64, device=G.device)
        w = conflict_averse_weights(G, self.c, start=self.previous_weights)
        self.previous_weights = w
        g0_norm = (mean @ G @ mean).clamp_min(0).sqrt()
        gw_norm = (w @ G @ w).clamp_min(0).sqrt()
        factor = torch.where(
            gw_norm > 0, self.c * g0_norm / torch.where(gw_norm > 0, gw_norm, 1.0), 0.0
        )
        weights = mean + factor * w
        if self.c >= 1 and _conflicts(G, weights):
            # d = 0 lies in the ball and improves no task and hurts none, so the optimum never
            # hurts a task. Near a Pareto-stationary point (0 in the hull of the gradients)
            # the dual optimum has g_w ~ 0 and the recovery g_0 + sqrt(phi) g_w / |g_w| is
            # numerically undefined (it returned g_0 itself, or weights of 1e7): d = 0 is
            # then the optimum (value 0), exactly.
            weights = torch.zeros_like(weights)
        divisor = {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]
        return Combination(weights=weights / divisor)
