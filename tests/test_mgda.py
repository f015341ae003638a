"""MGDA and the exact min-norm solver: closed forms, brute force, KKT conditions."""

import itertools
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import float32_gramian
from taskbalance import aggregate
from taskbalance.solvers import min_norm_simplex


def kkt_violation(G: torch.Tensor, w: torch.Tensor) -> float:
    """max(0, w^T G w - min_j (G w)_j), relative to the largest squared norm."""
    gradient = G @ w
    value = w @ gradient
    return float((value - gradient.min()).clamp_min(0) / G.diagonal().max())


def test_two_gradients_closed_form() -> None:
    # Sener & Koltun, Algorithm 2: gamma = clip((g2 - g1).g2 / |g1 - g2|^2, 0, 1)
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    gamma = float(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)))
    J = torch.stack([g1, g2])
    torch.testing.assert_close(aggregate("mgda", J), gamma * g1 + (1 - gamma) * g2)


def test_dominated_case_picks_the_shorter_gradient() -> None:
    J = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    torch.testing.assert_close(aggregate("mgda", J), torch.tensor([1.0, 0.0]))


def test_opposite_gradients_give_zero() -> None:
    J = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])
    torch.testing.assert_close(aggregate("mgda", J), torch.zeros(2), atol=1e-7, rtol=0)


def test_against_brute_force_simplex_search() -> None:
    generator = torch.Generator().manual_seed(0)
    steps = 200
    grid = [
        (a / steps, b / steps, (steps - a - b) / steps)
        for a, b in itertools.product(range(steps + 1), repeat=2)
        if a + b <= steps
    ]
    candidates = torch.tensor(grid, dtype=torch.float64)
    for _ in range(5):
        J = torch.randn(3, 4, generator=generator, dtype=torch.float64)
        G = J @ J.T
        brute = torch.einsum("ki,ij,kj->k", candidates, G, candidates).min()
        w = min_norm_simplex(G)
        exact = w @ G @ w
        assert float(exact) <= float(brute) + 1e-12
        assert float(exact) >= float(brute) - 1e-3 * float(G.diagonal().max())


@given(
    num_tasks=st.integers(1, 12),
    dim=st.integers(1, 20),
    seed=st.integers(0, 10_000),
    log_scale=st.sampled_from([-8.0, 0.0, 8.0]),
)
def test_kkt_conditions_hold_on_random_problems(
    num_tasks: int, dim: int, seed: int, log_scale: float
) -> None:
    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(num_tasks, dim, generator=generator, dtype=torch.float64) * 10**log_scale
    G = J @ J.T
    w = min_norm_simplex(G)
    assert torch.all(w >= 0)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    assert kkt_violation(G, w) < 1e-9
    # common descent: every task gradient has a non-negative inner product with d
    d = J.T @ w
    assert float((J @ d).min()) >= -1e-9 * float(G.diagonal().max())


def test_scale_invariance_of_the_weights() -> None:
    torch.manual_seed(0)
    G = (lambda J: J @ J.T)(torch.randn(6, 9, dtype=torch.float64))
    base = min_norm_simplex(G)
    for scale in (1e-40, 1e-16, 1e16, 1e40):
        torch.testing.assert_close(min_norm_simplex(G * scale), base)


def test_degenerate_gramians() -> None:
    assert min_norm_simplex(torch.zeros(4, 4)).tolist() == [0.25] * 4
    assert min_norm_simplex(torch.ones(1, 1)).tolist() == [1.0]
    duplicated = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    w = min_norm_simplex(duplicated)
    assert float(w.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="non-finite"):
        min_norm_simplex(torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match="square"):
        min_norm_simplex(torch.zeros(2, 3))


@given(
    st.integers(3, 60),
    st.integers(1, 80),
    st.integers(0, 10_000),
    st.floats(0.0, 0.5),
)
def test_warm_start_gives_the_same_minimiser(tasks: int, dim: int, seed: int, shift: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(tasks, dim, generator=generator, dtype=torch.float64)
    G = J @ J.T
    shifted = J + shift * J.mean(0)  # CAGrad's inner problems: points moved towards g_0
    nearby = shifted @ shifted.T
    previous = min_norm_simplex(G)
    cold = min_norm_simplex(nearby)
    warm = min_norm_simplex(nearby, start=previous)
    # same optimal value (the minimiser may differ where G is singular)
    assert float(warm @ nearby @ warm) == pytest.approx(float(cold @ nearby @ cold), abs=1e-9)
    assert float(warm.min()) >= 0
    assert float(warm.sum()) == pytest.approx(1.0)


def test_warm_start_keeps_a_support_that_lost_a_few_points(monkeypatch: pytest.MonkeyPatch) -> None:
    """Consecutive training steps: the support changes by a few points. The warm corral drops
    the points whose affine weight left the simplex instead of starting cold, so Wolfe makes
    a few minor cycles where the cold start makes one per support point."""
    from taskbalance.solvers import simplex

    generator = torch.Generator().manual_seed(0)
    J = torch.randn(128, 200, generator=generator, dtype=torch.float64) + 0.3
    previous = min_norm_simplex(J @ J.T)
    moved = J + 0.05 * torch.randn(J.shape, generator=generator, dtype=torch.float64)
    G = moved @ moved.T
    cycles: list[int] = []
    original = simplex._minor_cycle

    def counted(*args: Any, **kwargs: Any) -> Any:
        cycles.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(simplex, "_minor_cycle", counted)
    cold = min_norm_simplex(G, guess=False)
    cold_cycles = len(cycles)
    cycles.clear()
    warm = min_norm_simplex(G, start=previous, guess=False)  # the warm corral alone
    assert len(cycles) < cold_cycles / 4
    assert float(warm @ G @ warm) == pytest.approx(float(cold @ G @ cold), rel=1e-10)


@given(st.integers(0, 10_000), st.floats(1e-3, 1e3))
def test_two_point_closed_form_matches_the_general_solver(seed: int, scale: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    J = scale * torch.randn(2, 5, generator=generator, dtype=torch.float64)
    w = min_norm_simplex(J @ J.T)
    grid = torch.linspace(0, 1, 2001, dtype=torch.float64)
    points = torch.stack([grid, 1 - grid], 1) @ J
    assert float((w @ J).norm()) <= float(points.norm(dim=1).min()) + 1e-9 * scale


def test_l2_normalisation_solves_on_unit_gradients() -> None:
    from taskbalance import methods

    J = torch.tensor([[10.0, 0.0], [0.0, 1.0]])
    direction = aggregate(methods.create("mgda", normalization="l2"), J, losses=[1.0, 1.0])
    # unit gradients e1, e2 -> weights (1/2, 1/2), applied to the raw gradients
    assert torch.allclose(direction, torch.tensor([5.0, 0.5]))


@given(st.integers(0, 10_000), st.floats(1e-6, 1e6))
def test_l2_normalised_weights_ignore_each_tasks_gradient_scale(seed: int, factor: float) -> None:
    from taskbalance import methods
    from taskbalance.methods.base import Context

    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    scaled = J.clone()
    scaled[1] *= factor
    losses = torch.ones(4, dtype=torch.float64)

    def weights(matrix: torch.Tensor) -> torch.Tensor:
        ctx = Context(num_tasks=4, losses=losses, gramian=matrix @ matrix.T)
        combination = methods.create("mgda", normalization="l2")(ctx)
        assert combination.weights is not None
        return combination.weights

    assert torch.allclose(weights(J), weights(scaled), atol=1e-7)


def test_loss_normalisations_use_the_losses_and_stay_finite() -> None:
    from taskbalance import methods

    J = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    for normalization in ("loss", "loss+"):
        out = aggregate(
            methods.create("mgda", normalization=normalization), J, losses=[2.0, 0.5, 0.0]
        )
        assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="Did you mean 'loss\\+'"):
        methods.create("mgda", normalization="loss++")


@settings(max_examples=25, deadline=None)
@given(
    num_tasks=st.integers(20, 120),
    dim=st.integers(5, 300),
    seed=st.integers(0, 10_000),
    duplicates=st.integers(0, 5),
)
def test_large_supports_and_duplicated_points_stay_exact(
    num_tasks: int, dim: int, seed: int, duplicates: int
) -> None:
    """Many tasks with a large optimal support (the updated Cholesky factor of the corral
    carries most iterations), singular Gram matrices (dim < T) and exact duplicates (whose
    corral would be affinely dependent: the factor must give way to the KKT solve)."""
    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(num_tasks, dim, generator=generator, dtype=torch.float64) + 0.2
    if duplicates:
        J[-duplicates:] = J[:duplicates]
    G = J @ J.T
    w = min_norm_simplex(G)
    assert torch.all(w >= 0)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    assert kkt_violation(G, w) < 1e-9


def test_the_updated_factor_gives_the_direct_solves_minimiser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A support of ~100 points (above the size where the factor takes over) solved both
    ways: the same minimiser."""
    import taskbalance.solvers.simplex as simplex

    generator = torch.Generator().manual_seed(7)
    J = torch.randn(160, 400, generator=generator, dtype=torch.float64) + 0.3
    G = J @ J.T
    with_factor = min_norm_simplex(G)
    assert int((with_factor > 0).sum()) > simplex._FACTOR_FROM
    monkeypatch.setattr(simplex, "_FACTOR_FROM", 10**9)
    direct = min_norm_simplex(G)
    torch.testing.assert_close(with_factor, direct, rtol=0, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    num_tasks=st.integers(40, 140),
    dim=st.integers(5, 400),
    seed=st.integers(0, 10_000),
    shift=st.floats(-0.2, 1.0),
    duplicates=st.integers(0, 4),
)
def test_guessed_first_corral_gives_the_classic_minimiser(
    num_tasks: int, dim: int, seed: int, shift: float, duplicates: int
) -> None:
    """From 40 points Wolfe starts from the support of a projected-gradient guess: the same
    minimum as the classic start from one vertex, on full-rank, singular (dim < T) and
    duplicated problems (whose guessed corral is affinely dependent and falls back)."""
    import taskbalance.solvers.simplex as simplex

    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(num_tasks, dim, generator=generator, dtype=torch.float64) + shift
    if duplicates:
        J[-duplicates:] = J[:duplicates]
    G = J @ J.T
    guessed = min_norm_simplex(G)
    original = simplex._GUESS_FROM
    simplex._GUESS_FROM = 10**9
    try:
        classic = min_norm_simplex(G)
    finally:
        simplex._GUESS_FROM = original
    assert kkt_violation(G, guessed) < 1e-9
    scale = float(G.diagonal().max())
    assert float(guessed @ G @ guessed) / scale == pytest.approx(
        float(classic @ G @ classic) / scale, abs=1e-12
    )
    if dim > num_tasks and not duplicates:  # unique minimiser: the same weights
        torch.testing.assert_close(guessed, classic, rtol=0, atol=1e-8)


def test_guessed_corral_is_refused_when_affinely_dependent() -> None:
    import taskbalance.solvers.simplex as simplex

    generator = torch.Generator().manual_seed(1)
    J = torch.randn(40, 200, generator=generator, dtype=torch.float64)
    J[20:] = J[:20]  # every point twice: the guessed support holds both copies
    G = J @ J.T
    G = G / G.diagonal().max()
    assert simplex._guessed_corral(G, None) is None
    assert kkt_violation(G, min_norm_simplex(G)) < 1e-9


@given(st.integers(0, 10_000), st.integers(1, 60), st.floats(1e-3, 1e3))
def test_projection_onto_the_simplex(seed: int, size: int, spread: float) -> None:
    """The projection lies on the simplex and satisfies its optimality conditions: ``p =
    max(v - theta, 0)`` for one threshold theta."""
    from taskbalance.solvers.simplex import _project_to_simplex

    generator = torch.Generator().manual_seed(seed)
    v = spread * torch.randn(size, generator=generator, dtype=torch.float64)
    p = _project_to_simplex(v)
    assert bool((p >= 0).all())
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    theta = v[p > 0] - p[p > 0]
    assert float(theta.max() - theta.min()) <= 1e-9 * max(spread, 1.0)
    assert bool((v[p == 0] <= theta.mean() + 1e-9 * max(spread, 1.0)).all())
    torch.testing.assert_close(_project_to_simplex(p), p, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("tasks", "dims", "offset"), [(100, 8, 0.0), (200, 16, 0.0), (150, 6, 3.0)]
)
def test_float32_gramian_of_more_points_than_dimensions_stops_at_the_rounding_floor(
    tasks: int, dims: int, offset: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wolfe's value decreases strictly at every major iteration in exact arithmetic; on a
    float32 Gram matrix of rank ``dims`` the solver stops where rounding takes over (a
    corral of about ``dims + 1`` points) instead of cycling to its cap of ``50 + 10 T``
    major iterations, and its point is the exact min-norm point to float32 accuracy.
    ``offset`` > 0 puts every gradient in one half-space (min norm > 0)."""
    import taskbalance.solvers.simplex as simplex

    generator = torch.Generator().manual_seed(tasks)
    J = torch.randn(tasks, dims, generator=generator, dtype=torch.float64)
    J[:, 0] += offset
    calls = 0
    original = simplex._minor_cycle

    def counted(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(simplex, "_minor_cycle", counted)
    weights = min_norm_simplex(float32_gramian(J), guess=False)
    assert calls <= 3 * (dims + 1)
    assert float(weights.min()) >= 0
    assert abs(float(weights.sum()) - 1) < 1e-12
    exact = J.T @ min_norm_simplex(J @ J.T, guess=False)  # float64 G: PSD to 1e-16
    scale = float((J * J).sum(dim=1).max())
    ours = J.T @ weights
    assert float(ours @ ours) <= float(exact @ exact) + 1e-6 * scale
    assert float((ours - exact).norm()) <= 1e-6 * scale**0.5
