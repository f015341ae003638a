"""CAGrad: conflict-averse gradient descent (``cagrad``)."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from taskbalance.engine.needs import Need
from taskbalance.methods._validation import check_positive
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register
from taskbalance.solvers.conflict_averse import conflict_averse_weights
from taskbalance.solvers.nonneg_qp import nonneg_qp

_RECOVERY_TOLERANCE = 1e-6
"""Shortfall of a task's improvement ``g_i . d`` below the dual optimum ``t*``, relative to
``|g_i| |d|``, above which ``d``'s closed-form recovery counts as failed (measured: float64
Gram matrices of tasks of one scale up to 6e-15, float32 ones up to 3e-7; failed recoveries
1e-3 to 0.7, and 3e-2 typical where the gradients' norms span six decades)."""


_NEGLIGIBLE_MEAN = 1e-24
"""``|g_0|^2`` relative to ``max_i |g_i|^2`` below which the mean gradient is 0 to rounding."""
_SMALLEST_DUAL_NORM = 1e-6
"""``|g_w*|`` relative to the ball's radius below which the closed form is not tried."""


def update_weights(G: Tensor, dual: Tensor, c: float) -> Tensor:
    """The weights ``v`` of CAGrad's update ``d = J^T v`` from the dual optimum ``w*``.

    Where ``g_w* != 0`` the optimum is unique, ``d = g_0 + c |g_0| g_w* / |g_w*|``, i.e.
    ``v = a + c |g_0| / |g_w*| w*`` (``a = 1/T``). By strong duality its worst improvement
    ``min_i g_i . d`` equals the dual value ``t* = g_w* . g_0 + c |g_0| |g_w*|``. Where
    ``g_w* = 0`` (the origin is in the convex hull of the gradients and optimal for the dual:
    a zero gradient, exactly opposite ones) the formula is undefined, and near it rounding
    makes it miss ``t*`` by far (the paper's code, with its ``1e-4`` in the denominator,
    returns ``g_0``, which can hurt tasks that the optimum does not hurt). There the update is
    taken from the primal problem instead (:func:`_nearest_optimum`), so the switch is made
    only when the closed form's worst improvement falls short of ``t*`` beyond rounding."""
    num_tasks = G.shape[0]
    if c == 0:
        return torch.full((num_tasks,), 1.0 / num_tasks, dtype=G.dtype, device=G.device)
    # a handful of T-sized operations on the host copy (NumPy: ~1 us each instead of torch's
    # 5-10 us of dispatch at the small T of most models)
    gram = G.detach().cpu().numpy()
    w = dual.detach().cpu().numpy()
    mean = np.full(num_tasks, 1.0 / num_tasks)
    towards_mean = gram @ mean
    radius = c * math.sqrt(max(float(mean @ towards_mean), 0.0))
    gw_norm = math.sqrt(max(float(w @ gram @ w), 0.0))
    diagonal = np.diagonal(gram)
    if not radius**2 > _NEGLIGIBLE_MEAN * float(diagonal.max()):
        # g_0 = 0 to rounding (it cancels): the ball is that point
        return torch.from_numpy(mean).to(G)
    value = float(towards_mean @ w) + radius * gw_norm
    lower = float(towards_mean.min())  # d = g_0 is in the ball
    if c >= 1:
        lower = max(lower, 0.0)  # so is d = 0
    # |g_w*| far below the ball's radius: weights ~radius / |g_w*| that rounding decides
    if gw_norm > _SMALLEST_DUAL_NORM * radius:
        weights = mean + (radius / gw_norm) * w
        improvements = gram @ weights
        # each task to its own accuracy: |g_i| |d| bounds its improvement's size
        size = np.sqrt(np.clip(diagonal, 0.0, None)) * math.sqrt(
            max(float(weights @ improvements), 0.0)
        )
        shortfall = (value - improvements) / np.maximum(size, np.finfo(np.float64).tiny)
        if float(shortfall.max()) <= _RECOVERY_TOLERANCE:
            return torch.from_numpy(weights).to(G)
        lower = max(lower, float(improvements.min()))
    towards = torch.from_numpy(towards_mean).to(G)
    return torch.from_numpy(mean).to(G) + _nearest_optimum(G, towards, radius, lower, value)


def _nearest_optimum(
    G: Tensor, towards_mean: Tensor, radius: float, lower: float, upper: float
) -> Tensor:
    """``mu`` such that ``d = g_0 + J^T mu`` is the optimum of CAGrad's primal problem nearest
    to ``g_0``, given ``lower <= t* <= upper``.

    For a level ``t`` the point of ``{d : J d >= t 1}`` nearest to ``g_0`` is
    ``g_0 + J^T mu(t)``, ``mu(t) = argmin_{mu >= 0} 1/2 mu^T G mu + mu^T (G a - t 1)`` (the
    projection's dual, an exact :func:`~taskbalance.solvers.nonneg_qp.nonneg_qp`), at the
    distance ``r(t) = sqrt(mu^T G mu)`` from ``g_0``, non-decreasing in ``t``. The optimum is
    at the largest level whose point lies in the ball, ``t* = max {t : r(t) <= c |g_0|}``, and
    that point is the optimum nearest to ``g_0`` (the optima are the ball's points at level
    ``t*``). The dual value is usually exact (``r(upper) <= c |g_0|``: one solve); where
    rounding put it above ``t*``, a safeguarded secant search on ``r(t) - c |g_0|`` over
    ``[lower, upper]`` finds ``t*``."""

    slack = 1e-12 * float(G.diagonal().max())
    # a ridge at rounding level keeps mu bounded where G is singular: at a level just above
    # the highest non-empty one the projection's dual is unbounded along G's null space, and
    # the weights must stay small for J^T v to be accurate in the gradients' precision
    # (each task's own scale: 1e-12 of its squared norm, 1e-12 of the largest for a zero one)
    diagonal = G.diagonal()
    ridge = 1e-12 * torch.where(diagonal > 0, diagonal, diagonal.max())
    ridged = G + torch.diag(ridge)

    def at_level(level: float) -> tuple[Tensor, float]:
        mu = nonneg_qp(ridged, towards_mean - level)
        if float((towards_mean + G @ mu).min()) < level - slack - 1e-12 * abs(level):
            return mu, math.inf  # the level is empty (above every point's worst improvement)
        return mu, float((mu @ G @ mu).clamp_min(0).sqrt())

    upper = max(upper, lower)  # (a dual value rounded below a level known to be reached)
    mu, distance = at_level(upper)
    if distance <= radius * (1 + 1e-9):
        return mu
    best, _ = at_level(lower)  # inside the ball: a feasible fallback
    low, high = lower, upper
    # r(lower) <= radius (its exact value is not needed); an empty level counts as radius
    # beyond the ball, so that the secant keeps a finite slope
    f_low, f_high = -radius, min(distance - radius, radius)
    scale = max(abs(lower), abs(upper), 1e-300)
    for _ in range(60):
        if high - low <= 1e-12 * scale:
            break
        level = high - f_high * (high - low) / (f_high - f_low)
        if not low < level < high:
            level = 0.5 * (low + high)
        candidate, distance = at_level(level)
        excess = distance - radius
        if excess <= 0:
            low, f_low, best = level, excess, candidate
            f_high *= 0.5  # Illinois: the kept end's value halved
        else:
            high, f_high = level, min(excess, radius)
            f_low *= 0.5
    return best


@register
class CAGrad(Method):
    """Conflict-averse gradient descent (Liu et al., NeurIPS 2021).

    Maximises the worst task improvement within a ball around the mean gradient ``g_0``:
    ``max_d min_i g_i . d  s.t.  |d - g_0| <= c |g_0|``. Its dual over the simplex,
    ``w* = argmin_w g_w . g_0 + sqrt(phi) |g_w|`` with ``phi = c^2 |g_0|^2``, gives

    ``d = g_0 + sqrt(phi) / |g_w*| g_w*``, divided by ``1 + c^2`` (``rescale=1``, default),
    ``1 + c`` (``rescale=2``) or not (``rescale=0``), as in the paper's code.

    ``c = 0`` is the mean gradient. For ``c >= 1`` the ball holds ``d = 0``, so the optimum
    never conflicts with a task. Where the recovery of ``d`` from the dual is undefined
    (``g_w* = 0``: a zero gradient, or the origin otherwise in the convex hull and optimal),
    or rounding makes it miss the dual value, ``d`` is the optimum nearest to ``g_0``, from
    one exact non-negative QP (:func:`update_weights`): it hurts no task the optimum does not
    hurt (where the primal optimum is ``0``, e.g. full-rank Pareto-stationary gradients with
    ``c >= 1``, that is ``d = 0``).
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
        w = conflict_averse_weights(G, self.c, start=self.previous_weights)
        self.previous_weights = w
        weights = update_weights(G, w, self.c)
        divisor = {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]
        return Combination(weights=weights / divisor)
