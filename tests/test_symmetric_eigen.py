"""The truncated inverse square root behind Aligned-MTL: the tridiagonal path (LAPACK through
SciPy, large matrices on the CPU) against a plain ``torch.linalg.eigh``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from taskbalance import aggregate
from taskbalance.solvers import symmetric_eigen
from taskbalance.solvers.symmetric_eigen import TRIDIAGONAL_FROM, truncated_inverse_sqrt

pytest.importorskip("scipy")


def by_eigh(G: torch.Tensor, b: torch.Tensor, relative_cutoff: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(G)
    kept = values > relative_cutoff * values.max()
    basis = vectors[:, kept]
    return basis @ (values[kept].rsqrt() * (basis.T @ b))


def gram(n: int, rank: int, seed: int, spread: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(n, rank, generator=generator, dtype=torch.float64)
    J = J * torch.logspace(0, -spread, rank, dtype=torch.float64)  # singular values spread
    return J @ J.T


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(TRIDIAGONAL_FROM, TRIDIAGONAL_FROM + 90),
    rank_share=st.sampled_from([1.0, 0.5, 0.1]),
    spread=st.sampled_from([0.0, 3.0, 8.0]),
    seed=st.integers(0, 2**16),
)
def test_the_tridiagonal_path_equals_eigh(
    n: int, rank_share: float, spread: float, seed: int
) -> None:
    """Full-rank, rank-deficient and ill-conditioned Gram matrices (singular values over up
    to eight decades, so that some eigenvalues fall below the cut-off): the same eigenvalues
    and the same vector as ``eigh`` to rounding."""
    G = gram(n, max(1, int(n * rank_share)), seed, spread)
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    cutoff = n * torch.finfo(torch.float32).eps
    values, result = truncated_inverse_sqrt(G, b, cutoff)
    expected = by_eigh(G, b, cutoff)
    torch.testing.assert_close(values, torch.linalg.eigvalsh(G), rtol=0, atol=1e-12 * values.max())
    scale = float(expected.abs().max())
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-9 * scale)


def test_the_tridiagonal_path_is_taken_and_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    tridiagonal = symmetric_eigen._tridiagonal_path

    def counted(*args: object) -> object:
        calls.append(1)
        return tridiagonal(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(symmetric_eigen, "_tridiagonal_path", counted)
    J = torch.randn(300, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with_lapack = aggregate("aligned_mtl", J)
    assert calls == [1]
    monkeypatch.setattr(symmetric_eigen, "_HAS_SCIPY", False)  # a core install: torch only
    without = aggregate("aligned_mtl", J)
    assert calls == [1]
    torch.testing.assert_close(with_lapack, without, rtol=1e-10, atol=1e-12)


def test_small_matrices_and_non_finite_ones_take_eigh(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> object:
        raise AssertionError("the tridiagonal path was taken")

    monkeypatch.setattr(symmetric_eigen, "_tridiagonal_path", refuse)
    small = gram(TRIDIAGONAL_FROM - 1, 20, 0, 0.0)
    ones = torch.ones(TRIDIAGONAL_FROM - 1, dtype=torch.float64)
    truncated_inverse_sqrt(small, ones, 1e-4)
    broken = gram(TRIDIAGONAL_FROM, 20, 0, 0.0)
    broken[0, 0] = float("nan")
    truncated_inverse_sqrt(broken, torch.ones(TRIDIAGONAL_FROM, dtype=torch.float64), 1e-4)


def test_an_all_zero_matrix_gives_zero_weights() -> None:
    J = torch.zeros(TRIDIAGONAL_FROM + 4, 10, dtype=torch.float64)
    assert torch.equal(aggregate("aligned_mtl", J), torch.zeros(10, dtype=torch.float64))
