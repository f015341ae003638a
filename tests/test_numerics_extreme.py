"""Every method at the ends of the float range and on degenerate input, with the property each
one promises: scale homogeneity (``d(sJ) = s^b d(J)``) from 1e-30 to 1e30 in float32 and far
beyond in float64, non-conflict, permutation invariance, finiteness; and the specific defects
found by running another library's property suite against ours."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from properties import make_method
from taskbalance import Balancer, aggregate, methods
from taskbalance.aggregate import combine_jacobian

# degree b of d(sJ) = s^b d(J) for methods that do not declare one (loss weighting: the
# weights come from the losses, so d scales with J)
UNDECLARED_DEGREE = {"moco": 0.0, "db_mtl": 1.0, "graddrop": 1.0, "gradnorm": 1.0}
LOSSES = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
METRICS = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64)


def degree(name: str) -> float:
    declared = make_method(name, 4).scale_degree()
    if declared is not None:
        return declared
    return UNDECLARED_DEGREE.get(name, 1.0)


def update(name: str, J: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(1)  # methods with a generator are seeded; fresh instance each call
    return aggregate(make_method(name, J.shape[0]), J, losses=LOSSES, metrics=METRICS)


def base_jacobian(dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(4, 6, generator=generator, dtype=torch.float64).to(dtype)


SCALES = [
    (torch.float32, -100),  # 2^-100 ~ 8e-31
    (torch.float32, -75),  # 2.6e-23: squares underflow float32 (the all-zero Gram matrix)
    (torch.float32, 100),  # 1.3e30
    (torch.float64, -100),
    (torch.float64, 100),
    (torch.float64, -520),  # 3e-157: squares underflow float64
    (torch.float64, 520),  # 3e156: squares overflow float64
    (torch.float64, -900),
    (torch.float64, 900),
]


@pytest.mark.parametrize("name", methods.available())
@pytest.mark.parametrize(("dtype", "exponent"), SCALES)
def test_update_is_homogeneous_over_the_whole_float_range(
    name: str, dtype: torch.dtype, exponent: int
) -> None:
    J = base_jacobian(dtype)
    reference = update(name, J).to(torch.float64)
    b = degree(name)
    if name in ("gradnorm", "pcd") and abs(exponent) > 500:
        # their state is in absolute gradient units (GradNorm's targets, PCD's moving average
        # and its eps): they cannot be rescaled, so where the Gram matrix overflows, or a
        # task's squared norm underflows to 0, they refuse (never a silent NaN or 0)
        # (at 2^-520 the squares are subnormal, not 0: solved as they are)
        if exponent > 0 or exponent < -600:
            direction = "down" if exponent > 0 else "up"
            with pytest.raises(ValueError, match=f"scale the losses {direction}"):
                update(name, J * 2.0**exponent)
        return
    s = 2.0**exponent  # a power of two: J * s is exact, so results must agree closely
    scaled = update(name, J * s).to(torch.float64)
    assert torch.isfinite(scaled).all()
    got = scaled / s  # compare d(sJ) / s with s^(b-1) d(J): no overflow either way
    expected = reference * s ** (b - 1.0)
    peak = float(expected.abs().max())
    tolerance = (1e-5 if dtype == torch.float32 else 1e-9) * peak
    assert float((got - expected).abs().max()) <= tolerance, (name, exponent)


@pytest.mark.parametrize("name", methods.available())
def test_declared_degree_matches_the_update(name: str) -> None:
    J = base_jacobian(torch.float64)
    d1, d2 = update(name, J), update(name, 4 * J)
    assert float(d2.norm() / d1.norm()) == pytest.approx(4.0 ** degree(name), rel=1e-6)


def degenerate(kind: str, num_tasks: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(num_tasks, dim, generator=generator, dtype=torch.float64)
    if kind == "parallel":
        J = torch.rand(num_tasks, 1, generator=generator, dtype=torch.float64) * 3 * J[:1] + J[:1]
    elif kind == "anti_parallel":
        signs = torch.tensor([(-1.0) ** i for i in range(num_tasks)], dtype=torch.float64)
        J = (signs * (1 + torch.rand(num_tasks, generator=generator))).unsqueeze(1) * J[:1]
    elif kind == "duplicate":
        J = J[:1].repeat(num_tasks, 1)
    elif kind == "zero":
        J = torch.zeros_like(J)
    elif kind == "rank_deficient":
        J = torch.randn(num_tasks, 2, generator=generator, dtype=torch.float64) @ J[:2]
    elif kind == "stationary":  # 0 in the convex hull: g_T = -sum of the others
        J[-1] = -J[:-1].sum(dim=0)
    return J


KINDS = ["random", "parallel", "anti_parallel", "duplicate", "zero", "rank_deficient"]
KINDS += ["stationary"]
NON_CONFLICTING: dict[str, Callable[[], object]] = {
    "upgrad": lambda: methods.create("upgrad"),
    "dualproj": lambda: methods.create("dualproj"),
    "mgda": lambda: methods.create("mgda"),
    "cagrad(c=1)": lambda: methods.create("cagrad", c=1.0),
    "cagrad(c=2)": lambda: methods.create("cagrad", c=2.0, rescale=0),
}


@st.composite
def degenerate_jacobians(draw: st.DrawFn) -> tuple[str, torch.Tensor, int]:
    """``(kind, J, seed)`` for a degenerate or random ``(T, P)`` matrix, ``T`` in 2..7."""
    kind = draw(st.sampled_from(KINDS))
    seed = draw(st.integers(0, 10_000))
    return kind, degenerate(kind, draw(st.integers(2, 7)), draw(st.integers(1, 6)), seed), seed


@pytest.mark.parametrize("label", list(NON_CONFLICTING))
@given(problem=degenerate_jacobians())
def test_no_task_is_hurt_by_methods_that_promise_it(
    label: str, problem: tuple[str, torch.Tensor, int]
) -> None:
    kind, J, _ = problem
    d = aggregate(NON_CONFLICTING[label](), J)  # type: ignore[arg-type]
    assert torch.isfinite(d).all()
    slack = 1e-10 * float(J.norm(dim=1).max()) ** 2 + 1e-300  # rounding of d ~ |J|
    assert float((J @ d).min()) >= -slack, (label, kind)


# deterministic methods whose update must not depend on the order of the tasks
PERMUTATION_INVARIANT = [
    "aligned_mtl",
    "cagrad",
    "config",
    "dualproj",
    "ew",
    "fairgrad",
    "imtl",
    "imtl_g",
    "loss_ratio",
    "mgda",
    "nash_mtl",
    "upgrad",
]


@pytest.mark.parametrize("name", PERMUTATION_INVARIANT)
@given(problem=degenerate_jacobians())
def test_permuting_tasks_does_not_change_the_update_on_degenerate_input(
    name: str, problem: tuple[str, torch.Tensor, int]
) -> None:
    _, J, seed = problem
    num_tasks = J.shape[0]
    losses = torch.linspace(0.5, 2.0, num_tasks, dtype=torch.float64)
    perm = torch.randperm(num_tasks, generator=torch.Generator().manual_seed(seed))
    d = aggregate(methods.create(name), J, losses=losses)
    d_perm = aggregate(methods.create(name), J[perm], losses=losses[perm])
    scale = float(J.abs().max()) * num_tasks + 1e-300
    torch.testing.assert_close(d_perm / scale, d / scale, atol=1e-7, rtol=1e-6)


# ------------------------------------------------------------------ the reported defects
def test_cagrad_at_a_pareto_stationary_point_returns_zero() -> None:
    J = torch.tensor([[2.0, 0.0], [-1.0, 1.0], [-1.0, -1.5]], dtype=torch.float64)
    for c in (1.0, 2.0):
        d = aggregate(methods.create("cagrad", c=c), J)
        # (the only optimum: no d != 0 keeps every g_i . d >= 0 for these three gradients)
        torch.testing.assert_close(d, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-11)
    generator = torch.Generator().manual_seed(0)
    for noise in (1e-6, 1e-9):
        noisy = J + noise * torch.randn(J.shape, generator=generator, dtype=torch.float64)
        weights = combine_jacobian(methods.create("cagrad", c=2.0), noisy).weights
        assert weights is not None
        assert float(weights.abs().max()) < 10  # no 1e7 weights
        d = aggregate(methods.create("cagrad", c=2.0), noisy)
        assert float((noisy @ d).min()) >= -1e-9


def test_cagrad_away_from_stationarity_is_unchanged() -> None:
    J = torch.tensor([[1.0, 0.2], [0.3, 1.0]], dtype=torch.float64)
    d = aggregate(methods.create("cagrad", c=2.0), J)
    assert float(d.norm()) > 0
    assert float((J @ d).min()) > 0


def test_imtl_g_with_parallel_gradients_does_not_depend_on_task_order() -> None:
    J = torch.tensor([[1.0, 0.5], [2.0, 1.0]], dtype=torch.float64)
    d = aggregate("imtl_g", J)
    flipped = aggregate("imtl_g", J.flip(0))
    torch.testing.assert_close(d, flipped)
    torch.testing.assert_close(d, J.mean(dim=0))  # minimum-norm weights: (1/2, 1/2)


def test_imtl_g_keeps_the_closed_form_in_general_position() -> None:
    J = torch.tensor([[1.0, 0.0, 0.5], [-1.0, 2.0, 0.0], [0.3, 0.3, 1.0]], dtype=torch.float64)
    d = aggregate("imtl_g", J)
    projections = (J @ d) / J.norm(dim=1)
    torch.testing.assert_close(projections, projections.mean().expand(3))
    weights = combine_jacobian(methods.create("imtl_g"), J).weights
    assert weights is not None
    assert float(weights.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("name", methods.available())
def test_an_empty_parameter_space_is_handled(name: str) -> None:
    for num_tasks in (1, 3):
        J = torch.zeros(num_tasks, 0)
        d = aggregate(make_method(name, num_tasks), J, losses=[1.0] * num_tasks)
        assert d.shape == (0,)


@pytest.mark.parametrize("factor", [1e20, 1e25, 1e30])
@pytest.mark.parametrize("name", ["ew", "mgda", "upgrad", "pcgrad"])
def test_huge_but_finite_gradients_are_not_skipped(name: str, factor: float) -> None:
    torch.manual_seed(0)
    w = torch.randn(200, requires_grad=True)
    x = torch.randn(16, 200)
    losses = [((x @ w) ** 2).mean() * factor, ((x @ w - 1) ** 2).mean() * factor]
    info = Balancer(name, [w]).backward(losses)
    assert not info.skipped, info.reason
    assert w.grad is not None
    assert torch.isfinite(w.grad).all()
    assert info.grad_norm is not None
    assert math.isfinite(float(info.grad_norm))  # the true norm, computed without overflow


def test_a_truly_non_finite_gradient_is_still_skipped_with_a_true_reason() -> None:
    w = torch.zeros(3, requires_grad=True)
    info = Balancer("mgda", [w]).backward([w.sqrt().sum(), (w**2).sum()])
    assert info.skipped
    assert info.reason == "non-finite task gradient"


@pytest.mark.parametrize("name", methods.available())
def test_mixed_precision_losses(name: str) -> None:
    torch.manual_seed(0)
    w = torch.randn(4, 4, requires_grad=True)
    x = torch.randn(8, 4)
    z = x @ w
    losses = [(z**2).mean().half(), ((z.double() - 1) ** 2).mean(), z.abs().mean()]
    method = make_method(name, 3)
    info = Balancer(method, [w]).backward(losses, metrics=[0.5, 0.5, 0.5])
    assert not info.skipped
    assert w.grad is not None
    assert torch.isfinite(w.grad).all()


def _two_heads() -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 4), torch.nn.Linear(4, 1), torch.nn.Linear(4, 1), torch.randn(8, 4)


@pytest.mark.parametrize("level", ["parameters", "representation"])
@pytest.mark.parametrize("name", ["graddrop", "nash_mtl", "mgda", "ew"])
def test_a_representation_the_losses_do_not_use_is_refused(name: str, level: str) -> None:
    trunk, head1, head2, x = _two_heads()
    z = trunk(x)
    other = trunk(x)  # another forward pass: not what the heads read
    losses = [head1(z).pow(2).mean(), head2(z).sub(1).pow(2).mean()]
    balancer = Balancer(name, trunk.parameters(), level=level)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="none of the losses depends on `representation`"):
        balancer.backward(losses, representation=other)
    assert all(p.grad is None for p in trunk.parameters())


@pytest.mark.parametrize("name", ["nash_mtl", "fairgrad", "mgda", "imtl_g", "upgrad"])
def test_a_task_that_never_reaches_the_shared_parameters_is_refused(name: str) -> None:
    trunk, head1, head2, x = _two_heads()
    losses = [head1(trunk(x)).pow(2).mean(), head2(x).sub(1).pow(2).mean()]
    with pytest.raises(ValueError, match=r"task\(s\) \['task1'\] does not depend on any shared"):
        Balancer(name, trunk.parameters()).backward(losses)


def test_a_zero_gradient_by_value_is_left_to_the_method() -> None:
    trunk, head1, head2, x = _two_heads()
    z = trunk(x)
    losses = [head1(z).pow(2).mean(), (head2(z) * 0).sum()]  # reaches the trunk, gradient 0
    info = Balancer("mgda", trunk.parameters()).backward(losses)
    assert not info.skipped


def test_loss_weighting_accepts_a_task_without_shared_parameters() -> None:
    trunk, head1, head2, x = _two_heads()
    losses = [head1(trunk(x)).pow(2).mean(), head2(x).sub(1).pow(2).mean()]
    assert not Balancer("ew", trunk.parameters()).backward(losses).skipped


@pytest.mark.parametrize("name", ["mgda", "cagrad", "dualproj", "nash_mtl", "imtl_g", "config"])
def test_a_thousand_tasks(name: str) -> None:
    generator = torch.Generator().manual_seed(0)
    J = torch.randn(1000, 64, generator=generator) + 0.3 * torch.randn(1, 64, generator=generator)
    d = aggregate(name, J)
    assert torch.isfinite(d).all()


def test_upgrad_solves_a_low_rank_problem_and_refuses_one_too_large_to_solve_exactly() -> None:
    """More tasks than dimensions: the exact per-row fallback grows each row's free set to
    at most the rank + 1, so 300 tasks in 8 dimensions are solved (in ~0.5 s); 400 tasks in
    64 dimensions would take ~15 s per step and are refused after the first row."""
    generator = torch.Generator().manual_seed(0)
    J = torch.randn(300, 8, generator=generator, dtype=torch.float64)
    J[:, 0] += 3.0  # a common half-space: the dual cone is not {0}
    d = aggregate("upgrad", J)
    assert float(d.norm()) > 0.1
    assert float((J @ d).min()) >= -1e-9 * float(J.norm(dim=1).max() * d.norm())
    wide = torch.randn(400, 64, generator=generator, dtype=torch.float64)
    with pytest.raises(ValueError, match="Use fewer tasks"):
        aggregate("upgrad", wide)


# rows of 1e-20, 1e20 and 1 (weights such as max_j |g_j| / |g_i| = 1e40 exceed float32), and
# rows of ~1e-40 (float32 subnormals: Nash-MTL's w ~ 1 / |g| is 1e40)
EXTREME_ROWS = {"mixed": [1e-20, 1e20, 1.0], "subnormal": [1e-40, 2e-40, 3e-40]}
CANNOT_NORMALISE_SUBNORMALS = {"moco"}  # its tracked rows L_i g_i / |g_i|: skipped, not wrong
DECIDES_ON_SUBNORMAL_ARITHMETIC = {"graddrop"}  # sign purity summed in float32 subnormals


@pytest.mark.parametrize("level", ["parameters", "representation"])
@pytest.mark.parametrize("rows", list(EXTREME_ROWS))
@pytest.mark.parametrize("name", methods.available())
def test_weights_beyond_float32_are_applied_exactly(name: str, rows: str, level: str) -> None:
    """A float32 model whose task gradients differ by 40 orders of magnitude (or are
    subnormal) gets the update the method computes in float64, not a skipped step: weights
    that float32 cannot hold are applied as ``(w / s) g`` times the power of two ``s``."""
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    J = base * torch.tensor(EXTREME_ROWS[rows], dtype=torch.float64).unsqueeze(1)
    J32 = J.to(torch.float32)
    w = torch.ones(5, requires_grad=True)
    z = w * 1.0 if level == "representation" else w
    losses = [(J32[i] * (z - 1)).sum() + LOSSES[i].float() for i in range(3)]
    torch.manual_seed(1)
    method = make_method(name, 3)
    if level == "representation" and not method.representation_level:
        pytest.skip(f"{name} has no representation level")
    balancer = Balancer(method, [w])
    representation = {"representation": z} if level != "parameters" else {}
    info = balancer.backward(losses, metrics=METRICS[:3].tolist(), **representation)
    if rows == "subnormal" and name in CANNOT_NORMALISE_SUBNORMALS:
        assert info.skipped
        assert w.grad is None
        return
    assert not info.skipped, info.reason
    assert w.grad is not None
    if rows == "subnormal" and name in DECIDES_ON_SUBNORMAL_ARITHMETIC:
        assert torch.isfinite(w.grad).all()
        return
    torch.manual_seed(1)
    expected = aggregate(make_method(name, 3), J32.double(), losses=LOSSES[:3], metrics=METRICS[:3])
    scale = float(expected.abs().max())
    subnormal_step = 1.4e-45  # float32's resolution below 1.2e-38
    assert torch.allclose(
        w.grad.double(), expected, rtol=1e-4, atol=1e-5 * scale + 64 * subnormal_step
    ), name


@pytest.mark.parametrize("name", ["cagrad", "config", "pcgrad", "nash_mtl", "fairgrad"])
def test_aggregate_applies_weights_beyond_float32(name: str) -> None:
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    rows = "subnormal" if name in ("nash_mtl", "fairgrad") else "mixed"
    J = (base * torch.tensor(EXTREME_ROWS[rows], dtype=torch.float64).unsqueeze(1)).float()
    update32 = aggregate(name, J)
    expected = aggregate(name, J.double())
    assert torch.isfinite(update32).all()
    scale = float(expected.abs().max())
    assert torch.allclose(update32.double(), expected, rtol=1e-4, atol=1e-5 * scale + 1e-43)


def test_reused_weights_beyond_float32_are_applied_exactly() -> None:
    generator = torch.Generator().manual_seed(3)
    J = torch.randn(3, 5, generator=generator, dtype=torch.float64) * 1e-40
    w = torch.ones(5, requires_grad=True)
    balancer = Balancer("nash_mtl", [w], update_every=2)
    updates = []
    for _ in range(2):  # the second step reuses the first step's weights (~1e40)
        w.grad = None
        info = balancer.backward([(J[i].float() * (w - 1)).sum() + 1.0 for i in range(3)])
        assert not info.skipped, info.reason
        assert w.grad is not None
        updates.append(w.grad.clone())
    assert info.reused_weights
    assert torch.allclose(updates[0], updates[1], rtol=1e-5, atol=0)
    assert float(updates[0].abs().max()) > 1e-3  # w ~ 1 / |g|: an update of order one
