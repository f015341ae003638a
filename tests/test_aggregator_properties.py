"""The structural properties TorchJD states for its aggregators, checked on ours.

Jacobian descent (Quinton & Rey, 2024, arXiv:2406.16232) names the properties an aggregator
``A`` may have: *non-conflicting* (``J A(J) >= 0``, tested for every method that promises it
in ``test_method_properties.py``), *linear under scaling* (``A(diag(a c1 + b c2) J) =
a A(diag(c1) J) + b A(diag(c2) J)`` for ``c1, c2 > 0``: UPGrad, ConFIG) and *strongly
stationary* (``A(J) = 0`` only where ``J`` is strongly stationary, i.e. ``J^T w = 0`` for some
``w > 0``: UPGrad, DualProj). TorchJD's test suite checks these on its own aggregators; here the
same statements are checked on ours with matrices built to have, or to lack, each kind of
stationarity, and the two-task identity PCGrad = T x UPGrad is checked too.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from taskbalance import aggregate

SETTINGS = settings(max_examples=60, deadline=None)


def gaussian(seed: int, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def positive(seed: int, size: int) -> Tensor:
    """Row scales in ``[0.1, 10]`` (log-uniform)."""
    return 10 ** (2 * torch.rand(size, generator=torch.Generator().manual_seed(seed)) - 1).double()


@st.composite
def matrices(draw: st.DrawFn) -> Tensor:
    num_tasks, dim = draw(st.integers(2, 7)), draw(st.integers(2, 12))
    return gaussian(draw(st.integers(0, 2**31 - 1)), num_tasks, dim)


@st.composite
def not_weakly_stationary(draw: st.DrawFn) -> Tensor:
    """Rows ``v_i + c_i u`` with ``v_i`` orthogonal to a unit ``u`` and ``c_i > 0``: every
    non-zero ``w >= 0`` has ``u . J^T w = sum_i w_i c_i > 0``, so no such ``w`` gives 0."""
    num_tasks, dim = draw(st.integers(2, 12)), draw(st.integers(2, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    u = torch.nn.functional.normalize(gaussian(seed, dim), dim=0)
    rows = gaussian(seed + 1, num_tasks, dim) * 3
    rows -= (rows @ u)[:, None] * u
    return rows + positive(seed + 2, num_tasks)[:, None] * u


@st.composite
def strictly_weakly_stationary(draw: st.DrawFn) -> Tensor:
    """``k >= 2`` rows with a positive combination equal to 0 (so ``J^T w = 0`` for a
    ``w >= 0``), plus at least one row with a positive component along a direction ``u``
    orthogonal to them: any ``w`` with ``J^T w = 0`` puts no weight on those rows, so none is
    strictly positive."""
    dim = draw(st.integers(3, 12))
    k = draw(st.integers(2, dim - 1))
    extra = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    u = torch.nn.functional.normalize(gaussian(seed, dim), dim=0)
    spanning = gaussian(seed + 1, k - 1, dim)
    spanning -= (spanning @ u)[:, None] * u
    closing = -(positive(seed + 2, k - 1) @ spanning)  # sum_i a_i r_i + closing = 0, a > 0
    others = gaussian(seed + 3, extra, dim)
    others -= (others @ u)[:, None] * u
    others += positive(seed + 4, extra)[:, None] * u
    rows = torch.cat([spanning, closing[None], others])
    return rows[torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed))]


@st.composite
def strongly_stationary(draw: st.DrawFn) -> Tensor:
    """Rows with a strictly positive combination equal to 0 (rank below ``T``)."""
    num_tasks, dim = draw(st.integers(2, 8)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    rows = gaussian(seed, num_tasks - 1, dim)
    closing = -(positive(seed + 1, num_tasks - 1) @ rows)
    return torch.cat([rows, closing[None]])


@SETTINGS
@given(J=matrices(), seed=st.integers(0, 2**31 - 1), a=st.floats(0.1, 10), b=st.floats(0.1, 10))
def test_upgrad_and_config_are_linear_under_scaling(
    J: Tensor, seed: int, a: float, b: float
) -> None:
    """Scaling the rows by ``c > 0`` leaves the dual cone (UPGrad) and the rows' directions
    (ConFIG) unchanged and scales each row's share of the update by ``c_i``."""
    c1, c2 = positive(seed, J.shape[0]), positive(seed + 1, J.shape[0])
    for name in ("upgrad", "config"):

        def update(c: Tensor, name: str = name) -> Tensor:
            return aggregate(name, c[:, None] * J)

        expected = a * update(c1) + b * update(c2)
        # (the update may be 0, e.g. more tasks than dimensions: absolute error at the rows' scale)
        size = (a + b) * 10 * float(J.norm())
        torch.testing.assert_close(update(a * c1 + b * c2), expected, rtol=1e-9, atol=1e-11 * size)


@SETTINGS
@given(J=st.one_of(not_weakly_stationary(), strictly_weakly_stationary()))
def test_upgrad_and_dualproj_vanish_only_at_strongly_stationary_points(J: Tensor) -> None:
    """Not strongly stationary: UPGrad and DualProj return a non-zero update, which improves
    every task (``J d >= 0``)."""
    scale = float(J.norm(dim=1).max())
    for name in ("upgrad", "dualproj"):
        d = aggregate(name, J)
        assert float(d.norm()) > 1e-6 * scale, name
        assert float((J @ d).min()) >= -1e-9 * scale * float(d.norm()), name


@SETTINGS
@given(J=strictly_weakly_stationary())
def test_mgda_vanishes_at_weakly_stationary_points(J: Tensor) -> None:
    """MGDA is only weakly stationary: with a non-negative zero combination of the rows the
    min-norm point of their convex hull is 0, although the rows off that combination could
    still all be improved."""
    assert float(aggregate("mgda", J).norm()) <= 1e-9 * float(J.norm(dim=1).max())


@SETTINGS
@given(J=strongly_stationary())
def test_upgrad_dualproj_and_mgda_vanish_at_strongly_stationary_points(J: Tensor) -> None:
    """With ``J^T w = 0`` for a ``w > 0`` the dual cone is ``J``'s null space, orthogonal to
    every row: each projection is 0."""
    scale = float(J.norm(dim=1).max())
    for name in ("upgrad", "dualproj", "mgda"):
        assert float(aggregate(name, J).norm()) <= 1e-8 * scale, name


@SETTINGS
@given(J=matrices(), seed=st.integers(0, 2**31 - 1))
def test_pcgrad_with_two_tasks_is_twice_upgrad(J: Tensor, seed: int) -> None:
    """For two tasks PCGrad's projection of ``g_1`` onto ``{d : g_2 . d >= 0}`` already lies
    in the dual cone (``g_1 . g_1' = |g_1|^2 - (g_1 . g_2)^2 / |g_2|^2 >= 0``), so PCGrad's
    sum of projected gradients is twice UPGrad's mean of projections."""
    two = J[:2].clone()
    two[1] -= float(positive(seed, 1)) * two[0]  # conflicting or not, depending on the draw
    upgrad = aggregate("upgrad", two)
    torch.testing.assert_close(
        aggregate("pcgrad", two), 2 * upgrad, rtol=1e-10, atol=1e-12 * float(two.norm())
    )
