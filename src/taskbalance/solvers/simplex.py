"""Exact minimum-norm point of a convex hull, from the Gram matrix alone.

Solves the quadratic program over the probability simplex

    min_w  w^T G w    subject to  w >= 0,  sum_i w_i = 1,

where ``G = J J^T`` is the Gram matrix of ``T`` points (task gradients). The minimiser gives
the point ``J^T w`` of the convex hull closest to the origin (MGDA's common descent direction).

Algorithm: Wolfe's minimum-norm-point method (P. Wolfe, "Finding the nearest point in a
polytope", Math. Programming 11, 1976), written on inner products only. It is an active-set
method with finite termination: the support ("corral") is kept affinely independent, each
affine sub-problem is solved exactly through its KKT system, and the loop ends when every
vertex satisfies the optimality condition ``(G w)_j >= w^T G w`` (up to a tolerance relative to
the largest squared norm). Work is in float64 on a copy of ``G`` scaled so that its largest
diagonal entry is 1, which makes the result invariant to the scale of the gradients (1e-20 or
1e20 alike). Pure PyTorch; ``T`` is small so the host-side control flow is cheap.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from taskbalance.solvers.cholesky import cholesky_or_none
from taskbalance.solvers.projected_gradient import fista_iterates, largest_eigenvalue_bound

__all__ = ["min_norm_simplex", "wolfe_min_norm"]


def _affine_minimiser(G_S: Tensor) -> Tensor:
    """Weights (summing to 1) of the min-norm point of the affine hull of the corral."""
    k = G_S.shape[0]
    kkt = G_S.new_zeros((k + 1, k + 1))
    kkt[:k, :k] = G_S
    kkt[:k, k] = 1.0
    kkt[k, :k] = 1.0
    rhs = G_S.new_zeros(k + 1)
    rhs[k] = 1.0
    solution, info = torch.linalg.solve_ex(kkt, rhs)
    if int(info) != 0 or not bool(torch.isfinite(solution).all()):
        solution = torch.linalg.lstsq(kkt, rhs.unsqueeze(1)).solution.squeeze(1)
    weights: Tensor = solution[:k]
    return weights


def _two_point(G: Tensor) -> Tensor:
    """Closed form for two points: ``w_1 = clip((G22 - G12) / (G11 + G22 - 2 G12), 0, 1)``
    (Sener & Koltun 2018, Algorithm 1)."""
    denominator = G[0, 0] + G[1, 1] - 2 * G[0, 1]
    first = torch.where(
        denominator > 0, (G[1, 1] - G[0, 1]) / denominator.clamp_min(1e-300), G.new_tensor(0.5)
    ).clamp(0.0, 1.0)
    return torch.stack([first, 1 - first])


def _warm_corral(G: Tensor, start: Tensor, tol: float) -> tuple[Tensor, list[int]] | None:
    """Weights and corral from a previous solution's support: its affine minimiser, with the
    points whose weight is not positive dropped until it is strictly inside the simplex
    (a few rounds; a subset of an affinely independent corral stays one). ``None`` where
    nothing is left: start cold. (Dropping, instead of starting cold whenever one weight
    left the simplex, keeps the warm start on consecutive training steps, whose supports
    differ by a few points: MGDA at T = 128 warm 4.2 -> 1-1.5 ms.)"""
    support = (start > tol).nonzero().flatten()
    floor = support.numel() - max(4, support.numel() // 16)
    for _ in range(8):
        if support.numel() == 0 or support.numel() < floor:
            return None
        target = _affine_minimiser(G[support][:, support])
        inside = target > tol
        if bool(inside.all()):
            weights = G.new_zeros(G.shape[0])
            weights[support] = target
            return weights, support.tolist()
        support = support[inside]
    return None


class _CorralFactor:
    """Affine minimisers of the corral ``S`` from a Cholesky factor of ``M = G_S + 1 1^T``.

    ``M`` is positive definite exactly when the corral's points are affinely independent
    (Wolfe's invariant), and the KKT conditions ``G_S w = lambda 1, 1^T w = 1`` give
    ``M w = (lambda + 1) 1``, so ``w = M^{-1} 1 / (1^T M^{-1} 1)`` (Wolfe 1976, section 4).
    Adding a vertex extends the factor by one row (``O(k^2)``), instead of solving the
    ``(k + 1)``-square KKT system anew (``O(k^3)``) at every major iteration; dropping vertices
    (rarer) refactors. Small corrals (up to ``_FACTOR_FROM`` vertices, where the fixed cost of
    keeping a factor exceeds a direct solve) and corrals where the factor breaks down
    (affinely dependent to rounding) solve the KKT system directly.
    """

    def __init__(self, G: Tensor, corral: list[int]) -> None:
        self.G = G
        self.buffer: Tensor | None = None
        self.reset(corral)

    def reset(self, corral: list[int]) -> None:
        self.corral = list(corral)
        self.ok = False
        if len(self.corral) > _FACTOR_FROM:
            self._factorise()

    def _factorise(self) -> None:
        index = torch.tensor(self.corral, device=self.G.device)
        factor, info = torch.linalg.cholesky_ex(self.G[index][:, index] + 1.0)
        self.ok = int(info) == 0
        if self.ok:
            if self.buffer is None:
                self.buffer = self.G.new_zeros(self.G.shape)
            k = len(self.corral)
            self.buffer[:k, :k] = factor

    def append(self, vertex: int) -> None:
        k = len(self.corral)
        if self.ok and self.buffer is not None:
            index = torch.tensor(self.corral, device=self.G.device)
            column = self.G[index, vertex] + 1.0
            row = torch.linalg.solve_triangular(
                self.buffer[:k, :k], column.unsqueeze(1), upper=False
            ).squeeze(1)
            diagonal = float(self.G[vertex, vertex]) + 1.0
            pivot = diagonal - float(row @ row)
            if pivot > 1e-13 * diagonal:
                self.buffer[k, :k] = row
                self.buffer[k, k] = pivot**0.5
            else:
                self.ok = False
            self.corral.append(vertex)
            return
        self.corral.append(vertex)
        if len(self.corral) == _FACTOR_FROM + 1:
            self._factorise()

    def minimiser(self, index: Tensor) -> Tensor:
        """The affine minimiser; ``index`` is the corral as a tensor (the caller has it)."""
        k = len(self.corral)
        if self.ok and self.buffer is not None:
            u = torch.cholesky_solve(self.buffer.new_ones((k, 1)), self.buffer[:k, :k]).squeeze(1)
            total = u.sum()
            if bool(total > 0) and bool(torch.isfinite(u).all()):
                return u / total
        return _affine_minimiser(self.G[index][:, index])


_FACTOR_FROM = 64
"""Corral size above which the updated factor beats a fresh KKT solve (measured on one CPU
thread: equal below, 2-5x faster at supports of 200-700)."""


def min_norm_simplex(
    gramian: Tensor,
    *,
    tol: float = 1e-12,
    max_iter: int | None = None,
    start: Tensor | None = None,
    guess: bool | None = None,
) -> Tensor:
    """Weights ``w`` on the simplex minimising ``w^T G w`` (exact up to ``tol``).

    Args:
        gramian: symmetric PSD ``(T, T)`` Gram matrix of the points.
        tol: optimality tolerance, relative to the largest diagonal entry of ``G``.
        max_iter: safety cap on major iterations (default ``50 + 10 T``).
        start: a previous solution of a nearby problem (warm start: its support becomes the
            first corral, which saves most major iterations when the support barely changes;
            the result is the same exact minimiser).
        guess: whether a cold start may begin from a projected-gradient guess of the support
            (default: from ``_GUESS_FROM`` points); the same minimiser either way.

    Returns:
        float64 weights of shape ``(T,)``, non-negative, summing to 1. When every point is zero
        (``G = 0``) any weights are optimal and the uniform ones are returned; non-finite
        entries raise ``ValueError``.
    """
    if gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1]:
        raise ValueError(f"expected a square Gram matrix, got shape {tuple(gramian.shape)}")
    num_points = gramian.shape[0]
    G = gramian.detach().to(torch.float64)
    if not bool(torch.isfinite(G).all()):
        raise ValueError("the Gram matrix has non-finite entries")
    G = 0.5 * (G + G.T)
    scale = G.diagonal().max()
    if num_points == 1 or not bool(scale > 0):
        return G.new_full((num_points,), 1.0 / num_points)
    G = G / scale
    if num_points == 2:
        return _two_point(G)
    return wolfe_min_norm(G, tol=tol, max_iter=max_iter, start=start, guess=guess)


def wolfe_min_norm(
    G: Tensor,
    *,
    tol: float,
    max_iter: int | None = None,
    start: Tensor | None = None,
    guess: bool | None = None,
) -> Tensor:
    """Wolfe's method on a Gram matrix the caller has prepared as :func:`min_norm_simplex`
    does: symmetric, finite, float64, largest diagonal entry 1. No check and no copy
    (CAGrad's inner solves build their shifted matrices that way: at T = 1000 the checks and
    copies were ~5 passes over the ``T x T`` matrix per solve)."""
    num_points = G.shape[0]
    # first corral: the previous support where its minimiser is still inside the simplex,
    # else (many points) a projected-gradient guess, else one vertex
    warm = _warm_corral(G, start.to(G), tol) if start is not None else None
    if guess is None:
        guess = num_points >= _GUESS_FROM
    if warm is not None and guess:
        # many points missing from the warm corral (each costs a major iteration): the
        # projected-gradient guess from ``start`` gets closer (MGDA at T = 512 / 1000)
        gradient = G @ warm[0]
        missing = int((gradient < float(warm[0] @ gradient) - tol).sum())
        if missing > _WARM_MISSING:
            warm = None
    guessed = _guessed_corral(G, start) if warm is None and guess else None
    if warm is not None:
        weights, corral = warm
        factor = _CorralFactor(G, corral)
    elif guessed is not None:
        weights, corral = guessed
        factor = _CorralFactor(G, corral)
        weights, corral = _minor_cycle(G, weights, corral, factor, tol, corral[0])
    else:
        weights = G.new_zeros(num_points)
        first = int(torch.argmin(G.diagonal()))
        weights[first] = 1.0
        corral = [first]
        factor = _CorralFactor(G, corral)
    limit = max_iter if max_iter is not None else 50 + 10 * num_points
    best_value, best_weights = math.inf, weights
    for _ in range(limit):
        gradient = G @ weights
        value = float(weights @ gradient)
        if value >= best_value:
            # Wolfe's value decreases strictly at every major iteration in exact arithmetic;
            # where it did not, rounding decides (a Gram matrix computed in float32 is
            # indefinite at ~1e-7 of its scale when there are more points than dimensions):
            # keep the best point instead of cycling until the iteration cap
            weights = best_weights
            break
        best_value, best_weights = value, weights.clone()
        candidate = int(torch.argmin(gradient))
        if bool(gradient[candidate] >= value - tol) or candidate in corral:
            break
        corral.append(candidate)
        factor.append(candidate)
        weights, corral = _minor_cycle(G, weights, corral, factor, tol, candidate)
    weights = weights.clamp_min(0.0)
    return weights / weights.sum()


def _minor_cycle(
    G: Tensor, weights: Tensor, corral: list[int], factor: _CorralFactor, tol: float, restart: int
) -> tuple[Tensor, list[int]]:
    """Wolfe's minor cycle: move from ``weights`` (positive on the corral) towards the affine
    minimiser of the corral, dropping the vertices whose weight reaches zero on the way, until
    the minimiser lies inside the corral's simplex."""
    while True:
        index = torch.tensor(corral, device=G.device)
        target = factor.minimiser(index)
        current = weights[index]
        if bool((target > tol).all()):
            weights.zero_()
            weights[index] = target
            return weights, corral
        shrinking = target <= tol
        steps = current[shrinking] / (current[shrinking] - target[shrinking])
        steps = torch.nan_to_num(steps, nan=0.0)
        theta = float(steps.min().clamp(0.0, 1.0))
        moved = current + theta * (target - current)
        keep = moved > tol
        weights.zero_()
        weights[index[keep]] = moved[keep]
        corral = [c for c, k in zip(corral, keep.tolist(), strict=True) if k]
        if not corral:  # numerical corner case: restart from the best vertex
            corral = [restart]
            weights[restart] = 1.0
            factor.reset(corral)
            return weights, corral
        factor.reset(corral)


def _project_to_simplex(v: Tensor) -> Tensor:
    """Euclidean projection onto the probability simplex (sort and threshold: Held, Wolfe &
    Crowder 1974; Duchi et al., ICML 2008)."""
    ordered = torch.sort(v, descending=True).values
    cumulative = ordered.cumsum(0) - 1.0
    ranks = torch.arange(1, v.numel() + 1, dtype=v.dtype, device=v.device)
    last = int((ordered - cumulative / ranks > 0).nonzero().max())
    return (v - cumulative[last] / (last + 1)).clamp_min(0.0)


def _guessed_corral(G: Tensor, start: Tensor | None) -> tuple[Tensor, list[int]] | None:
    """A first corral for many points: the support of accelerated projected gradient (FISTA:
    Beck & Teboulle 2009) on ``min w^T G w`` over the simplex, from ``start`` (a previous
    solution) or the uniform weights, stopped when the support has not changed for
    ``_GUESS_CHECK`` iterations (at most ``_GUESS_MAX_ITER``). Each iteration is one
    ``T x T`` matrix-vector product, so the guess costs far less than the hundreds of Wolfe
    major iterations it replaces (on the large-task benchmark's T = 1000 Gram matrix, 100
    iterations find the exact support of 780 points). Returns the guess's weights and
    support, or None where the support is affinely dependent to rounding (duplicated or
    collinear gradients: Wolfe's corral must be affinely independent, so those start the
    classic way)."""
    num_points = G.shape[0]
    lipschitz = 2.0 * largest_eigenvalue_bound(G, on_simplex=True)
    if not lipschitz > 0:
        return None
    if start is not None and start.shape == (num_points,) and bool(torch.isfinite(start).all()):
        x = _project_to_simplex(start.to(G))
    else:
        x = G.new_full((num_points,), 1.0 / num_points)
    support = x > 0
    iterates = fista_iterates(x, lambda y: G @ y, _project_to_simplex, 2.0 / lipschitz)
    for iteration, x in enumerate(iterates, start=1):
        if iteration % _GUESS_CHECK == 0:
            settled = bool(((x > 0) == support).all())
            support = x > 0
            if settled or iteration >= _GUESS_MAX_ITER:
                break
    index = support.nonzero().flatten()
    if cholesky_or_none(G[index][:, index] + 1.0) is None:
        return None
    weights = torch.where(support, x, torch.zeros_like(x))
    return weights / weights.sum(), index.tolist()


_GUESS_FROM = 40
"""Number of points from which a cold start may begin from the projected-gradient guess
(measured on one thread, cold: MGDA 9.8 -> 4.2 ms at T = 128 with a small support, 14.7 ->
2.4 ms with a full one, the large-task benchmark's T = 1000 matrix 1.38 s -> 0.13 s; 2.5 ->
1.9 ms at T = 32, below ~16 points the classic start is faster). CAGrad asks for it only in
its first inner solve (``guess=``)."""

_WARM_MISSING = 8
"""Violators of the optimality test a warm corral may miss before the guess is preferred."""

_GUESS_CHECK = 25
_GUESS_MAX_ITER = 100
"""Cap on the guess's iterations: enough for the exact support on well-conditioned problems
(T = 1000: 100), while on singular Gram matrices (more tasks than gradient dimensions), where
projected gradient converges slowly, more iterations cost more than Wolfe's method saves
(T = 1000, 64 dimensions: 73 ms with 100, 174 ms with 1000, classic start 62 ms)."""
