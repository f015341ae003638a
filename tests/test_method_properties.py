"""Properties every method must have: finite output on degenerate input, shapes, equivariance."""

import io

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from properties import jacobians, make_method
from taskbalance import aggregate, methods


@pytest.mark.parametrize("name", methods.available())
@given(J=jacobians(), seed=st.integers(0, 1000))
def test_finite_output_of_the_right_shape_on_degenerate_input(
    name: str, J: torch.Tensor, seed: int
) -> None:
    num_tasks = J.shape[0]
    generator = torch.Generator().manual_seed(seed)
    losses = torch.rand(num_tasks, generator=generator) * 10
    metrics = torch.rand(num_tasks, generator=generator)
    d = aggregate(make_method(name, num_tasks), J, losses=losses, metrics=metrics)
    assert d.shape == (J.shape[1],)
    assert d.dtype == J.dtype
    assert torch.isfinite(d).all(), f"{name} gave non-finite output"


@pytest.mark.parametrize("name", methods.available())
def test_single_task_returns_a_multiple_of_its_gradient(name: str) -> None:
    J = torch.tensor([[3.0, -4.0]])
    d = aggregate(make_method(name, 1), J, losses=[2.0], metrics=[0.5])
    assert torch.isfinite(d).all()
    assert float(d[0] * J[0, 1] - d[1] * J[0, 0]) == pytest.approx(0.0, abs=1e-6)  # parallel
    assert float(d @ J[0]) > 0


@pytest.mark.parametrize("name", ["ew", "loss_ratio", "mgda"])
@given(J=jacobians(), seed=st.integers(0, 1000))
def test_permutation_invariance_of_the_update(name: str, J: torch.Tensor, seed: int) -> None:
    num_tasks = J.shape[0]
    generator = torch.Generator().manual_seed(seed)
    losses = torch.rand(num_tasks, generator=generator) + 0.1
    perm = torch.randperm(num_tasks, generator=generator)
    J = J.double()
    d = aggregate(name, J, losses=losses)
    d_perm = aggregate(name, J[perm], losses=losses[perm])
    scale = float(J.abs().max()) * num_tasks + 1e-300
    torch.testing.assert_close(d_perm / scale, d / scale, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("name", ["ew", "pcgrad", "mgda"])
@pytest.mark.parametrize("factor", [1e-10, 3.0, 1e10])
def test_update_scales_with_the_gradients(name: str, factor: float) -> None:
    torch.manual_seed(0)
    J = torch.randn(5, 7, dtype=torch.float64)
    d = aggregate(methods.create(name), J)
    d_scaled = aggregate(methods.create(name), J * factor)
    torch.testing.assert_close(d_scaled / factor, d, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", methods.available())
def test_state_dict_round_trip_gives_bit_identical_next_steps(name: str) -> None:
    generator = torch.Generator().manual_seed(0)
    num_tasks, dim = 3, 5
    steps = [
        (
            torch.randn(num_tasks, dim, generator=generator),
            torch.rand(num_tasks, generator=generator) + 0.1,
            torch.rand(num_tasks, generator=generator),
        )
        for _ in range(6)
    ]
    method = make_method(name, num_tasks)
    for J, losses, metrics in steps[:3]:
        aggregate(method, J, losses=losses, metrics=metrics)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)  # states hold tensors and plain values only
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    expected = [
        aggregate(method, J, losses=losses, metrics=metrics) for J, losses, metrics in steps[3:]
    ]
    restored = make_method(name, num_tasks)
    restored.load_state_dict(state)
    for (J, losses, metrics), want in zip(steps[3:], expected, strict=True):
        assert torch.equal(aggregate(restored, J, losses=losses, metrics=metrics), want)
    restored.reset()
    fresh = make_method(name, num_tasks)
    J, losses, metrics = steps[0]
    assert torch.equal(
        aggregate(restored, J, losses=losses, metrics=metrics),
        aggregate(fresh, J, losses=losses, metrics=metrics),
    )


EQUIVARIANT = [
    "ew", "loss_ratio", "gls", "stch", "uw", "imtl_l", "famo", "mgda", "upgrad", "dualproj",
    "imtl_g", "imtl", "nash_mtl", "fairgrad", "cagrad", "aligned_mtl", "config", "gradnorm",
    "db_mtl", "moco", "excess_mtl", "cr_mogm",
]  # fmt: skip


@pytest.mark.parametrize("name", EQUIVARIANT)
@given(seed=st.integers(0, 10_000), num_tasks=st.integers(1, 6))
def test_permuting_the_tasks_does_not_change_the_update(
    name: str, seed: int, num_tasks: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(num_tasks, num_tasks + 3, generator=generator, dtype=torch.float64)
    losses = torch.rand(num_tasks, generator=generator, dtype=torch.float64) + 0.1
    perm = torch.randperm(num_tasks, generator=generator)
    d = aggregate(make_method(name, num_tasks), J, losses=losses)
    d_perm = aggregate(make_method(name, num_tasks), J[perm], losses=losses[perm])
    torch.testing.assert_close(d_perm, d, rtol=1e-6, atol=1e-9 * float(J.abs().max()) * num_tasks)
