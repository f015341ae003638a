"""The dual-cone solver's row-by-row path (large T): bordered solves from an earlier factor,
per-row stopping, and agreement with the batched path and the exact active-set method."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import float32_gramian
from taskbalance.solvers import nonneg_qp
from taskbalance.solvers.cholesky import cholesky_or_none


def _conflicting_gramian(tasks: int, dims: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(tasks, dims, generator=generator, dtype=torch.float64)
    return J @ J.T


def _assert_kkt(weights: torch.Tensor, targets: torch.Tensor, G: torch.Tensor) -> None:
    """``v >= u``, ``G v >= 0`` and complementarity, relative to G's scale."""
    scale = float(G.diagonal().max())
    excess = weights - targets
    gradient = weights @ G / scale
    assert float(excess.min()) >= -1e-12
    assert float(gradient.min()) >= -1e-9
    assert float((excess.clamp_min(0) * gradient).abs().max()) <= 1e-9


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    size=st.integers(4, 40),
    removed=st.integers(0, 6),
    added=st.integers(0, 6),
)
def test_bordered_solve_equals_a_fresh_factorisation(
    seed: int, size: int, removed: int, added: int
) -> None:
    """The Schur-complement solve on a changed free set, from the factor of the old set,
    is the direct solve of the new set's system."""
    n = size + 8
    generator = torch.Generator().manual_seed(seed)
    A = _conflicting_gramian(n, 3 * n, seed)
    b = torch.randn(n, generator=generator, dtype=torch.float64)
    order = torch.randperm(n, generator=generator)
    base = torch.zeros(n, dtype=torch.bool)
    base[order[:size]] = True
    free = base.clone()
    free[order[: min(removed, size - 1)]] = False
    free[order[size : size + added]] = True
    index = base.nonzero().flatten()
    factor = cholesky_or_none(A[index][:, index])
    assert factor is not None
    solution = nonneg_qp._bordered_solve(
        A.numpy(), b.numpy(), base.numpy(), factor.numpy(), free.numpy()
    )
    assert solution is not None
    x = torch.from_numpy(solution)
    index = free.nonzero().flatten()
    expected = torch.zeros(n, dtype=torch.float64)
    expected[index] = torch.linalg.solve(A[index][:, index], -b[index])
    torch.testing.assert_close(x, expected, rtol=1e-9, atol=1e-9)
    assert bool((x[~free] == 0).all())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rowwise_path_matches_the_batched_path_and_the_exact_method(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = 36
    G = _conflicting_gramian(tasks, 60, seed)
    targets = torch.eye(tasks, dtype=torch.float64)
    monkeypatch.setattr(nonneg_qp, "_ROWWISE_FROM", 1)
    monkeypatch.setattr(nonneg_qp, "_WIDE_FREE_SETS", 0)
    rowwise = nonneg_qp.dual_cone_weights(G, targets)
    monkeypatch.setattr(nonneg_qp, "_ROWWISE_FROM", 10**9)
    batched = nonneg_qp.dual_cone_weights(G, targets)
    torch.testing.assert_close(rowwise, batched, rtol=0, atol=1e-10)
    scaled = G / G.diagonal().max()
    for row in range(0, tasks, 7):
        exact = targets[row] + nonneg_qp.nonneg_qp(scaled, targets[row] @ scaled)
        torch.testing.assert_close(rowwise[row], exact, rtol=0, atol=1e-10)
    _assert_kkt(rowwise, targets, G)


def test_rowwise_path_on_singular_and_duplicated_gradients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More tasks than gradient dimensions, duplicated and opposite tasks: rows whose free
    systems are singular are finished by the exact method; the answer is still a projection."""
    generator = torch.Generator().manual_seed(3)
    J = torch.randn(30, 12, generator=generator, dtype=torch.float64)
    J[10:15] = J[:5]
    J[15:18] = -J[:3]
    G = J @ J.T
    targets = torch.eye(30, dtype=torch.float64)
    monkeypatch.setattr(nonneg_qp, "_ROWWISE_FROM", 1)
    monkeypatch.setattr(nonneg_qp, "_WIDE_FREE_SETS", 0)
    weights = nonneg_qp.dual_cone_weights(G, targets)
    assert bool(torch.isfinite(weights).all())
    _assert_kkt(weights, targets, G)


@pytest.mark.parametrize("guess", ["all active", "all free", "random"])
def test_rowwise_answer_does_not_depend_on_the_guess(
    guess: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The projected-gradient guess is only a starting point: a useless one gives the same
    weights (more iterations, more refactorisations)."""
    monkeypatch.setattr(nonneg_qp, "_ROWWISE_FROM", 1)
    monkeypatch.setattr(nonneg_qp, "_WIDE_FREE_SETS", 0)
    G = _conflicting_gramian(40, 70, 4)
    targets = torch.eye(40, dtype=torch.float64)
    reference = nonneg_qp.dual_cone_weights(G, targets)
    generator = torch.Generator().manual_seed(5)

    def bad_guess(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        if guess == "all active":
            return torch.ones(B.shape, dtype=torch.bool)
        if guess == "all free":
            return torch.zeros(B.shape, dtype=torch.bool)
        return torch.rand(B.shape, generator=generator) < 0.5

    monkeypatch.setattr(nonneg_qp, "_guess_active_sets", bad_guess)
    torch.testing.assert_close(
        nonneg_qp.dual_cone_weights(G, targets), reference, rtol=0, atol=1e-10
    )


def test_guess_is_close_to_the_answer() -> None:
    """On a well-conditioned problem the guess leaves few indices wrong per row."""
    G = _conflicting_gramian(100, 300, 6)
    scaled = G / G.diagonal().max()
    weights = nonneg_qp.dual_cone_weights(G, torch.eye(100, dtype=torch.float64))
    exact_active = (weights - torch.eye(100, dtype=torch.float64)) <= 0
    guessed = nonneg_qp._guess_active_sets(scaled, scaled)
    wrong = (guessed != exact_active).sum(dim=1).double()
    free = (~exact_active).sum(dim=1).double()
    assert float(wrong.mean()) <= 0.1 * float(free.mean())


def test_barely_conflicting_tasks_keep_the_batched_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many tasks with a common gradient component (few conflicts per row): the row-by-row
    path and its guess are not used."""
    generator = torch.Generator().manual_seed(8)
    J = torch.randn(120, 300, generator=generator, dtype=torch.float64)
    J = J + 0.5 * torch.randn(1, 300, generator=generator, dtype=torch.float64)

    def fail(*args: object) -> None:
        raise AssertionError("the guess was computed")

    monkeypatch.setattr(nonneg_qp, "_guess_active_sets", fail)
    targets = torch.eye(120, dtype=torch.float64)
    _assert_kkt(nonneg_qp.dual_cone_weights(J @ J.T, targets), targets, J @ J.T)


def test_default_path_at_many_tasks_is_a_projection() -> None:
    """Above the row-wise threshold with the real settings (T = 160, conflicting tasks)."""
    tasks = nonneg_qp._ROWWISE_FROM + 32
    G = _conflicting_gramian(tasks, 400, 5)
    targets = torch.eye(tasks, dtype=torch.float64)
    weights = nonneg_qp.dual_cone_weights(G, targets)
    _assert_kkt(weights, targets, G)
    assert float((weights - targets).max()) > 0  # conflicts were resolved, not ignored


@pytest.mark.parametrize("scale", [1e-200, 1e-30, 1e30, 1e200])
def test_many_task_paths_ignore_the_gradients_scale(scale: float) -> None:
    """The row-by-row dual-cone path and MGDA's guessed corral (100 tasks) at the ends of the
    float64 range: the weights of ``s G`` are those of ``G``."""
    from taskbalance.solvers.simplex import min_norm_simplex

    G = _conflicting_gramian(100, 300, 10)
    targets = torch.eye(100, dtype=torch.float64)
    torch.testing.assert_close(
        nonneg_qp.dual_cone_weights(scale * G, targets),
        nonneg_qp.dual_cone_weights(G, targets),
        rtol=0,
        atol=1e-10,
    )
    torch.testing.assert_close(min_norm_simplex(scale * G), min_norm_simplex(G), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("tasks", "dims"), [(60, 6), (120, 10)])
def test_float32_gramian_of_more_tasks_than_dimensions(
    tasks: int, dims: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A float32 Gram matrix of rank ``dims < T`` is indefinite at ~1e-7 of its scale: the
    exact active-set method stops where its value no longer decreases (it decreases strictly
    at every outer iteration in exact arithmetic), after about ``dims + 1`` iterations per
    row instead of chasing rounding noise to its cap of ``3 T + 20``, and its projections
    agree with scipy's NNLS on the exact float64 gradients to float32 accuracy."""
    from scipy.optimize import nnls

    generator = torch.Generator().manual_seed(tasks)
    J = torch.randn(tasks, dims, generator=generator, dtype=torch.float64)
    iterations: list[int] = []
    original = nonneg_qp._active_set

    def counted(*args: object, **kwargs: object) -> tuple[torch.Tensor, int]:
        x, count = original(*args, **kwargs)  # type: ignore[arg-type]
        iterations.append(count)
        return x, count

    monkeypatch.setattr(nonneg_qp, "_active_set", counted)
    weights = nonneg_qp.dual_cone_weights(float32_gramian(J), torch.eye(tasks, dtype=torch.float64))
    assert iterations
    assert max(iterations) <= 3 * (dims + 1)
    for row in range(tasks):
        multipliers, _ = nnls(J.T.numpy(), -J[row].numpy())
        reference = J.T @ (
            torch.eye(tasks, dtype=torch.float64)[row] + torch.from_numpy(multipliers)
        )
        error = float((J.T @ weights[row] - reference).norm() / J[row].norm())
        assert error <= 1e-5, (row, error)


def test_exact_fallback_refuses_early_what_would_exceed_its_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fallback's cost is extrapolated from the rows solved so far: a call that would
    exceed the budget raises after the first row, with what to do instead."""
    generator = torch.Generator().manual_seed(0)
    J = torch.randn(60, 6, generator=generator, dtype=torch.float64)
    rows_solved = 0
    original = nonneg_qp._active_set

    def counted(*args: object, **kwargs: object) -> tuple[torch.Tensor, int]:
        nonlocal rows_solved
        rows_solved += 1
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(nonneg_qp, "_active_set", counted)
    monkeypatch.setattr(nonneg_qp, "_FALLBACK_BUDGET", 1.0)
    with pytest.raises(ValueError, match=r"would take about .* s per step.*Use fewer tasks"):
        nonneg_qp.dual_cone_weights(float32_gramian(J), torch.eye(60, dtype=torch.float64))
    assert rows_solved == 1


@settings(max_examples=60, deadline=None)
@given(
    num_tasks=st.integers(1, 24),
    extra_dims=st.integers(0, 16),
    conflict=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_the_numpy_rows_equal_the_batched_torch_iteration(
    num_tasks: int, extra_dims: int, conflict: float, seed: int
) -> None:
    """Small CPU problems run the primal-dual active-set iteration in NumPy: on full-rank
    conflicting gradients the same projections as the batched torch iteration."""
    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(num_tasks, num_tasks + extra_dims, generator=generator, dtype=torch.float64)
    J[1::2] = -conflict * J[0::2][: J[1::2].shape[0]] + (1 - conflict) * J[1::2]
    G, U = J @ J.T, torch.eye(num_tasks, dtype=torch.float64)
    on_host = nonneg_qp.dual_cone_weights(G, U)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nonneg_qp, "_HOST_ROWS_UP_TO", 0)
        batched = nonneg_qp.dual_cone_weights(G, U)
    scale = float(G.diagonal().max())
    assert ((on_host @ G) >= -1e-9 * scale).all()  # in the dual cone
    torch.testing.assert_close(on_host @ J, batched @ J, rtol=1e-7, atol=1e-9 * scale**0.5)


def test_the_numpy_rows_leave_singular_systems_to_the_exact_fallback() -> None:
    J = torch.randn(12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    G, U = J @ J.T, torch.eye(12, dtype=torch.float64)  # rank 3: free sets above 3 singular
    V = nonneg_qp.dual_cone_weights(G, U)
    assert (V >= U - 1e-12).all()
    floor = -1e-9 * float(G.diagonal().max())
    assert (floor <= (V @ G)).all()


def test_a_system_singular_at_rounding_level_goes_to_the_exact_fallback() -> None:
    """Exactly opposite gradients of very different sizes (met in the toy benchmark): the
    free-set system's Cholesky pivots pass, LU meets an exact zero pivot; the row is left to
    the exact fallback instead of raising."""
    G = torch.tensor(
        [[2.6576797729879856e-04, -1.6302391766204079e-02], [-1.6302391766204079e-02, 1.0]],
        dtype=torch.float64,
    )
    U = torch.eye(2, dtype=torch.float64)
    on_host = nonneg_qp.dual_cone_weights(G, U, start=torch.tensor([[False, False], [False, True]]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nonneg_qp, "_HOST_ROWS_UP_TO", 0)
        batched = nonneg_qp.dual_cone_weights(G, U)
    assert torch.isfinite(on_host).all()
    assert (on_host >= U - 1e-12).all()
    objective = torch.einsum("ij,jk,ik->i", on_host, G, on_host)
    reference = torch.einsum("ij,jk,ik->i", batched, G, batched)
    assert (objective <= reference + 1e-12).all()
