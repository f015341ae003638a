"""PCD: follow a primary task, guarantee the others some progress (``pcd``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from taskbalance.engine.needs import Need
from taskbalance.methods._validation import check_fraction, check_positive
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register
from taskbalance.methods.weighting._losses import check_num_tasks
from taskbalance.solvers.nonneg_qp import nonneg_qp

_PRECISION = 10 * torch.finfo(torch.float32).eps
"""Relative precision of the Gram matrix (a float32 product on the device): a direction whose
squared norm is below it times its entries' is zero to rounding."""
_RIDGE = 1e-12
"""Added to the auxiliary Gram matrix's diagonal, relative to its largest entry."""
_FEASIBLE = 1e-6
"""How far (relative to the largest normalised squared norm) a constraint may be missed and
still count as met. The ridge's own shortfall is ``ridge * mu``: within this up to multipliers
of 1e6 (nearly dependent auxiliary gradients); constraints that cannot hold together miss by
about ``tau`` times a squared norm."""


@register
class PCD(Method):
    """Priority-constrained descent (Varam et al., TMLR 2026): the first task is the primary
    objective, the others auxiliaries that must each get a fraction ``tau`` of progress.

    With ``g~_i = s_i g_i`` the normalised gradients (``s_i = 1 / sqrt(v_i + eps)``, ``v_i``
    the bias-corrected moving average of ``|g_i|^2`` with decay ``beta``), the direction is::

        d~ = argmin_d 1/2 |d - g~_1|^2   s.t.   g~_j . d >= tau_j |g~_j|^2   (j = 2..T)

    rescaled to ``|g_1|``. Its KKT conditions give ``d~ = g~_1 + sum_j mu_j g~_j`` with
    ``mu >= 0`` the solution of the dual, a non-negative QP on the Gram matrix alone::

        mu = argmin_{mu >= 0} 1/2 mu^T G~_ss mu + mu^T (G~_s1 - tau o diag(G~_ss))

    solved exactly (:func:`~taskbalance.solvers.nonneg_qp`; the authors enumerate the working
    sets, TorchJD runs Goldfarb-Idnani's dual method: the same minimiser). The weights are
    ``w = (1, mu) o s |g_1| / |d~|``. A zero primary gradient gives a zero update; constraints
    that cannot hold together (two opposite auxiliary gradients) are dropped, giving ``g_1``;
    a ``d~`` that is zero to the Gram matrix's rounding gives a zero update.

    Put the primary task first (the first loss, or the first key of the dict).

    Args:
        tau: the guaranteed fraction in ``[0, 1]``, one for every auxiliary task or a list
            of ``T - 1`` (TorchJD's default 0.02; the paper's code was not available to check).
        beta: decay of the moving average of the squared norms, in ``[0, 1)`` (TorchJD: 0.999).
        eps: added to the average before its inverse square root (TorchJD: 1e-8).

    Scale: the update's norm is the primary gradient's.
    """

    name = "pcd"
    scale = "norm of the primary (first) task's gradient"
    needs_note = "Gram matrix (first task primary)"
    family = "gradient manipulation"
    needs = Need.GRAMIAN
    reference = (
        "Varam et al., Not All Objectives Are Born Equal: Priority-Constrained Descent for "
        "Hierarchical Multi-Objective Optimization, TMLR 2026."
    )
    state_attributes = ("squared_norms", "steps")

    def __init__(
        self, tau: float | Sequence[float] = 0.02, beta: float = 0.999, eps: float = 1e-8
    ) -> None:
        taus = [tau] if isinstance(tau, int | float) else list(tau)
        self.tau: float | list[float] = (
            float(tau) if isinstance(tau, int | float) else [float(t) for t in taus]
        )
        for value in taus:
            if isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"pcd: tau must lie in [0, 1], got {tau!r}")
        self.beta = check_fraction(self.name, "beta", beta)
        self.eps = check_positive(self.name, "eps", eps, allow_zero=True)
        self.squared_norms: Tensor | None = None  # the moving average of |g_i|^2 (float64)
        self.steps = 0

    def hparams(self) -> dict[str, Any]:
        return {"tau": self.tau, "beta": self.beta, "eps": self.eps}

    def combine(self, ctx: Context) -> Combination:
        G = ctx.require_gramian(self.name).to(torch.float64)
        num_tasks = G.shape[0]
        check_num_tasks(self.name, self.squared_norms, num_tasks)
        taus = self._taus(num_tasks, G)
        scales = self._scales(G.diagonal().clamp_min(0.0))
        weights = torch.zeros_like(G.diagonal())
        if not bool(G[0, 0] > 0):  # no primary gradient: no update
            return Combination(weights=weights)
        normalised = G * scales.unsqueeze(0) * scales.unsqueeze(1)
        coefficients = torch.zeros_like(weights)
        coefficients[0] = 1.0
        if num_tasks > 1:
            auxiliary = normalised[1:, 1:]
            linear = normalised[1:, 0] - taus * auxiliary.diagonal()
            mu = _multipliers(auxiliary, linear, _FEASIBLE * float(normalised.diagonal().max()))
            if mu is not None:
                coefficients[1:] = mu
            # (else the constraints cannot hold together: dropped, d~ = g~_1)
        squared, vanishes = _squared_norm(normalised, coefficients)
        if vanishes and bool(coefficients[1:].gt(0).any()) and bool(taus.gt(0).any()):
            # a d~ of rounding noise meets no constraint g~_j . d~ >= tau_j |g~_j|^2 > 0: the
            # multipliers only cancelled (nearly dependent constraints that cannot all hold)
            coefficients[1:] = 0.0
            squared, vanishes = _squared_norm(normalised, coefficients)
        if not vanishes:
            weights = coefficients * scales * (G[0, 0] / squared).sqrt()
        return Combination(weights=weights)

    def _taus(self, num_tasks: int, G: Tensor) -> Tensor:
        if isinstance(self.tau, float):
            return torch.full((num_tasks - 1,), self.tau, dtype=G.dtype, device=G.device)
        if len(self.tau) != num_tasks - 1:
            raise ValueError(
                f"pcd: {len(self.tau)} tau values for {num_tasks - 1} auxiliary tasks (one per "
                "task after the first, the primary)"
            )
        return torch.tensor(self.tau, dtype=G.dtype, device=G.device)

    def _scales(self, squared_norms: Tensor) -> Tensor:
        """``1 / sqrt(v_hat + eps)`` after this step's update of the moving average (0 where
        the average is 0: a gradient that was always 0, whose scale does not matter)."""
        if self.squared_norms is None:
            self.squared_norms = torch.zeros_like(squared_norms)
        self.steps += 1
        self.squared_norms = (
            self.beta * self.squared_norms.to(squared_norms) + (1.0 - self.beta) * squared_norms
        )
        debiased = self.squared_norms / (1.0 - self.beta**self.steps)
        root = (debiased + self.eps).sqrt()
        return torch.where(root > 0, 1.0 / torch.where(root > 0, root, 1.0), 0.0)


def _multipliers(auxiliary: Tensor, linear: Tensor, tolerance: float) -> Tensor | None:
    """The dual's solution ``mu``, or None where the constraints cannot hold together
    (then the dual is unbounded). Solved as it is first; where that misses a constraint (an
    active set of dependent gradients: more tasks than dimensions) again with a ridge at
    rounding level, which keeps ``mu`` bounded and moves ``d~`` by ~1e-12 of its size."""
    identity = torch.eye(len(linear), dtype=auxiliary.dtype, device=auxiliary.device)
    for ridge in (0.0, _RIDGE * float(auxiliary.diagonal().max())):
        mu = nonneg_qp(auxiliary + ridge * identity, linear).clamp_min(0.0)
        slack = auxiliary @ mu + linear  # g~_j . d~ - tau_j |g~_j|^2
        if bool(torch.isfinite(mu).all()) and bool((slack >= -tolerance).all()):
            return mu
    return None


def _squared_norm(gramian: Tensor, coefficients: Tensor) -> tuple[Tensor, bool]:
    """``|d|^2`` of ``d = sum_i c_i g_i``, and whether it is zero to the Gram matrix's
    rounding (below ``_PRECISION`` times ``(sum_i |c_i| |g_i|)^2``)."""
    squared = coefficients @ gramian @ coefficients
    magnitude = (coefficients.abs() @ gramian.diagonal().sqrt()) ** 2
    return squared, not bool(squared > _PRECISION * magnitude)
