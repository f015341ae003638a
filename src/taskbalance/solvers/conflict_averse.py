"""CAGrad's dual problem, solved from the Gram matrix.

CAGrad (Liu et al., NeurIPS 2021) needs

    w* = argmin_{w in simplex}  b^T w + rho sqrt(w^T G w),   b = G a,  a = 1/T,

(``g_w . g_0 + c |g_0| |g_w|`` with ``g_0`` the mean gradient). With the variational form
``rho sqrt(q) = min_{t > 0} rho (q / (2 t) + t / 2)`` the objective becomes jointly convex in
``(w, t)``; for fixed ``t`` the minimiser over ``w`` is the minimum-norm point of the shifted
points ``g_i + (t / rho) g_0`` (an exact :func:`min_norm_simplex` on a shifted Gram matrix),
and the outer function of ``t`` is convex with derivative sign ``t^2 - q(w(t))``. A safeguarded
secant (Illinois) search on that monotone function finds ``t* = |g_{w*}|``. Every inner solve
is exact; the outer search stops at a relative tolerance of 1e-10.
"""

from __future__ import annotations

import torch
from torch import Tensor

from taskbalance.solvers.simplex import min_norm_simplex

__all__ = ["conflict_averse_weights"]


def _two_tasks(G: Tensor, b: Tensor, rho: float) -> Tensor:
    """Closed form for ``T = 2``: ``w = (lam, 1 - lam)``.

    With ``q(lam) = A lam^2 + 2 C lam + D`` (``A = G11 - 2 G12 + G22``, ``C = G12 - G22``,
    ``D = G22``) and ``u = A lam + C``, ``q = (u^2 + s) / A`` where ``s = G11 G22 - G12^2 >= 0``.
    The objective ``(b1 - b2) lam + b2 + rho sqrt(q)`` is convex; its stationary point solves
    ``u sqrt(A) / sqrt(u^2 + s) = kappa = -(b1 - b2) / rho``, i.e.
    ``u = sign(kappa) sqrt(kappa^2 s / (A - kappa^2))`` when ``A > kappa^2``. The minimum over
    ``[0, 1]`` is the best of that point (clipped) and the two ends - a handful of tensor
    operations, no iteration and no host synchronisation.
    """
    A = G[0, 0] - 2 * G[0, 1] + G[1, 1]
    C = G[0, 1] - G[1, 1]
    s = (G[0, 0] * G[1, 1] - G[0, 1] ** 2).clamp_min(0.0)
    beta = b[0] - b[1]
    kappa = -beta / rho
    tiny = torch.finfo(G.dtype).tiny
    room = (A - kappa**2).clamp_min(tiny)
    u = torch.sign(kappa) * torch.sqrt(kappa**2 * s / room)
    interior = ((u - C) / A.clamp_min(tiny)).clamp(0.0, 1.0)
    candidates = torch.stack([interior, torch.zeros_like(A), torch.ones_like(A)])
    if not bool(A > 0):  # identical gradients: every weighting gives the same update
        return torch.full((2,), 0.5, dtype=G.dtype, device=G.device)
    q = (A * candidates**2 + 2 * C * candidates + G[1, 1]).clamp_min(0.0)
    objective = beta * candidates + b[1] + rho * q.sqrt()
    lam = candidates[objective.argmin()]
    return torch.stack([lam, 1 - lam])


def conflict_averse_weights(
    gramian: Tensor, rho_factor: float, *, max_iter: int = 60, closed_form: bool = True
) -> Tensor:
    """``w*`` above for ``rho = rho_factor * |g_0|`` (float64, on the simplex).

    ``closed_form``: solve ``T = 2`` analytically (:func:`_two_tasks`); ``False`` forces the
    general search (for tests)."""
    G = gramian.detach().to(torch.float64)
    G = 0.5 * (G + G.T)
    num_tasks = G.shape[0]
    a = torch.full((num_tasks,), 1.0 / num_tasks, dtype=G.dtype, device=G.device)
    scale = G.diagonal().max()
    if not bool(scale > 0) or rho_factor == 0:
        return a
    G = G / scale
    b = G @ a
    g0_squared = float(a @ b)
    rho = rho_factor * max(g0_squared, 0.0) ** 0.5
    if rho == 0:
        return min_norm_simplex(G)
    if num_tasks == 2 and closed_form:
        return _two_tasks(G, b, rho)
    ones = torch.ones_like(a)
    previous: list[Tensor] = []
    relative = False  # search on f(t) / t^2 (same sign, well scaled near t = 0)

    def inner(t: float) -> tuple[Tensor, float]:
        s = t / rho
        shifted = G + s * (b.unsqueeze(1) * ones + ones.unsqueeze(1) * b) + s * s * g0_squared
        # near the origin q(w) ~ t^2: the inner tolerance follows that scale
        tol = 1e-12 * min(1.0, (t / high) ** 2) if relative else 1e-12
        w = min_norm_simplex(shifted, tol=max(tol, 1e-24), start=previous[-1] if previous else None)
        previous[:] = [w]  # warm start: the support changes little between nearby t
        f = t * t - float(w @ G @ w)
        return w, f / (t * t) if relative else f

    high = float(G.diagonal().max()) ** 0.5 + 1e-12
    low = 0.0
    w_low, f_low = inner(low)
    if f_low >= -1e-12 * high * high:
        # q(w) = 0: the origin is in the hull, and f(0) = 0 says nothing about the sign of f
        # just above 0. If points g_w = -(t / rho) g_0 lie in the hull (c < 1 when g_0 points
        # into it), f < 0 for small t and the optimum has t* > 0 (|g_w| > 0, against g_0);
        # otherwise a point of the hull at the origin is optimal. f is O(t^2) there, so the
        # search runs on f / t^2 = 1 - q(w(t)) / t^2, which has the sign of the outer
        # derivative and does not vanish with t.
        relative = True
        low = 1e-4 * high
        _, f_low = inner(low)
        if f_low >= 0:
            return w_low
    w_high, f_high = inner(high)
    if f_high <= 0:
        return w_high
    tolerance = 1e-10 if relative else 1e-10 * max(high * high, 1e-300)
    w, side = w_high, 0
    for _ in range(max_iter):
        t = (low * f_high - high * f_low) / (f_high - f_low)
        w, f = inner(t)
        if abs(f) <= tolerance:
            break
        if f < 0:
            low, f_low = t, f
            if side == -1:
                f_high *= 0.5
            side = -1
        else:
            high, f_high = t, f
            if side == 1:
                f_low *= 0.5
            side = 1
        if high - low <= 1e-12 * high:
            break
    return w
