"""Positive solutions of ``G w = w^(-p)``: Nash-MTL (``p = 1``) and FairGrad (``p = 1/alpha``).

The system is the stationarity condition of the strictly convex function

    phi(w) = 1/2 w^T G w - sum_i h(w_i),   h'(w) = w^(-p)   (h = log for p = 1),

on ``w > 0`` (its Hessian ``G + p diag(w^(-p-1))`` is positive definite), so it has at most one
solution and damped Newton steps on ``phi`` find it: each step solves the ``T x T`` Newton
system, is shortened to stay inside ``w > 0`` (fraction to the boundary 0.99) and
backtracked until ``phi`` decreases (Armijo). Quadratic convergence near the solution; pure
torch, float64, typically 5-15 iterations.

Scaling: the problem is solved for the unit-diagonal ``G^ = N^-1 G N^-1`` (``N = diag(|g_i|)``)
and mapped back exactly: with ``w = N^-1 v``, ``G w = w^-p`` reads ``G^ v = c v^-p`` with
``c_i = |g_i|^(p-1)`` (``c = 1`` for Nash-MTL), the same strictly convex problem with weights
``c_i`` on the barrier. Every task is then solved to its own relative accuracy, whatever the
spread of the gradients' norms (scaling by the largest diagonal entry alone left the weight of
a task whose gradient is 1e6 times smaller than another's 25-130% off: its residual was below
the tolerance relative to the other's, and the ridge was as large as its own diagonal entry).
When no positive solution exists (a zero gradient, or ``0`` in the convex hull of the
gradients: ``phi`` is unbounded below) a ridge ``1e-12 I`` on ``G^`` (a zero gradient counts
as having the largest norm) makes it exist; the affected weights are then large but finite
and multiply gradients that cancel. Where that solution lies beyond ``max_iter`` damped steps
(weights ~1e6: e.g. 100-1000 tasks in 8 gradient dimensions), the last iterate is returned and
a warning says that it is not the solution (relative residual above 1e-6). Residuals are
measured per task, relative to that task's own ``w_i^-p``.
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
_NEGLIGIBLE = 1e-30
"""Squared gradient norm, relative to the largest, below which a gradient counts as zero."""
_CHOLESKY_FROM = 128
_WARM_ITERATIONS = 8


def _phi_change(
    G: Tensor, w: Tensor, move: Tensor, gradient: Tensor, p: float, c: Tensor | None
) -> float:
    """``phi(w + move) - phi(w)``, computed as a difference rather than from two values of
    ``phi``: near the solution the decrease of a Newton step (~``r^T H^-1 r``) falls below the
    rounding of ``phi`` itself (``w^T G w`` sums terms ~``|w|^2`` that cancel to ``T``: with
    weights ~1e3 both are 1e-10 apart), and the line search then rejected every step and
    stalled 5 decades above the solution. With ``x = move / w`` and ``r = grad phi(w)``:

    ``phi(w + m) - phi(w) = r . m + 1/2 m^T G m - sum_i c_i w_i^(1-p) e_p(x_i)``,

    ``e_p(x) = ((1 + x)^(1-p) - 1) / (1 - p) - x`` (``log1p(x) - x`` for ``p = 1``), the
    barrier's remainder beyond its first order, from ``log1p`` / ``expm1``."""
    x = move / w
    if p == 1.0:
        remainder = torch.log1p(x) - x
    else:
        remainder = w ** (1.0 - p) * (torch.expm1((1.0 - p) * torch.log1p(x)) / (1.0 - p) - x)
    barrier = remainder.sum() if c is None else c @ remainder
    return float(gradient @ move + 0.5 * move @ G @ move - barrier)


def _target(w: Tensor, p: float, c: Tensor | None) -> Tensor:
    """``c w^-p`` (``w^-p`` when ``c`` is None)."""
    power = w ** (-p)
    return power if c is None else c * power


def _relative_residual(G: Tensor, w: Tensor, p: float, c: Tensor | None) -> float:
    """``max_i |(G w)_i - c_i w_i^-p| / (c_i w_i^-p)``: every task to its own accuracy."""
    target = _target(w, p, c)
    return float(((G @ w - target).abs() / target).max())


def _two_tasks_nash(G: Tensor) -> Tensor:
    """Closed form of ``G w = 1 / w`` for two tasks.

    With ``r = w1 w2`` the equations read ``G11 w1^2 = G22 w2^2 = 1 - G12 r``, so
    ``r^2 G11 G22 = (1 - G12 r)^2`` and ``r = 1 / (sqrt(G11 G22) + G12)`` (the root with
    ``1 - G12 r > 0``), then ``w_i = sqrt((1 - G12 r) / G_ii) = sqrt(s / ((s + G12) G_ii))``
    with ``s = sqrt(G11 G22)``: each task to its own relative accuracy at any ratio of the
    gradients' norms. The ridge (``G_ii (1 + 1e-12)``, the unit-diagonal problem's ``1e-12 I``)
    keeps ``s + G12 > 0`` even for exactly opposite gradients; NaN for a zero gradient."""
    diagonal = G.diagonal() * (1.0 + _RIDGE)
    root = torch.sqrt(diagonal[0] * diagonal[1])
    return torch.sqrt(root / ((root + G[0, 1]) * diagonal))


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
    G: Tensor,
    p: float,
    w: Tensor,
    tol: float,
    max_iter: int,
    min_step: float = 0.0,
    c: Tensor | None = None,
) -> tuple[Tensor, bool]:
    """Damped Newton steps on ``phi`` from ``w`` for ``G w = c w^-p``; returns the last iterate
    and whether the per-task relative residual met the tolerance (``False`` at once when a
    step must shrink below ``min_step``)."""
    previous = float("inf")
    for _ in range(max_iter):
        target = _target(w, p, c)
        residual = G @ w - target
        size = float((residual.abs() / target).max())
        if size <= tol:
            return w, True
        if size >= 0.5 * previous and size <= _ACCEPTED_RESIDUAL:
            # Newton stopped gaining (quadratic convergence would divide the residual) at a
            # relative residual float32 gradients cannot tell from 0: the rounding floor of
            # an ill-conditioned system (seen at T = 512: 4e-10 for 90 more steps)
            return w, True
        previous = size
        direction = _newton_direction(G + torch.diag(p * target / w), residual)
        shrinking = direction < 0
        step = 1.0
        if bool(shrinking.any()):
            step = min(1.0, 0.99 * float((-w[shrinking] / direction[shrinking]).min()))
        slope = float(residual @ direction)
        while True:
            change = _phi_change(G, w, step * direction, residual, p, c)
            if change <= 1e-4 * step * slope or step <= 1e-12:
                break
            step *= 0.5
            if step < min_step:
                return w, False
        w = w + step * direction
    return w, _relative_residual(G, w, p, c) <= tol


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
    given = torch.finfo(gramian.dtype) if gramian.is_floating_point() else torch.finfo()
    G = gramian.detach().to(torch.float64)
    G = 0.5 * (G + G.T)
    num_tasks = G.shape[0]
    if num_tasks == 2 and p == 1.0:
        closed = _two_tasks_nash(G)
        # (exactly opposite gradients rounded to G12^2 > G11 G22, or a zero gradient: the
        # Newton path below)
        if bool(torch.isfinite(closed).all() & (closed > 0).all()):
            return closed
    diagonal = G.diagonal()
    largest = diagonal.max()
    if not bool(largest > 0):
        largest = torch.ones((), dtype=torch.float64, device=G.device)
    # |g_i|; a zero gradient (or one whose squared norm is rounded to nothing or into the
    # subnormal range of the Gram matrix's dtype) counts as the largest, as the ridge assumes.
    # Dot products round relative to |g_i| |g_j|, so any other gradient, however small next
    # to the rest, is resolved by G^ as well as the largest is.
    floor = torch.clamp(largest * _NEGLIGIBLE, min=given.tiny / given.eps)
    norms = torch.where(diagonal > floor, diagonal, largest).sqrt()
    plain = G / torch.outer(norms, norms)
    G = plain + _RIDGE * torch.eye(num_tasks, dtype=G.dtype, device=G.device)
    # G w = w^-p with w = v / |g|: G^ v = c v^-p, c = |g|^(p-1), taken relative to the largest
    # norm (a common factor k of c scales v by k^(1/(1+p)))
    c = None if p == 1.0 else (norms / norms.max()) ** (p - 1.0)
    back = (norms.max() ** ((p - 1.0) / (1.0 + p))) / norms  # v -> w

    def polished(v: Tensor) -> Tensor:
        """``w`` from the ridge's solution ``v``, polished without the ridge where it shifted
        a task's equation beyond the tolerance (by ``1e-12 v_i``: relative to a task whose
        ``c_i v_i^-p`` is 1e7 times smaller than ``v_i``, 1e-5); kept where that does not
        converge quickly (no positive solution without the ridge)."""
        if _relative_residual(plain, v, p, c) > tol:
            better, converged = _newton(plain, p, v, tol, _WARM_ITERATIONS, min_step=0.1, c=c)
            if converged:
                v = better
        return v * back

    cold = G.diagonal().clamp_min(_RIDGE) ** (-1.0 / (1.0 + p))  # exact for orthogonal gradients
    if c is not None:
        cold = cold * c ** (1.0 / (1.0 + p))
    if initial is not None and initial.shape == cold.shape:
        start = initial.detach().to(cold) / back
        if bool(torch.isfinite(start).all() & (start > 0).all()):
            # a few Newton steps from the previous solution; a start that does not converge
            # quickly (a Gram matrix that moved far) falls back to the cold start
            w, converged = _newton(G, p, start, tol, _WARM_ITERATIONS, min_step=0.1, c=c)
            if converged:
                return polished(w)
    w, converged = _newton(G, p, cold, tol, max_iter, c=c)
    if not converged:
        _report_unsolved(G, p, w, max_iter, c)
        return w * back
    return polished(w)


def _report_unsolved(G: Tensor, p: float, w: Tensor, max_iter: int, c: Tensor | None) -> None:
    """Say that the returned weights are not the solution (never silently): where ``0`` lies
    in (or next to) the convex hull of the gradients, no positive solution exists, and the
    ridge's solution has weights ~``1 / sqrt(ridge)``, further than damped Newton steps from
    the start travel in ``max_iter`` steps (measured: T = 100-1000 tasks in 8 dimensions)."""
    global _unsolved
    residual = _relative_residual(G, w, p, c)
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
