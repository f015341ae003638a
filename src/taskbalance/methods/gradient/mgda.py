"""MGDA: the minimum-norm point of the convex hull of the task gradients (``mgda``)."""

from __future__ import annotations

from typing import Any, Literal

import torch

from taskbalance._validation import check_choice
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

    Gradient normalisation (the reference code's ``normalization_type``): the min-norm problem is
    solved on ``g_i / n_i``, i.e. on ``D^-1 G D^-1`` with ``D = diag(n)``, and the weights are
    applied to the raw losses, as the reference does. ``n_i`` is 1 (``"none"``, default),
    ``|g_i|`` (``"l2"``), ``L_i`` (``"loss"``) or ``L_i |g_i|`` (``"loss+"``). Without it the
    task with the smallest gradient takes almost all the weight when gradient scales differ
    (on our ``multimnist`` benchmark it starves both classification tasks).

    Consecutive steps usually share the support of ``w*``, so each solve starts from the
    previous step's support (a warm start: fewer active-set iterations, the same exact
    minimiser; kept in ``state_dict`` so a resumed run repeats the same arithmetic).

    Args:
        normalization: ``"none"``, ``"l2"``, ``"loss"`` or ``"loss+"``.
    """

    name = "mgda"
    scale = "weights sum to 1"
    family = "gradient manipulation"
    needs = Need.GRAMIAN
    homogeneity = 1.0
    reference = "Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018."

    state_attributes = ("previous_weights",)

    def __init__(self, normalization: Literal["none", "l2", "loss", "loss+"] = "none") -> None:
        self.normalization = check_choice(
            normalization, ("none", "l2", "loss", "loss+"), "mgda normalization"
        )
        self.previous_weights: torch.Tensor | None = None

    def supports_task_subsets(self) -> bool:
        return True  # the warm start is only a hint, used when the task count matches

    def _solve(self, gramian: torch.Tensor) -> Combination:
        previous = self.previous_weights
        start = previous if previous is not None and previous.shape == gramian.shape[:1] else None
        weights = min_norm_simplex(gramian, start=start)
        self.previous_weights = weights
        return Combination(weights=weights)

    def hparams(self) -> dict[str, Any]:
        return {"normalization": self.normalization}

    def combine(self, ctx: Context) -> Combination:
        gramian = ctx.require_gramian(self.name).to(torch.float64)
        if self.normalization == "none":
            return self._solve(gramian)
        norms = torch.ones_like(gramian.diagonal())
        if self.normalization in ("l2", "loss+"):
            norms = norms * gramian.diagonal().clamp_min(0).sqrt()
        if self.normalization in ("loss", "loss+"):
            norms = norms * ctx.require_losses(self.name).to(norms).abs()
        tiny = torch.finfo(torch.float64).tiny
        scaled = gramian / torch.outer(norms, norms).clamp_min(tiny)
        scaled = torch.where((norms > 0).unsqueeze(0) & (norms > 0).unsqueeze(1), scaled, 0.0)
        return self._solve(scaled)
