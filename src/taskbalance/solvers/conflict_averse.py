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

Faster path (used first): on a fixed support the inner minimiser is affine in ``t``, so the
equation ``t^2 = q(w(t))`` is a quadratic whose root is the optimum when the support is right
(:func:`_on_support`, which certifies it by the optimality conditions at ``t = |g_w|``). A
wrong support is corrected by KKT solves alone (drop the points whose weight goes negative,
add the violators); inner solves are made only when that stalls, from ``t = max_i |g_i| / 2``
down (small supports, grown by warm starts), typically 1-3 instead of the search's 12-16. The
bracket's ends need no solve unless the fallback search asks for them: ``f(max_i |g_i|) > 0``
is known, and ``t = 0`` (MGDA's problem, whose support is far wider than CAGrad's) is solved
only there. A previous step's ``w*`` (``start``) is tried first. Two tasks have a closed form.
"""

from __future__ import annotations

import torch
from torch import Tensor

from taskbalance.solvers.simplex import min_norm_simplex, wolfe_min_norm

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


def _on_support(
    G: Tensor,
    b: Tensor,
    g0_squared: float,
    rho: float,
    support: Tensor,
    bracket: tuple[float, float],
) -> tuple[float | None, Tensor | None, Tensor | None]:
    """The exact optimum if its support is ``support``: ``(t*, w*, None)``, else
    ``(t, None, next)`` with the root ``t`` found on this support (to move to) and a support
    to try next (``support`` less the points whose weight went negative, or plus the points
    that violate the optimality conditions; ``None`` if neither), or ``(None, None, None)``.

    On a fixed support ``S`` the inner minimiser is affine in ``s = t / rho``:
    ``w(s) = w0 + s w1`` with ``[G_S 1; 1^T 0] [w0; l0] = [0; 1]`` and
    ``[G_S 1; 1^T 0] [w1; l1] = [-b_S; 0]`` (the shift's parts along ``1`` fold into the
    multiplier). So ``t^2 = q(w(t / rho))`` is a quadratic equation in ``t``; its root is the
    optimum when ``w`` stays non-negative and satisfies the inner optimality conditions there.
    """
    k = int(support.numel())
    G_S = G[support][:, support]
    kkt = G.new_zeros((k + 1, k + 1))
    kkt[:k, :k] = G_S
    kkt[:k, k] = 1.0
    kkt[k, :k] = 1.0
    rhs = G.new_zeros((k + 1, 2))
    rhs[k, 0] = 1.0
    rhs[:k, 1] = -b[support]
    solution, info = torch.linalg.solve_ex(kkt, rhs)
    if int(info) != 0 or not bool(torch.isfinite(solution).all()):
        return None, None, None
    w0, w1 = solution[:k, 0], solution[:k, 1]
    q0, q01, q11 = float(w0 @ G_S @ w0), float(w0 @ G_S @ w1), float(w1 @ G_S @ w1)
    quadratic, linear, constant = 1.0 - q11 / rho**2, -2.0 * q01 / rho, -q0
    if abs(quadratic) < 1e-14:
        roots = [-constant / linear] if linear != 0 else []
    else:
        discriminant = linear * linear - 4.0 * quadratic * constant
        if discriminant < 0:
            return None, None, None
        root = discriminant**0.5
        roots = [(-linear + root) / (2 * quadratic), (-linear - root) / (2 * quadratic)]
    low, high = bracket
    inside = [t for t in roots if low <= t <= high]
    if not inside:
        return None, None, None
    suggestion: Tensor | None = None
    for index, t in enumerate(inside):
        scaled = t / rho
        on_support = w0 + scaled * w1
        if not bool((on_support >= -1e-12).all()):
            if index == 0:
                suggestion = support[on_support > 1e-12]
            continue
        w = torch.zeros_like(b)
        w[support] = on_support.clamp_min(0.0)
        w = w / w.sum()
        # the shifted Gram matrix's gradient (G + s (b 1^T + 1 b^T) + s^2 |g_0|^2) w, as
        # 1^T w = 1, without forming it
        Gw = G @ w
        gradient = Gw + scaled * (b + b @ w) + scaled * scaled * g0_squared
        value = w @ gradient  # ~ t^2: the check is relative to it (it can be tiny)
        # a certificate needs t = |g_w| (rounding near a singular support, or the clamping
        # above, can leave a root that is not: seen where the optimum is the origin)
        consistent = abs(t * t - float(w @ Gw)) <= 1e-6 * t * t
        violated = gradient < value - 1e-9 * value.abs() - 1e-18
        if consistent and not bool(violated.any()):
            return t, w, None
        if index == 0 and consistent:
            suggestion = (violated | (w > 0)).nonzero().flatten()
    if suggestion is not None and suggestion.numel() == 0:
        suggestion = None
    return inside[0], None, suggestion


def conflict_averse_weights(
    gramian: Tensor,
    rho_factor: float,
    *,
    max_iter: int = 60,
    closed_form: bool = True,
    support_steps: int = 10,
    start: Tensor | None = None,
) -> Tensor:
    """``w*`` above for ``rho = rho_factor * |g_0|`` (float64, on the simplex).

    ``closed_form``: solve ``T = 2`` analytically (:func:`_two_tasks`). ``support_steps``:
    rounds of :func:`_on_support` (guess the support from an inner solve, solve the quadratic
    for ``t`` on it, check; usually 1-3 inner solves instead of the search's ~12) before the
    safeguarded search. ``closed_form=False, support_steps=0`` force the plain search (tests).
    ``start``: a previous step's ``w*`` (warm start: its support is tried first, which on
    consecutive training steps is usually already the optimum's, so no inner solve is made;
    the same optimum otherwise)."""
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

    shifted = torch.empty_like(G)

    def inner(t: float) -> tuple[Tensor, float]:
        # the Gram matrix of the points g_i + s g_0, built in place (two passes; scaled to a
        # largest diagonal entry of 1, as min_norm_simplex would)
        s = t / rho
        torch.addr(G, b, ones, alpha=s, out=shifted)
        shifted.addr_(ones, s * b + s * s * g0_squared)
        shifted.div_(shifted.diagonal().max())
        # near the origin q(w) ~ t^2: the inner tolerance follows that scale
        tol = 1e-12 * min(1.0, (t / high) ** 2) if relative else 1e-12
        # the projected-gradient guess pays only for the first, MGDA-like, solve (t = 0,
        # wide supports): the shifted problems' supports are often a few points, which the
        # classic start finds in a few iterations while the guess costs its ~50 at least
        # (measured at T = 40: 4.8 ms with the guess, 0.4 ms without, support of 2)
        w = wolfe_min_norm(
            shifted,
            tol=max(tol, 1e-24),
            start=previous[-1] if previous else None,
            guess=None if t == 0.0 else False,
        )
        previous[:] = [w]  # warm start: the support changes little between nearby t
        f = t * t - float(w @ G @ w)
        return w, f / (t * t) if relative else f

    high = float(G.diagonal().max()) ** 0.5 + 1e-12
    probe = 1e-4 * high
    low, f_low = 0.0, None  # f(0) = -min_w q(w) <= 0 (MGDA's solve): computed only if needed
    # f(high) > 0 without solving there: q(w) <= max_i G_ii < high^2 on the simplex. The
    # solve at ``high`` is made only if the search below needs the bracket's upper value
    # (measured: CAGrad 0.85x the time with that solve at T = 3 and 10, the same beyond).
    w_high: Tensor | None = None
    f_high: float | None = None
    tolerance = 1e-10 * max(high * high, 1e-300)
    # support steps from t = max_i |g_i| / 2 (small supports, grown by warm-started inner
    # solves as t falls), not from t = 0: MGDA's support there is far wider than CAGrad's
    # and costs a whole MGDA solve (T = 1000: 120 of 330 ms); starting at t = |g_0| was
    # slower (wider first supports, built point by point)
    t = 0.5 * high

    def corrected(
        support: Tensor | None, bracket: tuple[float, float]
    ) -> tuple[Tensor | None, float | None]:
        """``_on_support`` from ``support``, corrected without inner solves (drop the points
        whose weight goes negative, add the violators) while that finds new supports: the
        optimum if one is certified, else the last root found in ``bracket``."""
        tried: set[tuple[int, ...]] = set()
        found: float | None = None
        while support is not None and support.numel() > 0 and len(tried) < support_steps:
            tried.add(tuple(support.tolist()))
            root, exact, support = _on_support(G, b, g0_squared, rho, support, bracket)
            if exact is not None:
                return exact, root
            if root is not None and bracket[0] < root < bracket[1]:
                found = root
            if support is not None and tuple(support.tolist()) in tried:
                break
        return None, found

    if start is not None and start.shape == a.shape and support_steps > 0:
        # a previous step's support (on consecutive training steps it changes by a few
        # points: certified after a few KKT solves, no inner solve)
        start = start.detach().to(a)
        exact, root = corrected((start > 1e-12).nonzero().flatten(), (probe, high))
        if exact is not None:
            return exact
        if root is not None:
            t = root
        previous[:] = [start]
    if support_steps > 0 and t > probe:
        for _ in range(support_steps):
            guess, f = inner(t)  # a support, and a tighter bracket
            if abs(f) <= 1e-10 * t * t:  # relative to t^2: f(0) is unknown yet (it may be 0)
                return guess
            if f < 0:
                low, f_low = t, f
            else:
                high, f_high, w_high = t, f, guess
            exact, root = corrected((guess > 1e-12).nonzero().flatten(), (max(low, probe), high))
            if exact is not None:
                return exact
            # no root on the supports inside the bracket: bisect it
            t = root if root is not None and low < root < high else 0.5 * (low + high)
    if f_low is None:
        previous.clear()  # MGDA's support: far wider than the shifted problems'
        w_low, f_low = inner(0.0)
        if f_low >= -1e-12 * high * high:
            # q(w) = 0: the origin is in the hull, and f(0) = 0 says nothing about the sign of
            # f just above 0. If points g_w = -(t / rho) g_0 lie in the hull (c < 1 when g_0
            # points into it), f < 0 for small t and the optimum has t* > 0 (|g_w| > 0,
            # against g_0); otherwise a point of the hull at the origin is optimal. f is
            # O(t^2) there, so the search runs on f / t^2 = 1 - q(w(t)) / t^2, which has the
            # sign of the outer derivative and does not vanish with t. (An optimum with
            # 0 < t* < the probe is found only to O(probe): objective error ~1e-6 of the
            # largest squared norm, seen only for exactly collinear gradients.)
            if f_high is not None:
                f_high /= high * high
            relative, tolerance = True, 1e-10
            low = probe
            _, f_low = inner(low)
            if f_low >= 0:
                return w_low
    if w_high is None or f_high is None:
        previous.clear()  # the two ends of the bracket share little support
        w_high, f_high = inner(high)
        if f_high <= 0:
            return w_high
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
