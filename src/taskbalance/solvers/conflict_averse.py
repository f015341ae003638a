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


def conflict_averse_weights(gramian: Tensor, rho_factor: float, *, max_iter: int = 60) -> Tensor:
    """``w*`` above for ``rho = rho_factor * |g_0|`` (float64, on the simplex)."""
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
    ones = torch.ones_like(a)
    previous: list[Tensor] = []

    def inner(t: float) -> tuple[Tensor, float]:
        s = t / rho
        shifted = G + s * (b.unsqueeze(1) * ones + ones.unsqueeze(1) * b) + s * s * g0_squared
        w = min_norm_simplex(shifted, start=previous[-1] if previous else None)
        previous[:] = [w]  # warm start: the support changes little between nearby t
        return w, t * t - float(w @ G @ w)

    low, high = 0.0, float(G.diagonal().max()) ** 0.5 + 1e-12
    w_low, f_low = inner(low)
    if f_low >= 0:  # q(w) = 0: the origin is in the hull
        return w_low
    w_high, f_high = inner(high)
    if f_high <= 0:
        return w_high
    w, side = w_high, 0
    for _ in range(max_iter):
        t = (low * f_high - high * f_low) / (f_high - f_low)
        w, f = inner(t)
        if abs(f) <= 1e-10 * max(high * high, 1e-300):
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
