"""Exact non-negative quadratic programs, and projections onto the dual cone of the gradients.

``nonneg_qp(A, b)`` solves ``min_x 1/2 x^T A x + b^T x  s.t.  x >= 0`` for a PSD ``A`` with an
active-set method in the style of Lawson & Hanson's NNLS (Solving Least Squares Problems, 1974,
ch. 23), written on ``A`` alone: the free set grows by the most violated KKT multiplier, each
sub-problem on the free set is solved exactly (least squares where it fails to factor:
duplicate gradients), and a step back to feasibility drops variables that hit zero. Finite
termination; float64. Where the free set grows beyond ``A``'s rank (more variables than
dimensions) its system factors in rounding with ~1e16 entries and the iteration can stop short
of the optimum: callers that meet such problems check the KKT conditions and add a ridge at
rounding level (CAGrad always, PCD where the first solve misses a constraint).

``dual_cone_weights(G, U)`` projects combinations of task gradients onto the dual cone
``{d : J d >= 0}`` of the rows of ``J`` (``G = J J^T``): for each row ``u`` of ``U``, the
projection of ``J^T u`` is ``J^T v`` with ``v = argmin_{v >= u} v^T G v`` (Quinton & Rey, 2024,
Jacobian Descent for Multi-Objective Optimization, Prop. 1). With ``x = v - u >= 0`` this is the
non-negative QP above with ``A = G``, ``b = G u``. ``G`` is scaled by its largest diagonal entry
first (the weights do not depend on the gradients' scale), never regularised: the projection
stays exact at any scale.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from taskbalance.solvers.cholesky import (
    PIVOT_RATIO,
    host_cholesky_or_none,
    host_solve_with_factor,
    host_submatrix,
    reliable,
)
from taskbalance.solvers.host_threads import blas_threads_like_torch
from taskbalance.solvers.projected_gradient import fista_iterates, largest_eigenvalue_bound

__all__ = ["batched_nonneg_qp", "dual_cone_weights", "nonneg_qp"]


def _solve_free(A: Tensor, b: Tensor, free: Tensor) -> Tensor:
    index = free.nonzero().flatten()
    sub_a = A[index][:, index]
    sub_b = -b[index]
    solution: Tensor
    solution, info = torch.linalg.solve_ex(sub_a, sub_b)
    if int(info) != 0 or not bool(torch.isfinite(solution).all()):
        solution = torch.linalg.lstsq(sub_a, sub_b.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    return solution


def nonneg_qp(A: Tensor, b: Tensor, *, tol: float = 1e-12, max_iter: int | None = None) -> Tensor:
    """``argmin_{x >= 0} 1/2 x^T A x + b^T x`` for symmetric PSD ``A`` (float64)."""
    x, _ = _active_set(A, b, tol=tol, max_iter=max_iter)
    return x


def _active_set(
    A: Tensor, b: Tensor, *, tol: float = 1e-12, max_iter: int | None = None
) -> tuple[Tensor, int]:
    """:func:`nonneg_qp`'s iteration; also returns the number of outer iterations made
    (each costs at least one ``n x n`` matrix-vector product)."""
    n = b.shape[0]
    A = A.to(torch.float64)
    b = b.to(torch.float64)
    x = torch.zeros_like(b)
    free = torch.zeros(n, dtype=torch.bool, device=b.device)
    blocked = torch.zeros_like(free)
    limit = max_iter if max_iter is not None else 3 * n + 20
    scale = max(float(A.diagonal().abs().max()), float(b.abs().max()), 1e-300)
    threshold = tol * scale
    best_value, best_x = math.inf, x
    iterations = 0
    for iterations in range(1, limit + 1):  # noqa: B007 (the count is returned)
        gradient = A @ x + b
        value = 0.5 * float(x @ (gradient + b))  # 1/2 x^T A x + b^T x
        if value >= best_value:
            # the value decreases strictly at every outer iteration in exact arithmetic;
            # where it did not, rounding decides (a Gram matrix computed in float32 is
            # indefinite at ~1e-7 of its scale with more tasks than dimensions): keep the
            # best point instead of chasing rounding noise until the iteration cap. This
            # includes an iteration that only blocked its candidate: in exact arithmetic the
            # most violated index is never degenerate (its column is independent of the
            # free ones, or its gradient would be 0), so a blocked one means every remaining
            # violation is at rounding level (measured: continuing past it took 10x longer
            # and ended 1.4e-3 from the exact projection, stopping 2e-6)
            x = best_x
            break
        best_value, best_x = value, x.clone()
        violated = ~free & ~blocked & (gradient < -threshold)
        if not bool(violated.any()):
            break
        candidate = int(torch.where(violated, gradient, torch.zeros_like(gradient)).argmin())
        free[candidate] = True
        while True:
            index = free.nonzero().flatten()
            target = _solve_free(A, b, free)
            current = x[index]
            if bool((target > 0).all()):
                x.zero_()
                x[index] = target
                break
            shrinking = target <= 0
            steps = current[shrinking] / (current[shrinking] - target[shrinking])
            step = float(torch.nan_to_num(steps, nan=0.0).min().clamp(0.0, 1.0))
            moved = current + step * (target - current)
            dropped = moved <= 1e-15 * max(float(moved.abs().max()), 1.0)
            if bool(dropped[index == candidate].all()) and step == 0.0:
                blocked[candidate] = True  # numerically degenerate direction: do not retry it
            x.zero_()
            x[index] = torch.where(dropped, torch.zeros_like(moved), moved)
            free[index[dropped]] = False
            if not bool(free.any()):
                break
    return x, iterations


def _batched_solve(system: Tensor, rhs: Tensor) -> tuple[Tensor, Tensor]:
    """Solve a batch of symmetric positive definite systems by Cholesky (about twice as fast as
    LU); returns ``(solution, ok)`` where ``ok`` is false for numerically singular systems
    (pivot ratio below 1e-7, i.e. condition number above ~1e14), whose rows the caller must
    solve another way: a least-squares answer there would be accurate only to ~1e-11."""
    factor, info = torch.linalg.cholesky_ex(system)
    solution = torch.cholesky_solve(rhs.unsqueeze(-1), factor).squeeze(-1)
    return solution, reliable(factor, info) & torch.isfinite(solution).all(dim=-1)


def _solve_on_free_sets(A: Tensor, B: Tensor, free: Tensor, identity: Tensor) -> Tensor:
    """``x`` with ``A_FF x_F = -b_F`` on each row's free set ``F`` and 0 elsewhere (0 on the
    whole row where that system is numerically singular).

    The free indices of every row are packed first (stable sort), so the batched systems are
    ``m x m`` with ``m`` the largest free set of a group of rows rather than ``n x n``
    (Cholesky costs ``m^3``); each row's unused tail is the identity. Rows are grouped by the
    size of their free sets (up to ``_GROUPS`` groups of similar size), so that one wide row
    does not make every row's system wide."""
    counts = free.sum(dim=1)
    x = torch.zeros_like(B)
    widest = int(counts.max())
    if widest == 0:
        return x
    # grouping pays where the factorisations dominate (wide free sets), not for small ones
    groups = _GROUPS if B.shape[0] >= 4 * _GROUPS and widest >= _GROUP_FROM else 1
    order_rows = torch.argsort(counts)
    for rows in torch.tensor_split(order_rows, groups):
        if rows.numel():
            x[rows] = _solve_group(A, B[rows], free[rows], counts[rows], identity)
    return x


_GROUP_FROM = 96
"""Widest free set from which rows are grouped (measured: a loss below ~100 at T = 128)."""

_GROUPS = 4
"""Groups of rows by free-set size in one batched solve (the cost is the sum of each group's
``rows x m^3`` instead of ``all rows x max m^3``)."""


def _solve_group(A: Tensor, B: Tensor, free: Tensor, counts: Tensor, identity: Tensor) -> Tensor:
    k = B.shape[0]
    m = int(counts.max())
    x = torch.zeros_like(B)
    if m == 0:
        return x
    order = torch.argsort((~free).to(torch.int8), dim=1, stable=True)[:, :m]  # free first
    valid = torch.arange(m, device=B.device).unsqueeze(0) < counts.unsqueeze(1)
    pair = valid.unsqueeze(2) & valid.unsqueeze(1)
    packed = A[order.unsqueeze(2), order.unsqueeze(1)]
    system = torch.where(pair, packed, identity[:m, :m].expand(k, m, m))
    rhs = torch.where(valid, -B.gather(1, order), torch.zeros_like(order, dtype=B.dtype))
    solution, ok = _batched_solve(system, rhs)
    values = torch.where(valid & ok.unsqueeze(1), solution, torch.zeros_like(solution))
    return x.scatter_(1, order, values)


def batched_nonneg_qp(
    A: Tensor, B: Tensor, *, max_iter: int = 30, tol: float = 1e-10, start: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Many non-negative QPs sharing ``A``: ``argmin_{x >= 0} 1/2 x^T A x + b^T x`` per row ``b``
    of ``B`` (``(k, n)``), all at once.

    Primal-dual active-set method (Hintermueller, Ito & Kunisch, SIAM J. Optim. 13, 2002):
    guess the active set, solve the equality-constrained problem on the free variables (one
    batched linear solve for all rows), read the multipliers ``mu = A x + b`` on the active
    ones, and move every index with ``mu_j - x_j > 0`` to the active set; stop when no set
    changes. It usually needs a handful of iterations, each a batched ``n x n`` solve, instead
    of one small solve per added variable per row.

    ``start`` (``(k, n)`` bool, e.g. the previous step's active sets) replaces the initial
    guess ``b > 0``: a warm start only changes how many iterations are needed. From
    ``_ROWWISE_FROM`` variables on (with n / 4 rows or more and wide free sets), the rows are
    solved one at a time from a projected-gradient guess of their sets instead
    (:func:`_guess_active_sets`; ``start`` is not used there: the fresh guess measured closer
    to the answer than the previous step's sets).

    Returns ``(x, solved)``: ``solved[r]`` is true where row ``r`` satisfies the KKT conditions
    to ``tol`` (relative). Rows that do not (PDAS can cycle on singular ``A``, and a free set
    whose sub-matrix is numerically singular is not solved here) are for the caller to finish
    with the exact :func:`nonneg_qp`.
    """
    n = B.shape[1]
    A = A.to(torch.float64)
    B = B.to(torch.float64)
    identity = torch.eye(n, dtype=A.dtype, device=A.device)
    if start is not None and start.shape == B.shape:
        active = start.to(device=B.device, dtype=torch.bool)
    else:
        active = B > 0  # x = 0 is optimal for a coordinate whose linear term is positive
    x = torch.zeros_like(B)
    wide = n >= _ROWWISE_FROM and float((~active).sum(dim=1).double().mean()) >= _WIDE_FREE_SETS
    if wide and 4 * B.shape[0] >= n:  # (few rows: the batched iterations cost less)
        # a fresh guess beats the previous step's sets here (measured at T = 512 on the
        # large-task benchmark: 1 factorisation per row against 1.9)
        x = _nonneg_qp_rowwise(A, B, _guess_active_sets(A, B), max_iter=max_iter)
    else:
        for _ in range(max_iter):
            free = ~active
            x = _solve_on_free_sets(A, B, free, identity)
            multipliers = torch.where(active, x @ A + B, torch.zeros_like(B))
            new_active = (multipliers - x) > 0
            if bool((new_active == active).all()):
                break
            active = new_active
    scale = max(float(A.diagonal().abs().max()), float(B.abs().max()), 1e-300)
    gradient = x @ A + B
    solved = (
        torch.isfinite(x).all(dim=1)
        & (x >= -tol * scale).all(dim=1)
        & (gradient >= -tol * scale * 10).all(dim=1)
        & ((x.clamp_min(0) * gradient).abs() <= tol * scale * scale * 10 + 1e-300).all(dim=1)
    )
    return x.clamp_min(0), solved


Array = np.ndarray[Any, Any]


def _bordered_solve(a: Array, b: Array, base: Array, factor: Array, free: Array) -> Array | None:
    """``x`` with ``A_FF x_F = -b_F`` and 0 elsewhere for the free set ``F`` (bool), from the
    Cholesky factor of ``A_SS`` on an earlier free set ``S`` (``base``, bool) rather than a new
    factorisation of ``A_FF``.

    With ``D = F \\ S`` (added) and ``R = S \\ F`` (removed), the system on ``S u D`` with the
    constraints ``x_R = 0`` (multipliers ``l``) is bordered::

        [A_SS  C] [x_S]   [-b_S]        C = [A_SD  E_R],   M = [A_DD  0]
        [C^T   M] [z  ] = [-b_D; 0],    z = [x_D; l],           [0     0]

    and is solved through the Schur complement ``M - C^T A_SS^{-1} C`` (size ``|D| + |R|``):
    one triangular solve with ``|D| + |R| + 1`` right-hand sides, ``O(|S|^2 (|D| + |R|))``
    instead of ``O(|F|^3)``. None where that small system is numerically singular."""
    base_index = np.flatnonzero(base)
    added = np.flatnonzero(free & ~base)
    removed_at = np.flatnonzero(~free[base_index])  # positions of R within S
    d, r = added.size, removed_at.size
    border = np.zeros((base_index.size, d + r + 1))
    # A is symmetric: gather the d added rows (d x n), not the |S| base rows (|S| x n, the
    # larger copy: 0.36 against 0.02 ms at |S| = 480, d = 20, n = 1000)
    border[:, :d] = host_submatrix(a, added, base_index).T
    border[removed_at, d + np.arange(r)] = 1.0
    border[:, -1] = -b[base_index]
    solved = host_solve_with_factor(border, factor)
    coupling, particular = border[:, :-1], solved[:, -1]
    schur = -coupling.T @ solved[:, :-1]
    schur[:d, :d] += host_submatrix(a, added)
    rhs = -coupling.T @ particular
    rhs[:d] -= b[added]
    try:
        z = np.linalg.solve(schur, rhs)
    except np.linalg.LinAlgError:
        return None
    if not np.isfinite(z).all():
        return None
    x = np.zeros_like(b)
    x[base_index] = particular - solved[:, :-1] @ z
    x[added] = z[:d]
    x[~free] = 0.0  # x_R is zero to rounding by the constraint: make it exact
    return x


class _RowFactor:
    """One row's free-set factorisation, kept across its iterations (see
    :func:`_solve_row`): the free set ``base`` it was taken on and its Cholesky factor."""

    __slots__ = ("base", "factor")

    def __init__(self) -> None:
        self.base: Array | None = None
        self.factor: Array | None = None


def _solve_row(a: Array, b: Array, free: Array, kept: _RowFactor) -> Array | None:
    """``x`` with ``A_FF x_F = -b_F`` on the free set ``F`` and 0 elsewhere, from the factor
    of an earlier iteration's set (:func:`_bordered_solve`) while the sets differ in at most
    ``1/_REFACTOR_SHARE`` of its size, else from a new factorisation (kept for the next
    iterations). None where the free system is numerically singular."""
    index = np.flatnonzero(free)
    if index.size == 0:
        return np.zeros_like(b)
    if kept.factor is not None and kept.base is not None:
        changed = int(np.count_nonzero(free ^ kept.base))
        if changed * _REFACTOR_SHARE <= max(int(np.count_nonzero(kept.base)), 1):
            solution = _bordered_solve(a, b, kept.base, kept.factor, free)
            if solution is not None:
                return solution
    kept.factor = host_cholesky_or_none(host_submatrix(a, index))
    if kept.factor is None:
        return None
    kept.base = free.copy()
    solution = np.zeros_like(b)
    solution[index] = host_solve_with_factor(-b[index, None], kept.factor)[:, 0]
    return solution


def _nonneg_qp_rowwise(A: Tensor, B: Tensor, active: Tensor, *, max_iter: int) -> Tensor:
    """:func:`batched_nonneg_qp`'s primal-dual active-set iteration with each row's free-set
    system solved on its own (:func:`_solve_row`: at its own size, from the factor of an
    earlier iteration while its set changes little), in NumPy on the host (one ``n x n`` copy
    where ``A`` is elsewhere; ~1-3 us per small operation against 5-10 us of torch dispatch,
    ~15 of them per row and iteration). The rows go in lockstep, ``_LOCKSTEP_ROWS`` at a
    time: every iteration solves the rows whose sets have not settled, then reads all their
    multipliers ``mu = X A + B`` in one product (row by row, one matrix-vector product each,
    every one reading all of ``A``, they were 26% of the time at T = 1000); a row stops as
    soon as its own set settles. Returns the last iterates: the caller's KKT check tells a
    converged row from one that is not (iteration cap, or a numerically singular free system,
    where the row's iterate is left as it was)."""
    a = A.detach().cpu().numpy()
    rows = B.detach().cpu().numpy()
    x = np.zeros_like(rows)
    guess = active.cpu().numpy()
    with blas_threads_like_torch():
        for start in range(0, rows.shape[0], _LOCKSTEP_ROWS):
            chunk = slice(start, start + _LOCKSTEP_ROWS)
            x[chunk] = _lockstep(a, rows[chunk], guess[chunk].copy(), max_iter)
    return torch.from_numpy(x).to(B.device)


def _lockstep(a: Array, rows: Array, active: Array, max_iter: int) -> Array:
    x = np.zeros_like(rows)
    factors = [_RowFactor() for _ in range(rows.shape[0])]
    live = np.arange(rows.shape[0])
    for _ in range(max_iter):
        solved: list[int] = []
        for position, row in enumerate(live.tolist()):
            solution = _solve_row(a, rows[row], ~active[row], factors[row])
            if solution is not None:
                x[row] = solution
                solved.append(position)
        live = live[solved]
        if not live.size:
            break
        rows_active = active[live]
        current = x[live]
        multipliers = np.where(rows_active, current @ a + rows[live], 0.0)
        new_active = (multipliers - current) > 0
        moving = (new_active != rows_active).any(axis=1)
        active[live] = new_active
        live = live[moving]
        if not live.size:
            break
    return x


def _guess_active_sets(A: Tensor, B: Tensor, *, max_iter: int = 150) -> Tensor:
    """A first guess of every row's active set ``{j : x_j = 0}`` from accelerated projected
    gradient (FISTA: Beck & Teboulle, SIAM J. Imaging Sci. 2, 2009) on all rows at once,
    ``X <- max(0, Y - (Y A + B) / L)`` with ``L`` a bound on ``A``'s largest eigenvalue
    (:func:`largest_eigenvalue_bound`), in float32
    (one ``k x n x n`` product per iteration, far cheaper than the ``k`` factorisations an
    iteration of the active-set method costs), until fewer than 1% of the entries changed
    over the last ten iterations (the active-set iteration corrects a few wrong indices per
    row cheaply, from the guessed set's factor). Only a starting point: the active-set
    iteration then makes the answer exact. On the large-task benchmark's T = 512 Gram matrix
    40 iterations leave ~1.5 of ~270 free indices wrong per row, against ~116 for the guess
    ``b > 0``; at T = 1000 50 iterations leave ~8 of ~480."""
    A32, B32 = A.to(torch.float32), B.to(torch.float32)
    lipschitz = largest_eigenvalue_bound(A32)
    pattern = B > 0
    if not lipschitz > 0:
        return pattern
    iterates = fista_iterates(
        torch.zeros_like(B32), lambda y: y @ A32 + B32, lambda v: v.clamp_min(0.0), 1 / lipschitz
    )
    for iteration, x in enumerate(iterates, start=1):
        if iteration % 10 == 0 or iteration == max_iter:
            new_pattern = x <= 0
            settled = int((new_pattern != pattern).sum()) <= _GUESS_SETTLED * pattern.numel()
            pattern = new_pattern
            if settled or iteration == max_iter:
                break
    return pattern


_WIDE_FREE_SETS = 32
"""Mean size of the first guess's free sets from which the row-by-row path is taken: where
the tasks barely conflict the free sets stay small, the batched iterations cost little and
the projected-gradient guess (a ``k x n x n`` product per iteration) would dominate (T = 1000
tasks with a common gradient component and ~0.15 conflicts per row: 0.26 s batched, 0.79 s
row by row)."""

_LOCKSTEP_ROWS = 32
"""Rows solved in lockstep by :func:`_nonneg_qp_rowwise`: their multipliers are one
``32 x n x n`` product per iteration, and the factors they keep (up to ``32 m^2`` floats)
stay small (all rows at once kept ~1.8 GB of factors at T = 1000 and ran 1.6x slower)."""

_GUESS_SETTLED = 0.01
"""Share of changed entries over ten iterations below which the guess stops."""

_REFACTOR_SHARE = 6
"""A row's free-set system is refactorised once its set differs from the factored one in
more than 1/6 of the factored size: a solve with ``d`` right-hand sides costs ``2 m^2 d``,
a factorisation ``m^3 / 3``."""

_ROWWISE_FROM = 80
"""Number of variables from which :func:`batched_nonneg_qp` starts from the projected-gradient
guess and solves row by row (each row stops when its own set settles, later iterations reuse
a factor, systems at their own size) instead of all rows in one batched factorisation per
iteration (faster for small problems, where per-call overhead dominates). Measured on
conflicting random gradients: batched 9.8 / 34 / 69 ms, row by row 11 / 21 / 33 ms at
T = 64 / 96 / 128."""


_FALLBACK_BUDGET = 1.5e9
"""Work allowed to the exact per-row fallbacks of one :func:`dual_cone_weights` call, in
``T^2``-sized units (outer iterations x ``T^2``; about 5 s on one CPU core at the limit, 3.3 ns
per unit measured). Each row's active set grows to at most the rank of ``G`` plus one, so
singular ``G`` (more tasks than gradient dimensions) is cheap where the rank is small: every
row of T = 256 with rank 64 took 3.6 s (1.1e9 units), with rank 8 0.44 s. The cost of the
remaining rows is extrapolated from the rows done; a call that would exceed the budget is
refused with a message instead of taking minutes."""

_SECONDS_PER_UNIT = 3.3e-9


def dual_cone_weights(gramian: Tensor, targets: Tensor, *, start: Tensor | None = None) -> Tensor:
    """For each row ``u`` of ``targets`` (``(k, T)``), ``v = argmin_{v >= u} v^T G v``.

    Returns ``(k, T)`` float64 weights: ``J^T v`` is the projection of ``J^T u`` onto the dual
    cone of the task gradients. All rows are solved together by :func:`batched_nonneg_qp`
    (up to ``_HOST_ROWS_UP_TO`` tasks on the CPU: the same iteration in NumPy); any row it
    does not certify (KKT check) is re-solved by the exact active-set :func:`nonneg_qp`.
    Scale-invariant; all-zero ``G`` returns ``targets``. ``start``: the previous solution's
    ``v == u`` pattern (``(k, T)`` bool), a warm start for the search.
    """
    G = gramian.detach().to(torch.float64)
    G = 0.5 * (G + G.T)
    U = targets.to(torch.float64)
    scale = G.diagonal().max()
    if not bool(scale > 0):
        return U.clone()
    G = G / scale
    linear = U @ G
    if G.device.type == "cpu" and G.shape[0] <= _HOST_ROWS_UP_TO:
        x, solved = _nonneg_qp_rows_in_numpy(G, linear, start)
    else:
        x, solved = batched_nonneg_qp(G, linear, start=start)
    if not bool(solved.all()):
        _exact_rows(G, linear, x, (~solved).nonzero().flatten().tolist())
    return U + x


_HOST_ROWS_UP_TO = 32
"""Number of tasks up to which :func:`dual_cone_weights` runs the primal-dual active-set
iteration in NumPy (~1-3 us per small operation) instead of in torch (5-10 us of dispatch
each, ~200 of them per call at T = 10). Measured, one thread, conflicting random gradients
(``benchmarks/method_ab.py`` and a direct timing): UPGrad 0.52-0.61x the time at
T = 2 / 3 / 10 / 20 / 24 (1.46 -> 0.76 ms at T = 10), DualProj 0.56-0.57x; 2.95 -> 2.23 ms
at T = 32, equal at 48."""


def _nonneg_qp_rows_in_numpy(
    A: Tensor, B: Tensor, start: Tensor | None, *, max_iter: int = 30, tol: float = 1e-10
) -> tuple[Tensor, Tensor]:
    """:func:`batched_nonneg_qp` for small CPU problems in NumPy: the same primal-dual
    active-set iteration on all rows at once (free sets packed first, padded with the
    identity), the same KKT check. A row whose free-set system is not reliably positive
    definite (Cholesky pivots within :data:`~taskbalance.solvers.cholesky.PIVOT_RATIO`) is
    left unsolved, for the exact fallback."""
    a, rows = A.detach().numpy(), B.detach().numpy()
    k = rows.shape[0]
    if start is not None and tuple(start.shape) == rows.shape:
        active = start.numpy().astype(bool)
    else:
        active = rows > 0
    x = np.zeros_like(rows)
    unreliable = np.zeros(k, dtype=bool)
    for _ in range(max_iter):
        x, unreliable = _solve_free_sets_numpy(a, rows, ~active)
        multipliers = np.where(active, x @ a + rows, 0.0)
        new_active = (multipliers - x) > 0
        if np.array_equal(new_active, active):
            break
        active = new_active
    scale = max(float(np.abs(np.diagonal(a)).max()), float(np.abs(rows).max()), 1e-300)
    gradient = x @ a + rows
    solved = (
        ~unreliable
        & (x >= -tol * scale).all(axis=1)
        & (gradient >= -tol * scale * 10).all(axis=1)
        & (np.abs(np.maximum(x, 0) * gradient) <= tol * scale * scale * 10 + 1e-300).all(axis=1)
    )
    return torch.from_numpy(np.maximum(x, 0.0)), torch.from_numpy(solved)


def _solve_free_sets_numpy(
    a: np.ndarray[Any, Any], rows: np.ndarray[Any, Any], free: np.ndarray[Any, Any]
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """``x`` with ``a_FF x_F = -b_F`` on each row's free set (0 elsewhere), and which rows'
    systems are not reliably positive definite (their ``x`` is 0)."""
    k = rows.shape[0]
    counts = free.sum(axis=1)
    width = int(counts.max()) if k else 0
    x = np.zeros_like(rows)
    unreliable = np.zeros(k, dtype=bool)
    if width == 0:
        return x, unreliable
    order = np.argsort(~free, axis=1, kind="stable")[:, :width]  # free indices first
    valid = np.arange(width)[None, :] < counts[:, None]
    pair = valid[:, :, None] & valid[:, None, :]
    system = np.where(pair, a[order[:, :, None], order[:, None, :]], np.eye(width))
    rhs = np.where(valid, -np.take_along_axis(rows, order, axis=1), 0.0)
    try:
        factor = np.linalg.cholesky(system)
        pivots = np.abs(np.diagonal(factor, axis1=1, axis2=2))
        unreliable = ~(pivots.min(axis=1) > PIVOT_RATIO * pivots.max(axis=1))
    except np.linalg.LinAlgError:  # some row's system is singular: find which, one by one
        unreliable = np.array([host_cholesky_or_none(m) is None for m in system])
    usable = ~unreliable
    if usable.any():
        try:
            solution = np.linalg.solve(system[usable], rhs[usable][:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            # LU met an exact zero pivot where the Cholesky pivots passed (a singular system
            # at rounding level, e.g. exactly opposite gradients): those rows are unreliable
            solution = np.zeros((int(usable.sum()), width))
            for position, row in enumerate(np.flatnonzero(usable)):
                try:
                    solution[position] = np.linalg.solve(system[row], rhs[row])
                except np.linalg.LinAlgError:
                    unreliable[row] = True
            kept_rows = ~unreliable[usable]
            solution, usable = solution[kept_rows], ~unreliable
        values = np.where(valid[usable], solution, 0.0)
        kept = np.zeros((values.shape[0], rows.shape[1]))
        np.put_along_axis(kept, order[usable], values, axis=1)  # (padding lands on active: 0)
        x[usable] = kept
    return x, unreliable


def _exact_rows(G: Tensor, linear: Tensor, x: Tensor, rows: list[int]) -> None:
    """Solve ``rows`` of ``x`` in place with the exact active-set method, within
    ``_FALLBACK_BUDGET`` (the remaining rows' cost extrapolated from the rows done)."""
    num_tasks = G.shape[0]
    used = 0
    for done, row in enumerate(rows):
        expected = used * len(rows) / max(done, 1) * num_tasks**2
        if done and expected > _FALLBACK_BUDGET:
            raise ValueError(
                f"the Gram matrix of these {num_tasks} task gradients is (numerically) "
                "singular (more tasks than independent gradient directions), and the exact "
                f"projection onto its dual cone for {len(rows)} of them would take about "
                f"{expected * _SECONDS_PER_UNIT:.0f} s per step on one CPU core (measured on "
                f"the first {done}: {used // done} active-set iterations of O(T^2) per row). "
                "Use fewer tasks (group them: `taskbalance affinity`), "
                "a method that scales to many tasks (mgda, cagrad, nash_mtl, imtl_g, "
                "aligned_mtl, dualproj), or a model whose shared gradients have more "
                "dimensions than there are tasks"
            )
        x[row], iterations = _active_set(G, linear[row])
        used += iterations
