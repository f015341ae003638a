"""Nash-MTL (``nash_mtl``) and FairGrad (``fairgrad``): weights solving ``G w = w^(-p)``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from taskbalance.engine.needs import Need
from taskbalance.methods._validation import check_positive
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register
from taskbalance.solvers.power_equation import solve_power_equation


@register
class NashMTL(Method):
    """Nash-MTL: multi-task learning as a bargaining game (Navon et al., ICML 2022).

    The weights are the Nash bargaining solution ``alpha > 0`` of ``G alpha = 1 / alpha``
    (elementwise), i.e. every task's utility ``g_i . d`` times its weight is 1 for
    ``d = sum_i alpha_i g_i``. As in the paper's code, ``G`` is first divided by its Frobenius
    norm, so the weights do not depend on the gradients' scale. Solved exactly by damped Newton
    steps on a strictly convex potential (:func:`solve_power_equation`), pure torch: no cvxpy,
    no silent fall-back to equal weights, finite for ``T = 1`` and all-zero gradients.

    For orthogonal gradients ``alpha_i = 1 / |g_i|`` (of the normalised matrix); for two tasks
    the direction is along ``g_1 / |g_1| + g_2 / |g_2|``.

    Args:
        max_norm: if > 0, weights are scaled so that the shared update ``|J^T alpha|`` is at
            most ``max_norm`` (the paper's code clips the shared gradient to 1.0; here the
            heads get the same factor, so the update stays a weighted sum of task gradients).
        update_weights_every: recompute the weights every k calls, reusing them in between
            (prefer ``Balancer(update_every=k)``, which also skips the per-task gradients).

    Scale: weights of the Frobenius-normalised Gram matrix (paper).
    """

    name = "nash_mtl"
    scale = "weights of the Frobenius-normalised Gram matrix (`max_norm` option)"
    family = "gradient manipulation"
    needs = Need.GRAMIAN
    reference = "Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022."
    state_attributes = ("calls", "last_weights")

    def __init__(self, max_norm: float = 0.0, update_weights_every: int = 1) -> None:
        self.max_norm = check_positive(self.name, "max_norm", max_norm, allow_zero=True)
        if not isinstance(update_weights_every, int) or update_weights_every < 1:
            raise ValueError(
                "nash_mtl: update_weights_every must be a positive int, "
                f"got {update_weights_every!r}"
            )
        self.update_weights_every = update_weights_every
        self.calls = 0
        self.last_weights: Tensor | None = None

    def hparams(self) -> dict[str, Any]:
        return {"max_norm": self.max_norm, "update_weights_every": self.update_weights_every}

    def supports_task_subsets(self) -> bool:
        return self.update_weights_every == 1

    def scale_degree(self) -> float | None:
        # weights of the normalised Gram matrix: the update scales with the gradients,
        # unless max_norm clips it at an absolute size
        return 1.0 if self.max_norm == 0 else None

    def combine(self, ctx: Context) -> Combination:
        G = ctx.require_gramian(self.name).to(torch.float64)
        reuse = (
            self.last_weights is not None
            and self.last_weights.shape == (ctx.num_tasks,)
            and self.calls % self.update_weights_every != 0
        )
        self.calls += 1
        if reuse:
            assert self.last_weights is not None
            weights = self.last_weights
        else:
            norm = torch.linalg.matrix_norm(G)
            normalised = G / norm if bool(norm > 0) else G
            weights = solve_power_equation(normalised, 1.0)
            self.last_weights = weights
        if self.max_norm > 0:
            update_norm = (weights @ G @ weights).clamp_min(0).sqrt()
            weights = weights * torch.clamp(self.max_norm / (update_norm + 1e-12), max=1.0)
        return Combination(weights=weights)


@register
class FairGrad(Method):
    """FairGrad: alpha-fair resource allocation among tasks (Ban & Ji, ICML 2024).

    Weights ``w > 0`` solving ``G w = w^(-1/alpha)``: the update ``d = J^T w`` gives each task
    the utility ``g_i . d = w_i^(-1/alpha)``, which maximises the alpha-fair sum of utilities.
    ``alpha = 1`` is proportional fairness (Nash-MTL's condition on the raw Gram matrix);
    ``alpha -> infinity`` approaches max-min fairness. Exact Newton solution in torch
    (:func:`solve_power_equation`), no scipy least squares.

    Args:
        alpha: fairness parameter (> 0).

    Scale: the raw Gram matrix, as in the paper's code (weights scale like
    ``|g|^(-2 alpha / (alpha + 1))``).
    """

    name = "fairgrad"
    scale = "raw Gram matrix (paper's code)"
    family = "gradient manipulation"
    needs = Need.GRAMIAN
    reference = "Ban & Ji, Fair Resource Allocation in Multi-Task Learning, ICML 2024."

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = check_positive(self.name, "alpha", alpha)

    def hparams(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def scale_degree(self) -> float | None:
        # G w = w^(-1/alpha) with G -> s^2 G gives w -> s^(-2 alpha / (alpha + 1)) w
        return 1.0 - 2.0 * self.alpha / (self.alpha + 1.0)

    def combine(self, ctx: Context) -> Combination:
        G = ctx.require_gramian(self.name)
        return Combination(weights=solve_power_equation(G, 1.0 / self.alpha))
