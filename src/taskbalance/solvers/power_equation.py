"""Positive solutions of ``G w = w^(-p)``: Nash-MTL (``p = 1``) and FairGrad (``p = 1/alpha``).

The system is the stationarity condition of the strictly convex function

    phi(w) = 1/2 w^T G w - sum_i h(w_i),   h'(w) = w^(-p)   (h = log for p = 1),

on ``w > 0`` (its Hessian ``G + p diag(w^(-p-1))`` is positive definite), so it has at most one
solution and damped Newton steps on ``phi`` find it: each step solves the ``T x T`` Newton
system, is shortened to stay inside ``w > 0`` (fraction to the boundary 0.99) and
backtracked until ``phi`` decreases (Armijo). Quadratic convergence near the solution; pure
torch, float64, typically 5-15 iterations.

Scaling: with ``s`` the largest diagonal entry, the problem is solved for ``G / s`` and the
result multiplied by ``s^(-1/(1+p))`` (exact, since ``G w = w^-p`` is homogeneous), so any
gradient scale is handled. When no positive solution exists (a zero gradient, or ``0`` in the
convex hull of the gradients: ``phi`` is unbounded below) a ridge ``1e-12 I`` on the scaled
matrix makes it exist; the affected weights are then large but finite and multiply gradients
that cancel. Where that solution lies beyond ``max_iter`` damped steps (weights ~1e6: e.g.
100-1000 tasks in 8 gradient dimensions), the last iterate is returned and a warning says
that it is not the solution (relative residual above 1e-6).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

__all__ = ["solve_power_equation"]

logger = logging.getLogger(__name__)
_unsolved = 0  # calls that ended far from the solution (logged: the 1st, every 100th)
_ACCEPTED_RESIDUAL = 1e-6
"""Relative residual of ``G w = w^-p`` below which an iteration that missed the tolerance
(1e-10) by rounding is still the solution to the gradients' float32 accuracy."""

_RIDGE = 1e-12
_CHOLESKY_FROM = 128
_WARM_ITERATIONS = 8


def _phi(G: Tensor, w: Tensor, p: float) -> Tensor:
    barrier = torch.log(w).sum() if p == 1.0 else (w ** (1.0 - p)).sum() / (1.0 - p)
    return 0.5 * w @ G @ w - barrier


def _two_tasks_nash(G: Tensor) -> Tensor:
    """Closed form of ``G w = 1 / w`` for two tasks.

    With ``r = w1 w2`` the equations read ``G11 w1^2 = G22 w2^2 = 1 - G12 r``, so
    ``r^2 G11 G22 = (1 - G12 r)^2`` and ``r = 1 / (sqrt(G11 G22) + G12)`` (the root with
    ``1 - G12 r > 0``), then ``w_i = sqrt((1 - G12 r) / G_ii)``. The ridge on ``G`` keeps
    ``sqrt(G11 G22) + G12 > 0`` even for exactly opposite gradients."""
    root = torch.sqrt(G[0, 0] * G[1, 1])
    product = 1.0 / (root + G[0, 1])
    common = 1.0 - G[0, 1] * product
    return torch.sqrt(common / G.diagonal())


def _newton_direction(hessian: Tensor, residual: Tensor) -> Tensor:
    """``-H^{-1} r`` for the positive definite Hessian: by Cholesky (half the work of LU,
    which matters from hundreds of tasks), LU where rounding made the factorisation fail.
    Below ``_CHOLESKY_FROM`` tasks one LU call costs less than the factorisation, solve and
    check (measured 6-11% at T = 2-40)."""
    if hessian.shape[0] >= _CHOLESKY_FROM:
        factor, info = torch.linalg.cholesky_ex(hessian)
        if int(info) == 0:
            direction = -torch.cholesky_solve(residual.unsqueeze(1), factor).squeeze(1)
            if bool(torch.isfinite(direction).all()):
                return direction
    by_lu: Tensor = -torch.linalg.solve(hessian, residual)
    return by_lu


def _newton(
    G: Tensor, p: float, w: Tensor, tol: float, max_iter: int, min_step: float = 0.0
) -> tuple[Tensor, bool]:
    """Damped Newton steps on ``phi`` from ``w``; returns the last iterate and whether the
    residual met the tolerance (``False`` at once when a step must shrink below
    ``min_step``)."""
    value = _phi(G, w, p)
    previous = float("inf")
    for _ in range(max_iter):
        target = w ** (-p)
        residual = G @ w - target
        size = float(residual.abs().max())
        if size <= tol * float(w.abs().max() ** (-p) + 1.0):
            return w, True
        if size >= 0.5 * previous and size <= _ACCEPTED_RESIDUAL * float(target.abs().max()):
            # Newton stopped gaining (quadratic convergence would divide the residual) at a
            # relative residual float32 gradients cannot tell from 0: the rounding floor of
            # an ill-conditioned system (seen at T = 512: 4e-10 for 90 more steps)
            return w, True
        previous = size
        direction = _newton_direction(G + torch.diag(p * w ** (-p - 1.0)), residual)
        shrinking = direction < 0
        step = 1.0
        if bool(shrinking.any()):
            step = min(1.0, 0.99 * float((-w[shrinking] / direction[shrinking]).min()))
        slope = float(residual @ direction)
        while True:
            candidate = w + step * direction
            candidate_value = _phi(G, candidate, p)
            if bool(candidate_value <= value + 1e-4 * step * slope) or step <= 1e-12:
                break
            step *= 0.5
            if step < min_step:
                return w, False
        w, value = candidate, candidate_value
    residual = G @ w - w ** (-p)
    return w, float(residual.abs().max()) <= tol * float(w.abs().max() ** (-p) + 1.0)


def solve_power_equation(
    gramian: Tensor,
    p: float = 1.0,
    *,
    tol: float = 1e-10,
    max_iter: int = 100,
    initial: Tensor | None = None,
) -> Tensor:
    """The positive ``w`` with ``G w = w^(-p)`` (elementwise), as float64 ``(T,)``.

    ``initial`` (e.g. the previous training step's solution) starts the Newton iterations
    there when it is positive and finite; the solution is the same unique one, found in fewer
    iterations when the Gram matrix changed little (near Pareto-stationary points, where the
    weights are large and a cold start needs many damped steps)."""
    if p <= 0:
        raise ValueError(f"p must be > 0, got {p}")
    G = gramian.detach().to(torch.float64)
    G = 0.5 * (G + G.T)
    num_tasks = G.shape[0]
    scale = G.diagonal().max()
    if not bool(scale > 0):
        scale = torch.ones((), dtype=torch.float64, device=G.device)
    G = G / scale + _RIDGE * torch.eye(num_tasks, dtype=G.dtype, device=G.device)
    if num_tasks == 2 and p == 1.0:
        closed = _two_tasks_nash(G)
        # (exactly opposite gradients rounded to G12^2 > G11 G22: the Newton path below)
        if bool(torch.isfinite(closed).all() & (closed > 0).all()):
            return closed * scale ** (-0.5)
    cold = G.diagonal().clamp_min(_RIDGE) ** (-1.0 / (1.0 + p))  # exact for orthogonal gradients
    if initial is not None and initial.shape == cold.shape:
        start = initial.detach().to(cold) * scale ** (1.0 / (1.0 + p))
        if bool(torch.isfinite(start).all() & (start > 0).all()):
            # a few Newton steps from the previous solution; a start that does not converge
            # quickly (a Gram matrix that moved far) falls back to the cold start
            w, converged = _newton(G, p, start, tol, _WARM_ITERATIONS, min_step=0.1)
            if converged:
                return w * scale ** (-1.0 / (1.0 + p))
    w, converged = _newton(G, p, cold, tol, max_iter)
    if not converged:
        _report_unsolved(G, p, w, max_iter)
    return w * scale ** (-1.0 / (1.0 + p))


def _report_unsolved(G: Tensor, p: float, w: Tensor, max_iter: int) -> None:
    """Say that the returned weights are not the solution (never silently): where ``0`` lies
    in (or next to) the convex hull of the gradients, no positive solution exists, and the
    ridge's solution has weights ~``1 / sqrt(ridge)``, further than damped Newton steps from
    the start travel in ``max_iter`` steps (measured: T = 100-1000 tasks in 8 dimensions)."""
    global _unsolved
    target = w ** (-p)
    residual = float((G @ w - target).abs().max() / target.abs().max())
    if residual <= _ACCEPTED_RESIDUAL:
        return  # short of the tolerance by rounding only: the solution to float32 accuracy
    _unsolved += 1
    if _unsolved != 1 and _unsolved % 100 != 0:
        return
    logger.warning(
        "G w = w^-%g (Nash-MTL / FairGrad weights) was not solved in %d Newton steps "
        "(relative residual %.1e, largest weight %.1e; %d such call(s) so far): the task "
        "gradients' convex hull contains 0 or nearly (a Pareto-stationary point, or more "
        "tasks than independent gradient directions), where no positive solution exists. "
        "The step uses the last iterate, a positive combination of the gradients that is not "
        "the method's solution; mgda, upgrad or dualproj are well defined there",
        p,
        max_iter,
        residual,
        float(w.max()),
        _unsolved,
    )
