"""The Cholesky kernels of the row-by-row solvers: SciPy's LAPACK on the host, NumPy and
torch without it, the same factors, solves and refusals either way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from taskbalance.solvers import cholesky
from taskbalance.solvers.cholesky import (
    cholesky_or_none,
    host_cholesky_or_none,
    host_solve_with_factor,
    host_submatrix,
)


def solve_with_factor(rhs: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(host_solve_with_factor(rhs.numpy(), factor.numpy()))


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
    generator = torch.Generator().manual_seed(1)
    rhs = torch.randn(size, columns, dtype=torch.float64, generator=generator)
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
    assert factor is not None
    assert factor.dtype == torch.float32
    rhs = torch.ones(8, 2)
    solution = solve_with_factor(rhs, factor)
    assert solution.dtype == torch.float32
    torch.testing.assert_close(G @ solution, rhs, rtol=1e-3, atol=1e-3)


def test_submatrix_equals_indexing() -> None:
    A = np.random.default_rng(0).standard_normal((30, 40))
    rows = np.array([3, 0, 29, 7])
    columns = np.array([39, 1, 1, 20, 5])
    assert np.array_equal(host_submatrix(A, rows, columns), A[rows][:, columns])
    square = A[:, :30]
    assert np.array_equal(host_submatrix(square, rows), square[rows][:, rows])
    assert host_submatrix(square, np.zeros(0, dtype=np.int64)).shape == (0, 0)


def test_host_and_torch_factors_agree_on_the_cpu(path: str) -> None:
    G = _spd(25, 9)
    factor = host_cholesky_or_none(G.numpy())
    assert factor is not None
    torch.testing.assert_close(torch.from_numpy(factor), torch.linalg.cholesky(G))
    assert host_cholesky_or_none(-G.numpy()) is None


def test_the_lapack_path_is_taken_where_scipy_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """(Else the speed-up measured in the module docstring would silently be lost.)"""
    from scipy.linalg import lapack

    calls: list[str] = []
    original = lapack.dpotrf

    def counting(*args: object, **kwargs: object) -> object:
        calls.append("dpotrf")
        return original(*args, **kwargs)

    monkeypatch.setattr(lapack, "dpotrf", counting)
    assert cholesky_or_none(_spd(10, 0)) is not None
    assert calls == ["dpotrf"]
    monkeypatch.setattr(cholesky, "_HAS_SCIPY", False)
    assert cholesky_or_none(_spd(10, 0)) is not None
    assert calls == ["dpotrf"]


def test_blas_threads_follow_torch_within_a_solve() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from taskbalance.solvers.host_threads import blas_threads_like_torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with blas_threads_like_torch():
            inside = [
                i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"
            ]
        assert inside
        assert max(inside) == 1
    finally:
        torch.set_num_threads(previous)


def test_row_path_without_scipy_gives_the_same_projection(monkeypatch: pytest.MonkeyPatch) -> None:
    from taskbalance.solvers import nonneg_qp

    generator = torch.Generator().manual_seed(4)
    J = torch.randn(96, 200, generator=generator, dtype=torch.float64)
    G = J @ J.T
    targets = torch.eye(96, dtype=torch.float64)
    calls: list[int] = []
    lockstep = nonneg_qp._lockstep
    monkeypatch.setattr(nonneg_qp, "_lockstep", lambda *args: calls.append(1) or lockstep(*args))
    with_scipy = nonneg_qp.dual_cone_weights(G, targets)
    assert calls  # (the row path was taken)
    monkeypatch.setattr(cholesky, "_HAS_SCIPY", False)
    without = nonneg_qp.dual_cone_weights(G, targets)
    torch.testing.assert_close(without, with_scipy, rtol=0, atol=1e-10)
