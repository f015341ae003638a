"""The Cholesky kernels of the row-by-row solvers: SciPy's LAPACK on the CPU, torch elsewhere,
the same factors, solves and refusals either way."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from taskbalance.solvers import cholesky
from taskbalance.solvers.cholesky import cholesky_or_none, solve_with_factor, submatrix

pytest.importorskip("scipy")


@pytest.fixture(params=["lapack", "torch"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs on SciPy's LAPACK path and on the torch path (SciPy hidden)."""
    if request.param == "torch":
        monkeypatch.setattr(cholesky, "_HAS_SCIPY", False)
    return str(request.param)


def _spd(size: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(size, size + 3, generator=generator, dtype=torch.float64)
    return (J @ J.T).to(dtype)


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 60), seed=st.integers(0, 10_000), columns=st.integers(1, 5))
def test_factor_and_solve_equal_torch(size: int, seed: int, columns: int) -> None:
    G = _spd(size, seed)
    factor = cholesky_or_none(G)
    assert factor is not None
    expected = torch.linalg.cholesky(G)
    torch.testing.assert_close(factor, expected, rtol=1e-10, atol=1e-12)
    assert torch.equal(factor, factor.tril())  # the other triangle is zero, as torch's
    rhs = torch.randn(size, columns, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    solution = solve_with_factor(rhs, factor)
    torch.testing.assert_close(G @ solution, rhs, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(solution, torch.cholesky_solve(rhs, expected), rtol=1e-8, atol=1e-9)


def test_only_the_lower_triangle_is_read(path: str) -> None:
    G = _spd(20, 3)
    garbage = G.tril() + torch.randn(20, 20, dtype=torch.float64).triu(1) * 100
    factor = cholesky_or_none(garbage)
    assert factor is not None
    torch.testing.assert_close(factor, torch.linalg.cholesky(G), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "matrix",
    [
        -torch.eye(4, dtype=torch.float64),  # not positive definite
        torch.full((3, 3), float("nan"), dtype=torch.float64),
        torch.diag(torch.tensor([1.0, 1e-20], dtype=torch.float64)),  # pivots 1e-10 apart
        torch.ones(5, 5, dtype=torch.float64),  # rank one
    ],
    ids=["indefinite", "nan", "ill-conditioned", "rank-one"],
)
def test_untrustworthy_factors_are_refused(path: str, matrix: torch.Tensor) -> None:
    assert cholesky_or_none(matrix) is None


def test_float32_stays_float32(path: str) -> None:
    G = _spd(8, 5, torch.float32)
    factor = cholesky_or_none(G)
    assert factor is not None and factor.dtype == torch.float32
    rhs = torch.ones(8, 2)
    solution = solve_with_factor(rhs, factor)
    assert solution.dtype == torch.float32
    torch.testing.assert_close(G @ solution, rhs, rtol=1e-3, atol=1e-3)


def test_submatrix_equals_indexing(path: str) -> None:
    A = torch.randn(30, 40, dtype=torch.float64)
    rows = torch.tensor([3, 0, 29, 7])
    columns = torch.tensor([39, 1, 1, 20, 5])
    assert torch.equal(submatrix(A, rows, columns), A[rows][:, columns])
    square = torch.randn(30, 30, dtype=torch.float64)
    assert torch.equal(submatrix(square, rows), square[rows][:, rows])
    empty = torch.zeros(0, dtype=torch.long)
    assert submatrix(square, empty).shape == (0, 0)


def test_the_lapack_path_is_taken_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """(Else the speed-up measured in the module docstring would silently be lost.)"""
    calls: list[str] = []
    original = torch.linalg.cholesky_ex

    def counting(*args: object, **kwargs: object) -> object:
        calls.append("torch")
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.linalg, "cholesky_ex", counting)
    assert cholesky_or_none(_spd(10, 0)) is not None
    assert calls == []
    monkeypatch.setattr(cholesky, "_HAS_SCIPY", False)
    assert cholesky_or_none(_spd(10, 0)) is not None
    assert calls == ["torch"]
