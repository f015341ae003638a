"""The projected-gradient guesses' step-size bound and iterates."""

from __future__ import annotations

import itertools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from taskbalance.solvers.projected_gradient import fista_iterates, largest_eigenvalue_bound


@settings(max_examples=40, deadline=None)
@given(
    tasks=st.integers(2, 120),
    dims=st.integers(1, 200),
    seed=st.integers(0, 10_000),
    shift=st.floats(-1.0, 3.0),
)
def test_bound_is_at_least_the_largest_eigenvalue(
    tasks: int, dims: int, seed: int, shift: float
) -> None:
    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(tasks, dims, generator=generator, dtype=torch.float64) + shift
    G = J @ J.T
    assert largest_eigenvalue_bound(G) >= float(torch.linalg.eigvalsh(G)[-1]) * (1 - 1e-12)
    centred = torch.eye(tasks, dtype=torch.float64) - 1.0 / tasks
    tangent = float(torch.linalg.eigvalsh(centred @ G @ centred)[-1])
    assert largest_eigenvalue_bound(G, on_simplex=True) >= tangent * (1 - 1e-12)


def test_opposite_tasks_and_zero_matrices() -> None:
    G = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)  # top vector (1, -1)
    assert largest_eigenvalue_bound(G) >= 2.0
    assert largest_eigenvalue_bound(torch.zeros(5, 5, dtype=torch.float64)) == 0.0


def test_simplex_curvature_ignores_a_shift_along_the_ones() -> None:
    """CAGrad's shifted matrices: ``G + b 1^T + 1 b^T + c 1 1^T`` has the same curvature along
    the simplex as ``G``, though its own largest eigenvalue is far larger."""
    generator = torch.Generator().manual_seed(0)
    J = torch.randn(50, 80, generator=generator, dtype=torch.float64)
    G = J @ J.T
    b = torch.randn(50, generator=generator, dtype=torch.float64) * 100
    ones = torch.ones(50, dtype=torch.float64)
    shifted = G + torch.outer(b, ones) + torch.outer(ones, b) + 1e4
    plain = largest_eigenvalue_bound(G, on_simplex=True)
    moved = largest_eigenvalue_bound(shifted, on_simplex=True)
    assert abs(moved - plain) <= 1e-6 * plain
    assert largest_eigenvalue_bound(shifted) > 10 * moved


def test_fista_iterates_converge_to_the_projected_minimiser() -> None:
    """On ``min 1/2 x^T A x + b^T x, x >= 0`` the iterates approach the exact answer."""
    from taskbalance.solvers.nonneg_qp import nonneg_qp

    generator = torch.Generator().manual_seed(1)
    J = torch.randn(12, 40, generator=generator, dtype=torch.float64)
    A = J @ J.T
    b = torch.randn(12, generator=generator, dtype=torch.float64)
    iterates = fista_iterates(
        torch.zeros(12, dtype=torch.float64),
        lambda y: A @ y + b,
        lambda v: v.clamp_min(0.0),
        1 / largest_eigenvalue_bound(A),
    )
    x = next(itertools.islice(iterates, 2999, None))  # the 3000th iterate
    torch.testing.assert_close(x, nonneg_qp(A, b), rtol=0, atol=1e-8)
