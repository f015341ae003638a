"""Gram-matrix gradient methods against their papers' formulas and stated properties."""

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize, nnls

from taskbalance import aggregate, methods
from taskbalance.methods.base import Context


def weights(name: str, J: torch.Tensor, **hparams: object) -> torch.Tensor:
    G = J.double() @ J.double().T
    result = methods.create(name, **hparams)(Context(num_tasks=J.shape[0], gramian=G)).weights
    assert result is not None
    return result


def random_jacobian(seed: int, num_tasks: int, dim: int) -> torch.Tensor:
    return torch.randn(
        num_tasks, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


# ----------------------------------------------------------------------------- dual cone
def nnls_projection(J: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Reference: projection of J^T u onto {d: J d >= 0} via scipy's NNLS (test-only)."""
    x, _ = nnls(J.T.numpy(), -(J.T @ u).numpy())
    return J.T @ (torch.from_numpy(x) + u)


@pytest.mark.parametrize("seed", range(5))
def test_upgrad_and_dualproj_match_an_nnls_reference(seed: int) -> None:
    J = random_jacobian(seed, 5, 7)
    J[1] = -0.5 * J[0]  # a conflict
    T = J.shape[0]
    expected_upgrad = torch.stack(
        [nnls_projection(J, torch.eye(T, dtype=torch.float64)[i]) for i in range(T)]
    ).mean(0)
    torch.testing.assert_close(aggregate("upgrad", J), expected_upgrad, atol=1e-9, rtol=1e-9)
    expected_dualproj = nnls_projection(J, torch.full((T,), 1 / T, dtype=torch.float64))
    torch.testing.assert_close(aggregate("dualproj", J), expected_dualproj, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", ["upgrad", "dualproj", "mgda"])
@pytest.mark.parametrize("scale", [1e-8, 1.0, 1e8])
@given(seed=st.integers(0, 10_000), num_tasks=st.integers(1, 10), dim=st.integers(1, 12))
def test_non_conflicting_update(
    name: str, scale: float, seed: int, num_tasks: int, dim: int
) -> None:
    J = random_jacobian(seed, num_tasks, dim) * scale
    d = aggregate(name, J)
    # With more tasks than dimensions the dual cone can be {0}: the weights v >= e_i then sit
    # in the null space of J^T and reach |v| ~ 1e3 (seed 95, T = 10, P = 3), so d = J^T v is
    # zero only to ~|v| * eps * |J|, about 1e-11 |J| (not 1e-12).
    tolerance = 1e-6 * J.norm(dim=1) * d.norm() + 1e-10 * J.norm() ** 2
    assert torch.all(J @ d >= -tolerance)


def test_non_conflicting_update_when_the_dual_cone_is_only_zero() -> None:
    J = random_jacobian(95, 10, 3) * 1e-8  # found by hypothesis: 10 gradients spanning R^3
    d = aggregate("upgrad", J)
    assert float(d.norm()) <= 1e-10 * float(J.norm())
    assert torch.all(J @ d >= -1e-10 * J.norm() ** 2)


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_dual_cone_methods_equal_the_mean_without_conflict(name: str) -> None:
    J = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, 3.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(aggregate(name, J), J.mean(dim=0))
    tiny = aggregate(name, J * 1e-6)  # TorchJD returns the mean below 1e-4 even with conflicts
    torch.testing.assert_close(tiny, J.mean(dim=0) * 1e-6)


def test_upgrad_warm_start_gives_the_cold_solution_with_fewer_solves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import taskbalance.solvers.nonneg_qp as solver

    solves = {"count": 0}

    def counted(original):  # type: ignore[no-untyped-def]
        def counting(*args):  # type: ignore[no-untyped-def]
            solves["count"] += 1
            return original(*args)

        return counting

    # (the batched free-set solves in torch, and in NumPy for small problems on the CPU)
    monkeypatch.setattr(solver, "_solve_on_free_sets", counted(solver._solve_on_free_sets))
    monkeypatch.setattr(solver, "_solve_free_sets_numpy", counted(solver._solve_free_sets_numpy))
    generator = torch.Generator().manual_seed(0)
    J = torch.randn(24, 50, generator=generator, dtype=torch.float64)
    J[1::2] = -0.5 * J[0::2] + 0.5 * J[1::2]
    warm = methods.create("upgrad")
    counts = {"warm": 0, "cold": 0}
    for _ in range(6):
        J = J + 0.01 * torch.randn(J.shape, generator=generator, dtype=torch.float64)
        ctx = Context(num_tasks=24, gramian=J @ J.T)
        solves["count"] = 0
        warm_weights = warm(ctx).weights
        counts["warm"] += solves["count"]
        solves["count"] = 0
        cold_weights = methods.create("upgrad")(ctx).weights
        counts["cold"] += solves["count"]
        assert warm_weights is not None
        assert cold_weights is not None
        torch.testing.assert_close(warm_weights, cold_weights, rtol=1e-10, atol=1e-12)
    assert counts["warm"] < counts["cold"]
    restored = methods.create("upgrad")
    restored.load_state_dict(warm.state_dict())
    assert torch.equal(restored.previous_tight, warm.previous_tight)  # type: ignore[attr-defined]


def test_upgrad_keeps_its_guarantee_at_small_scale() -> None:
    J = torch.tensor([[1.0, 0.0], [-2.0, 0.1]], dtype=torch.float64) * 1e-7
    d = aggregate("upgrad", J)
    assert float((J @ d).min()) >= 0
    assert not torch.allclose(d, J.mean(dim=0))


# ----------------------------------------------------------------------------- IMTL-G
@given(seed=st.integers(0, 10_000), num_tasks=st.integers(2, 6))
def test_imtl_g_gives_equal_projections(seed: int, num_tasks: int) -> None:
    J = random_jacobian(seed, num_tasks, 10)
    w = weights("imtl_g", J)
    assert float(w.sum()) == pytest.approx(1.0)
    d = J.T @ w
    projections = (J / J.norm(dim=1, keepdim=True)) @ d
    torch.testing.assert_close(
        projections, projections.mean().expand_as(projections), rtol=1e-7, atol=1e-9
    )


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    num_tasks=st.integers(2, 60),
    dims=st.integers(1, 80),
    duplicates=st.integers(0, 3),
)
def test_imtl_g_square_solve_equals_the_pseudo_inverse(
    seed: int, num_tasks: int, dims: int, duplicates: int
) -> None:
    """The LU solve of the square system (used where it is well conditioned) gives the
    pseudo-inverse's weights, on general, rank-deficient (dims < T) and duplicated tasks."""
    from taskbalance.methods.gradient import imtl_g

    J = random_jacobian(seed, num_tasks, dims)
    if duplicates and num_tasks >= 2 * duplicates:
        J[-duplicates:] = J[:duplicates].clone()
    G = J @ J.T
    threshold = imtl_g._SQUARE_FROM
    imtl_g._SQUARE_FROM = 1  # the LU path at every T
    try:
        fast = imtl_g.equal_projection_weights(G)
    finally:
        imtl_g._SQUARE_FROM = threshold
    original = imtl_g._square_solve
    imtl_g._square_solve = lambda system, target: None  # type: ignore[assignment]
    try:
        reference = imtl_g.equal_projection_weights(G)
    finally:
        imtl_g._square_solve = original
    scale = float(reference.abs().max()) + 1.0
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-8 * scale)


def test_imtl_g_two_tasks_hand_computed() -> None:
    # g1 = (1, 0), g2 = (0, 2): d = a g1 + (1-a) g2 with d.u1 = d.u2 -> a = 2 (1 - a) -> a = 2/3
    J = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(
        weights("imtl_g", J), torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)
    )


# ----------------------------------------------------------------------------- Nash-MTL, FairGrad
def test_nash_mtl_orthogonal_gradients() -> None:
    norms = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    J = torch.diag(norms)
    G = J @ J.T
    frobenius = torch.linalg.matrix_norm(G)
    # the authors' code (its normalisation cancels in its constraint): alpha_i = 1 / |g_i|
    torch.testing.assert_close(weights("nash_mtl", J), 1 / norms)
    # gram="frobenius": alpha_i = 1 / |g_i| for G / ||G||_F
    frobenius_weights = weights("nash_mtl", J, gram="frobenius")
    torch.testing.assert_close(frobenius_weights, frobenius.sqrt() / norms)


@given(seed=st.integers(0, 10_000), num_tasks=st.integers(1, 8))
def test_nash_mtl_update_has_length_sqrt_t_at_every_scale(seed: int, num_tasks: int) -> None:
    # d = J^T alpha with alpha_i (G alpha)_i = 1: |d|^2 = alpha^T G alpha = T
    J = random_jacobian(seed, num_tasks, 12)
    for scale in (1e-8, 1.0, 1e8):
        d = aggregate("nash_mtl", scale * J)
        assert float(d.norm()) == pytest.approx(num_tasks**0.5, rel=1e-6)


@given(seed=st.integers(0, 10_000))
def test_nash_mtl_two_tasks_follow_the_normalised_gradient_sum(seed: int) -> None:
    J = random_jacobian(seed, 2, 6)
    d = aggregate("nash_mtl", J)
    target = J[0] / J[0].norm() + J[1] / J[1].norm()
    cosine = float(d @ target / (d.norm() * target.norm()))
    assert cosine == pytest.approx(1.0, abs=1e-9)


@given(seed=st.integers(0, 10_000), num_tasks=st.integers(1, 8))
def test_nash_mtl_solves_the_bargaining_condition(seed: int, num_tasks: int) -> None:
    J = random_jacobian(seed, num_tasks, 12)
    G = J @ J.T
    alpha = weights("nash_mtl", J)
    assert torch.all(alpha > 0)
    torch.testing.assert_close(G @ alpha, 1 / alpha, rtol=1e-7, atol=1e-9)
    normalised = G / torch.linalg.matrix_norm(G)
    beta = weights("nash_mtl", J, gram="frobenius")
    torch.testing.assert_close(normalised @ beta, 1 / beta, rtol=1e-7, atol=1e-9)


def test_nash_mtl_max_norm_and_update_every() -> None:
    J = random_jacobian(0, 3, 5) * 100
    d = aggregate(methods.create("nash_mtl", max_norm=1.0), J)
    assert float(d.norm()) == pytest.approx(1.0, rel=1e-6)
    method = methods.create("nash_mtl", update_weights_every=3)
    first = aggregate(method, J)
    torch.testing.assert_close(aggregate(method, J * 2), first * 2)  # weights reused
    torch.testing.assert_close(aggregate(method, J * 2), first * 2)
    # 4th call recomputes (from the reused weights as a warm start): the 2J solve
    torch.testing.assert_close(aggregate(method, J * 2), aggregate("nash_mtl", J * 2))


@pytest.mark.parametrize("name", ["nash_mtl", "fairgrad"])
def test_power_equation_warm_start_gives_the_cold_solution_in_fewer_iterations(
    name: str,
) -> None:
    from taskbalance.solvers import power_equation

    method = methods.create(name)
    base = random_jacobian(5, 3, 20)
    # nearly Pareto-stationary (0 almost in the convex hull): large weights, many cold steps
    J = torch.stack([base[0], base[1], -(base[0] + base[1]) + 1e-3 * base[2]])
    iterations: list[int] = []
    original = power_equation._newton_direction

    def counting(hessian: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        iterations[-1] += 1
        return original(hessian, residual)

    power_equation._newton_direction = counting  # type: ignore[assignment]
    try:
        for step in range(5):
            moved = J + 1e-4 * step * random_jacobian(100 + step, 3, 20)
            iterations.append(0)
            warm = aggregate(method, moved)
            iterations.append(0)
            cold = aggregate(name, moved)
            torch.testing.assert_close(warm, cold, rtol=1e-6, atol=1e-9)
    finally:
        power_equation._newton_direction = original  # type: ignore[assignment]
    warm_counts, cold_counts = iterations[2::2], iterations[3::2]  # after the first step
    assert sum(warm_counts) < 0.7 * sum(cold_counts)
    fresh = methods.create(name)
    fresh.load_state_dict(method.state_dict())
    torch.testing.assert_close(aggregate(fresh, J), aggregate(method, J))


def test_power_equation_stops_at_the_rounding_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where rounding keeps the residual above the tolerance (an unreachable one here), Newton
    stops once a step no longer halves the residual and the relative residual is below 1e-6,
    instead of running to ``max_iter`` (seen: T = 512, 4e-10 for 90 steps)."""
    from taskbalance.solvers import power_equation

    J = random_jacobian(7, 60, 80)
    G = J @ J.T
    steps: list[int] = []
    original = power_equation._newton_direction

    def counted(hessian: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        steps.append(1)
        return original(hessian, residual)

    monkeypatch.setattr(power_equation, "_newton_direction", counted)
    w = power_equation.solve_power_equation(G, 1.0, tol=1e-300)
    assert len(steps) < 30
    target = 1 / w
    assert float((G @ w - target).abs().max() / target.abs().max()) <= 1e-6


@settings(deadline=None)
@given(
    seed=st.integers(0, 10_000),
    spread=st.floats(0.0, 10.0),  # decades between the smallest and the largest gradient norm
    p=st.sampled_from([1.0, 0.5, 2.0]),
)
def test_power_equation_solves_every_task_to_its_own_accuracy(
    seed: int, spread: float, p: float
) -> None:
    """``G w = w^-p`` holds for each task relative to its own ``w_i^-p``, however far apart the
    gradients' norms are, down to the rounding of ``(G w)_i`` itself (scaled by the largest
    diagonal entry alone, a task 10^4 times smaller than another was left 160% off)."""
    from taskbalance.solvers.power_equation import solve_power_equation

    J = random_jacobian(seed, 6, 10)
    J = J * torch.logspace(-spread / 2, spread / 2, 6, dtype=torch.float64)[:, None]
    G = J @ J.T
    w = solve_power_equation(G, p)
    target = w ** (-p)
    rounding = torch.finfo(torch.float64).eps * (G.abs() @ w) / target
    assert bool((((G @ w - target).abs() / target) <= 1e-6 + 100 * rounding).all())


@settings(deadline=None)
@given(seed=st.integers(0, 10_000), exponents=st.lists(st.floats(-6, 6), min_size=4, max_size=4))
def test_nash_mtl_weights_scale_inversely_with_each_task_gradient(
    seed: int, exponents: list[float]
) -> None:
    """Nash-MTL's bargaining solution is covariant: ``g_i -> s_i g_i`` gives
    ``alpha_i -> alpha_i / s_i`` (the same update, whose utilities keep ``alpha_i g_i . d = 1``)."""
    from taskbalance.solvers.power_equation import solve_power_equation

    J = random_jacobian(seed, 4, 9)
    scales = 10.0 ** torch.tensor(exponents, dtype=torch.float64)
    w = solve_power_equation(J @ J.T)
    scaled = J * scales[:, None]
    torch.testing.assert_close(
        solve_power_equation(scaled @ scaled.T), w / scales, rtol=1e-8, atol=0
    )


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 8.0])
def test_fairgrad_solves_its_fairness_condition(alpha: float) -> None:
    J = random_jacobian(3, 4, 9) * 7.0
    G = J @ J.T
    w = weights("fairgrad", J, alpha=alpha)
    assert torch.all(w > 0)
    torch.testing.assert_close(G @ w, w ** (-1 / alpha), rtol=1e-7, atol=1e-9)


def test_fairgrad_alpha_one_orthogonal() -> None:
    J = torch.diag(torch.tensor([2.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(
        weights("fairgrad", J), torch.tensor([0.5, 0.25], dtype=torch.float64)
    )


# ----------------------------------------------------------------------------- CAGrad
def cagrad_reference(J: torch.Tensor, c: float) -> torch.Tensor:
    """The paper's procedure with scipy's SLSQP on the dual (test-only reference)."""
    G = (J @ J.T).numpy()
    T = G.shape[0]
    a = np.ones(T) / T
    g0_norm = np.sqrt(a @ G @ a)
    rho = c * g0_norm

    def objective(w: np.ndarray) -> float:
        return float(w @ G @ a + rho * np.sqrt(max(w @ G @ w, 0.0) + 1e-18))

    result = minimize(
        objective,
        a,
        bounds=[(0, 1)] * T,
        constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    w = torch.from_numpy(result.x)
    gw = J.T @ w
    d = J.mean(dim=0) + rho / gw.norm() * gw
    return d / (1 + c**2)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("c", [0.2, 0.4, 1.0])
def test_cagrad_matches_the_slsqp_reference(seed: int, c: float) -> None:
    J = random_jacobian(seed, 4, 6)
    J[1] = -0.3 * J[0] + 0.1 * J[1]
    torch.testing.assert_close(
        aggregate(methods.create("cagrad", c=c), J), cagrad_reference(J, c), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("seed", range(2))
def test_cagrad_at_many_tasks_matches_the_slsqp_reference(seed: int) -> None:
    """40 tasks: the inner min-norm solves start from projected-gradient guesses on shifted
    Gram matrices (step size from the curvature along the simplex); same answer as SLSQP and
    as the plain safeguarded search."""
    from taskbalance.solvers.conflict_averse import conflict_averse_weights

    J = random_jacobian(seed, 40, 60) + 0.1
    torch.testing.assert_close(
        aggregate(methods.create("cagrad", c=0.4), J),
        cagrad_reference(J, 0.4),
        atol=1e-5,
        rtol=1e-5,
    )
    G = J @ J.T
    fast = conflict_averse_weights(G, 0.4)
    search = conflict_averse_weights(G, 0.4, support_steps=0)
    torch.testing.assert_close(fast, search, rtol=0, atol=1e-7)


def test_cagrad_with_c_zero_is_the_mean() -> None:
    J = random_jacobian(1, 5, 8)
    torch.testing.assert_close(aggregate(methods.create("cagrad", c=0.0), J), J.mean(dim=0))


def test_cagrad_improves_the_worst_task_over_the_mean() -> None:
    J = torch.tensor([[1.0, 0.0], [-0.9, 0.2]], dtype=torch.float64)
    d = aggregate(methods.create("cagrad", c=0.8), J)
    assert float((J @ d).min()) > float((J @ J.mean(dim=0)).min())


# ----------------------------------------------------------------------------- Aligned-MTL
@given(seed=st.integers(0, 10_000), num_tasks=st.integers(1, 6))
def test_aligned_mtl_aligns_the_singular_values(seed: int, num_tasks: int) -> None:
    J = random_jacobian(seed, num_tasks, 9)
    G = J @ J.T
    eigenvalues, vectors = torch.linalg.eigh(G)
    B = eigenvalues.min().sqrt() * (vectors * eigenvalues.rsqrt()) @ vectors.T
    aligned = B @ J
    singular = torch.linalg.svdvals(aligned)
    torch.testing.assert_close(singular, singular.min().expand_as(singular), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(weights("aligned_mtl", J), B.sum(dim=1))


def test_aligned_mtl_orthogonal_hand_computed() -> None:
    J = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
    # sigma_min = 1, B = diag(1 / |g_i|): update = u_1 + u_2
    torch.testing.assert_close(
        aggregate("aligned_mtl", J), torch.tensor([1.0, 1.0], dtype=torch.float64)
    )
    median = aggregate(methods.create("aligned_mtl", scale_mode="rmse"), J)
    torch.testing.assert_close(median, torch.tensor([1.0, 1.0], dtype=torch.float64) * (8.5**0.5))


def test_aligned_mtl_drops_numerically_null_directions() -> None:
    J = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    assert torch.isfinite(aggregate("aligned_mtl", J)).all()


# ----------------------------------------------------------------------------- ConFIG
@given(seed=st.integers(0, 10_000), num_tasks=st.integers(1, 6))
def test_config_has_equal_positive_cosines_and_the_sum_of_projections(
    seed: int, num_tasks: int
) -> None:
    J = random_jacobian(seed, num_tasks, 10)
    d = aggregate("config", J)
    cosines = (J / J.norm(dim=1, keepdim=True)) @ d / d.norm()
    torch.testing.assert_close(cosines, cosines.mean().expand_as(cosines), rtol=1e-7, atol=1e-9)
    assert float(cosines.min()) > 0
    unit = d / d.norm()
    assert float(d.norm()) == pytest.approx(float((J @ unit).sum()), rel=1e-9)


@given(
    seed=st.integers(0, 10_000),
    c=st.floats(0.01, 3.0),
    kind=st.sampled_from(["random", "opposite", "identical", "zero", "tiny"]),
)
def test_cagrad_two_task_closed_form_equals_the_search(seed: int, c: float, kind: str) -> None:
    from taskbalance.solvers.conflict_averse import conflict_averse_weights

    J = random_jacobian(seed, 2, 4)
    if kind == "opposite":
        J[1] = -0.3 * J[0]
    elif kind == "identical":
        J[1] = J[0]
    elif kind == "zero":
        J[1] = 0.0
    elif kind == "tiny":
        J[1] *= 1e-9
    G = J @ J.T
    closed = conflict_averse_weights(G, c)
    search = conflict_averse_weights(G, c, closed_form=False)

    def objective(w: torch.Tensor) -> float:
        Gs = G / G.diagonal().max()
        b = Gs @ torch.full((2,), 0.5, dtype=torch.float64)
        rho = c * float(b.mean()).__abs__() ** 0.5
        return float(w @ b) + rho * max(float(w @ Gs @ w), 0.0) ** 0.5

    # the same optimal value; the minimiser is unique for gradients in general position
    # (identical or collinear ones can leave a flat segment of optima)
    assert objective(closed) == pytest.approx(objective(search), abs=1e-8)
    if kind in ("random", "tiny"):
        torch.testing.assert_close(closed, search, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [1, 3, 4])
def test_cagrad_with_a_zero_gradient_is_the_optimum_nearest_the_mean(seed: int) -> None:
    """A task with a zero gradient puts the origin in the hull and makes the dual optimum
    ``g_w* = 0``, where ``g_0 + c |g_0| g_w* / |g_w*|`` is undefined (the paper's code then
    returns ``g_0``, which here hurts a task). The optimum value is 0 and the optimum nearest
    to ``g_0`` is the projection of ``g_0`` onto ``{d : J d >= 0}`` (NNLS reference)."""
    J = random_jacobian(seed, 4, 8)
    J[0] = 0.0
    J[1] = -0.6 * J[2] + 0.3 * J[1]
    g0, c = J.mean(dim=0), 0.5
    mu, _ = nnls(J.T.numpy(), -g0.numpy())
    nearest = g0 + J.T @ torch.from_numpy(mu)
    assert float((J @ g0).min()) < 0  # the mean hurts a task
    assert float((nearest - g0).norm()) <= c * float(g0.norm())  # the ball reaches level 0
    d = aggregate(methods.create("cagrad", c=c, rescale=0), J)
    torch.testing.assert_close(d, nearest, rtol=1e-9, atol=1e-12)
    assert float((J @ d).min()) >= -1e-12


@settings(deadline=None, max_examples=60)
@given(
    seed=st.integers(0, 10_000),
    num_tasks=st.integers(2, 8),
    spread=st.floats(0.0, 8.0),  # decades between the smallest and the largest gradient norm
    c=st.sampled_from([0.1, 0.5, 0.9, 1.5]),
)
def test_cagrad_update_is_certified_optimal_at_any_spread_of_gradient_norms(
    seed: int, num_tasks: int, spread: float, c: float
) -> None:
    """Weak duality certifies the update: for any ``w`` on the simplex,
    ``F(w) = g_w . g_0 + c |g_0| |g_w| >= t* >= min_i g_i . d`` for every ``d`` in the ball, so
    ``d`` in the ball with every ``g_i . d >= F(w)`` (to each task's own rounding) is the
    optimum; ``w`` is read off the update's own weights. Where the gradients' norms span
    decades the closed-form recovery through ``1 / |g_w*|`` missed the smallest tasks'
    improvement by up to 50%."""
    J = random_jacobian(seed, num_tasks, 12)
    J[1::2] = J[1::2] - 0.7 * J[0::2][: J[1::2].shape[0]]
    J = J * torch.logspace(-spread / 2, spread / 2, num_tasks, dtype=torch.float64)[:, None]
    G = J @ J.T
    g0 = J.mean(dim=0)
    radius = c * float(g0.norm())
    d = aggregate(methods.create("cagrad", c=c, rescale=0), J)
    assert float((d - g0).norm()) <= radius * (1 + 1e-8)
    # the certificate from the update itself: d = g_0 + J^T mu with mu >= 0, and at the
    # optimum w = mu / sum(mu) is the dual optimum (d - g_0 = c |g_0| g_w / |g_w|)
    mu = weights("cagrad", J, c=c, rescale=0) - 1.0 / num_tasks
    assert float(mu.min()) >= -1e-12 * float(mu.abs().max())
    w = mu.clamp_min(0) / mu.clamp_min(0).sum()
    dual_value = float(w @ (J @ g0) + radius * (w @ G @ w).clamp_min(0).sqrt())
    size = J.norm(dim=1) * d.norm()
    assert float(((dual_value - J @ d) / size).max()) <= 1e-6


def test_cagrad_moves_against_the_mean_when_the_origin_is_in_the_hull() -> None:
    """Opposite gradients g2 = -0.3 g1, c = 0.5: the hull contains the origin, yet the optimum
    is the end w = (0, 1) (objective -0.0525 |g1|^2 / max), not the origin (objective 0)."""
    from taskbalance.solvers.conflict_averse import conflict_averse_weights

    J = torch.tensor([[1.0, 2.0], [-0.3, -0.6]], dtype=torch.float64)
    for closed_form in (True, False):
        weights = conflict_averse_weights(J @ J.T, 0.5, closed_form=closed_form)
        torch.testing.assert_close(weights, torch.tensor([0.0, 1.0], dtype=torch.float64))


@given(seed=st.integers(0, 10_000), scale=st.floats(1e-6, 1e6))
def test_nash_two_task_closed_form_solves_the_bargaining_equation(seed: int, scale: float) -> None:
    from taskbalance.solvers.power_equation import solve_power_equation

    J = scale * random_jacobian(seed, 2, 3)
    G = J @ J.T
    w = solve_power_equation(G)
    assert bool((w > 0).all())
    cosine = float(G[0, 1] / (G[0, 0] * G[1, 1]).sqrt())
    if cosine > -0.99:  # away from exactly opposite gradients (where only the ridge helps)
        torch.testing.assert_close(G @ w, 1 / w, rtol=1e-8, atol=0)


@given(
    seed=st.integers(0, 10_000),
    num_tasks=st.integers(3, 12),
    dim=st.integers(2, 20),  # (dim 1: collinear gradients, optimum at t* ~ 0, see the probe)
    c=st.floats(0.01, 3.0),
    conflict=st.booleans(),
)
def test_cagrad_support_steps_reach_the_searched_optimum(
    seed: int, num_tasks: int, dim: int, c: float, conflict: bool
) -> None:
    """The fixed-support quadratic (few inner solves) gives the optimum the plain search
    (bisection-safeguarded secant on the outer derivative) gives."""
    from taskbalance.solvers.conflict_averse import conflict_averse_weights

    J = random_jacobian(seed, num_tasks, dim)
    if conflict:
        J[1::2] = -0.5 * J[0::2][: J[1::2].shape[0]] + 0.5 * J[1::2]
    G = J @ J.T
    fast = conflict_averse_weights(G, c)
    plain = conflict_averse_weights(G, c, support_steps=0)
    Gs = G / G.diagonal().max()
    b = Gs @ torch.full((num_tasks,), 1 / num_tasks, dtype=torch.float64)
    rho = c * max(float(b.mean()), 0.0) ** 0.5

    def objective(w: torch.Tensor) -> float:
        return float(w @ b) + rho * max(float(w @ Gs @ w), 0.0) ** 0.5

    # where 0 is (nearly) in the gradients' convex hull, |g_w| = sqrt(w^T G w) of a quadratic
    # form that cancels to rounding, ~sqrt(T eps) for unit-diagonal G: weights equal to 6e-15
    # read objectives 1.7e-9 and 2.7e-9 apart (seed 2562, T = 3, dim 2, c = 2)
    floor = rho * (4 * num_tasks * torch.finfo(torch.float64).eps) ** 0.5
    assert objective(fast) <= objective(plain) + 1e-9 + floor
    assert float(fast.min()) >= 0
    assert float(fast.sum()) == pytest.approx(1.0)


@given(
    seed=st.integers(0, 10_000),
    num_tasks=st.integers(3, 30),
    dim=st.integers(2, 40),
    c=st.floats(0.05, 2.0),
    noise=st.sampled_from([0.0, 1e-3, 0.1]),
)
def test_cagrad_warm_start_reaches_the_cold_optimum(
    seed: int, num_tasks: int, dim: int, c: float, noise: float
) -> None:
    """Starting from a previous step's weights (the next step's Gram matrix perturbed by
    ``noise``) gives the cold optimum: same objective, feasible weights."""
    from taskbalance.solvers.conflict_averse import conflict_averse_weights

    J = random_jacobian(seed, num_tasks, dim)
    previous = conflict_averse_weights(J @ J.T, c)
    generator = torch.Generator().manual_seed(seed)
    J = J + noise * torch.randn(J.shape, generator=generator, dtype=J.dtype)
    G = J @ J.T
    warm = conflict_averse_weights(G, c, start=previous)
    cold = conflict_averse_weights(G, c)
    Gs = G / G.diagonal().max()
    b = Gs @ torch.full((num_tasks,), 1 / num_tasks, dtype=torch.float64)
    rho = c * max(float(b.mean()), 0.0) ** 0.5

    def objective(w: torch.Tensor) -> float:
        return float(w @ b) + rho * max(float(w @ Gs @ w), 0.0) ** 0.5

    assert objective(warm) == pytest.approx(objective(cold), abs=1e-9)
    assert float(warm.min()) >= 0
    assert float(warm.sum()) == pytest.approx(1.0)


def test_cagrad_warm_start_on_the_same_support_makes_no_inner_solve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At many tasks the previous step's support is tried first: where it is still the
    optimum's, the step costs one small KKT solve and no min-norm solve."""
    from taskbalance.solvers import conflict_averse

    J = random_jacobian(3, 64, 96) + 0.2
    G = J @ J.T
    method = methods.create("cagrad")
    first = method(Context(num_tasks=64, gramian=G)).weights
    calls: list[int] = []
    original = conflict_averse.wolfe_min_norm

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(conflict_averse, "wolfe_min_norm", counted)
    again = method(Context(num_tasks=64, gramian=G * (1 + 1e-9))).weights
    assert calls == []
    assert first is not None
    assert again is not None
    torch.testing.assert_close(again, first, rtol=1e-7, atol=1e-10)
    fresh = methods.create("cagrad")
    fresh.load_state_dict(method.state_dict())
    torch.testing.assert_close(fresh(Context(num_tasks=64, gramian=G)).weights, first)


@pytest.mark.parametrize("seed", [0, 1])
def test_dual_cone_rows_grouped_by_free_set_size_give_the_same_projection(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """UPGrad's batched active-set solve groups rows by the size of their free sets (fewer
    wide factorisations): grouped and ungrouped solves give the same weights."""
    from taskbalance.solvers import nonneg_qp

    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(48, 30, generator=generator, dtype=torch.float64) + 0.1
    G = J @ J.T + 1e-3 * torch.eye(48, dtype=torch.float64)
    targets = torch.eye(48, dtype=torch.float64)
    monkeypatch.setattr(nonneg_qp, "_GROUP_FROM", 1)
    grouped = nonneg_qp.dual_cone_weights(G, targets)
    monkeypatch.setattr(nonneg_qp, "_GROUP_FROM", 10**9)
    single = nonneg_qp.dual_cone_weights(G, targets)
    torch.testing.assert_close(grouped, single, rtol=0, atol=1e-9)
    assert float((grouped @ G).min()) >= -1e-8  # every projection lies in the dual cone


@pytest.mark.parametrize("p", [1.0, 0.5, 2.0])
def test_newton_steps_by_cholesky_equal_lu(p: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nash-MTL / FairGrad's Newton systems are solved by Cholesky from 128 tasks, by LU
    below: the same solution either way."""
    from taskbalance.solvers import power_equation

    J = random_jacobian(9, 30, 60)
    G = J @ J.T + 0.1 * torch.eye(30, dtype=torch.float64)
    by_lu = power_equation.solve_power_equation(G, p)
    monkeypatch.setattr(power_equation, "_CHOLESKY_FROM", 1)
    by_cholesky = power_equation.solve_power_equation(G, p)
    torch.testing.assert_close(by_cholesky, by_lu, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(G @ by_cholesky, by_cholesky ** (-p), rtol=1e-7, atol=1e-9)


def test_nash_mtl_says_when_no_positive_solution_is_reached(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 tasks in 8 dimensions (0 inside their convex hull): no positive solution of
    ``G w = 1 / w`` exists and the ridge's one is beyond 100 damped Newton steps; the weights
    are then not the method's solution, and a warning says so (never silently). A problem
    with a solution logs nothing."""
    import logging

    from taskbalance.solvers import power_equation

    monkeypatch.setattr(power_equation, "_unsolved", 0)  # (logged: the 1st, every 100th)
    generator = torch.Generator().manual_seed(0)
    J = torch.randn(100, 8, generator=generator) + 0.3 * torch.randn(1, 8, generator=generator)
    with caplog.at_level(logging.WARNING, logger=power_equation.__name__):
        solved = weights("nash_mtl", random_jacobian(0, 10, 40))
        assert not caplog.records
        unsolved = weights("nash_mtl", J)
    assert torch.isfinite(solved).all()
    assert torch.isfinite(unsolved).all()
    assert any("was not solved" in r.getMessage() for r in caplog.records)
