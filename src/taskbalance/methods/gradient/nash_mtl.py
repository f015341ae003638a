"""Nash-MTL (``nash_mtl``) and FairGrad (``fairgrad``): weights solving ``G w = w^(-p)``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from taskbalance._validation import check_choice
from taskbalance.engine.needs import Need
from taskbalance.methods._validation import check_positive
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register
from taskbalance.solvers.power_equation import solve_power_equation


@register
class NashMTL(Method):
    """Nash-MTL: multi-task learning as a bargaining game (Navon et al., ICML 2022).

    The weights are the Nash bargaining solution ``alpha > 0`` of ``(G alpha)_i = 1 / alpha_i``,
    i.e. every task's utility ``g_i . d`` times its weight is 1 for ``d = sum_i alpha_i g_i``.

    Which ``G`` (``gram``):

    * ``"raw"`` (default, the authors' code): the Gram matrix of the task gradients itself.
      The reference implementation divides ``G`` by its Frobenius norm ``N`` before its solver
      but multiplies ``alpha`` by ``N`` inside the constraint ``alpha_i N (G/N alpha)_i >= 1``,
      so the normalisation cancels. The weights scale like ``1 / |g|`` and the update's length
      does not depend on the gradients' scale (``sqrt(T)`` for orthogonal gradients, where
      ``alpha_i = 1 / |g_i|``).
    * ``"frobenius"``: the weights of ``G / N`` (this library before 0.2): the same direction,
      ``sqrt(N)`` times longer, scaling with the gradients.

    Both are solved on ``G / N`` (well scaled at every gradient size) by damped Newton steps on
    a strictly convex potential (:func:`solve_power_equation`) and mapped exactly
    (``alpha_raw = alpha_N / sqrt(N)``); each solve starts from the previous step's weights.
    Pure torch: no cvxpy, no silent fall-back to equal weights, finite for ``T = 1`` and
    all-zero gradients. For two tasks the direction is along ``g_1 / |g_1| + g_2 / |g_2|``.

    Args:
        max_norm: if > 0, weights are scaled so that the shared update ``|J^T alpha|`` is at
            most ``max_norm`` (the paper's code clips the shared gradient to 1.0; here the
            heads get the same factor, so the update stays a weighted sum of task gradients).
        update_weights_every: recompute the weights every k calls, reusing them in between
            (prefer ``Balancer(update_every=k)``, which also skips the per-task gradients).
        gram: ``"raw"`` (authors' code, default) or ``"frobenius"`` (see above).

    Scale: ``gram="raw"``: update length independent of the gradients' scale (degree 0), as
    in the paper's code; ``"frobenius"``: degree 1.
    """

    name = "nash_mtl"
    scale = (
        "raw Gram matrix as in the paper's code: the update's length does not depend on the "
        "gradients' scale (`gram`, `max_norm` options)"
    )
    family = "gradient manipulation"
    needs = Need.GRAMIAN
    reference = "Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022."
    state_attributes = ("calls", "last_weights")

    def __init__(
        self, max_norm: float = 0.0, update_weights_every: int = 1, gram: str = "raw"
    ) -> None:
        self.max_norm = check_positive(self.name, "max_norm", max_norm, allow_zero=True)
        self.gram = check_choice(gram, ("raw", "frobenius"), "nash_mtl gram")
        if not isinstance(update_weights_every, int) or update_weights_every < 1:
            raise ValueError(
                "nash_mtl: update_weights_every must be a positive int, "
                f"got {update_weights_every!r}"
            )
        self.update_weights_every = update_weights_every
        self.calls = 0
        self.last_weights: Tensor | None = None

    def hparams(self) -> dict[str, Any]:
        return {
            "max_norm": self.max_norm,
            "update_weights_every": self.update_weights_every,
            "gram": self.gram,
        }

    def supports_task_subsets(self) -> bool:
        return self.update_weights_every == 1

    def scale_degree(self) -> float | None:
        # raw: alpha ~ 1/|g|, the update keeps its length (clipping to max_norm keeps that);
        # frobenius: the update scales with the gradients unless max_norm clips it
        if self.gram == "raw":
            return 0.0
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
            if not bool(norm > 0):
                norm = torch.ones((), dtype=G.dtype, device=G.device)
            to_normalised = norm.sqrt() if self.gram == "raw" else torch.ones_like(norm)
            previous = self.last_weights
            if previous is not None and previous.shape == (ctx.num_tasks,):
                previous = previous.to(G) * to_normalised
            weights = solve_power_equation(G / norm, 1.0, initial=previous) / to_normalised
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
    (:func:`solve_power_equation`), no scipy least squares; each step starts from the
    previous step's weights (kept in ``state_dict``; the same unique solution).

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

    state_attributes = ("last_weights",)

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = check_positive(self.name, "alpha", alpha)
        self.last_weights: Tensor | None = None

    def supports_task_subsets(self) -> bool:
        return True  # the warm start is only a hint, used when the task count matches

    def hparams(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def scale_degree(self) -> float | None:
        # G w = w^(-1/alpha) with G -> s^2 G gives w -> s^(-2 alpha / (alpha + 1)) w
        return 1.0 - 2.0 * self.alpha / (self.alpha + 1.0)

    def combine(self, ctx: Context) -> Combination:
        G = ctx.require_gramian(self.name)
        weights = solve_power_equation(G, 1.0 / self.alpha, initial=self.last_weights)
        self.last_weights = weights
        return Combination(weights=weights)
