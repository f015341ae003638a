"""The layer-wise Gram path: same Gram matrix and same updates as materialising the Jacobian."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from helpers import TwoLevelNet, regression_problem, task_losses
from taskbalance import Balancer, methods
from taskbalance.engine import gramian_of_blocks, task_jacobian
from taskbalance.engine.gramian import in_safe_range
from taskbalance.engine.layerwise import layerwise_gramian, stacked_jacobian
from taskbalance.engine.task_gradients import GramianGradients, TaskGradients
from taskbalance.health import HealthMonitor
from taskbalance.methods.base import Method
from taskbalance.transforms import ClipGlobalNorm, ClipPerTaskNorm


def _reference(losses: Tensor, params: list[Tensor]) -> Tensor:
    blocks, _ = task_jacobian(losses, params, batched=False)
    return gramian_of_blocks(blocks)


def _identity(num_tasks: int) -> Tensor:
    return torch.eye(num_tasks)


class SharedWeightNet(nn.Module):
    """A trunk that uses one layer twice (weight tying), BatchNorm, a convolution, an unused
    parameter and a parameter used outside any module."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv1d(1, 3, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm1d(3)
        self.tied = nn.Linear(18, 18)
        self.unused = nn.Parameter(torch.randn(5))
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.norm(self.conv(x.unsqueeze(1)))).flatten(1)
        return self.scale * self.tied(torch.tanh(self.tied(h)))


def _shared_weight_losses() -> tuple[SharedWeightNet, Tensor, list[Tensor]]:
    model = SharedWeightNet()
    z = model(torch.randn(16, 6))
    losses = torch.stack([z[:, i::3].pow(2).mean() * (i + 1) for i in range(3)])
    return model, losses, list(model.parameters())


def test_gramian_equals_the_jacobian_gramian_for_tied_weights_norms_and_unused_params() -> None:
    _, losses, params = _shared_weight_losses()
    gramian = layerwise_gramian(losses, params, _identity(3))
    assert gramian is not None
    assert gramian.dtype == torch.float64
    torch.testing.assert_close(gramian, _reference(losses, params), rtol=1e-6, atol=1e-9)


def test_stacked_jacobian_equals_the_concatenated_blocks() -> None:
    model, losses, params = _shared_weight_losses()
    matrix = stacked_jacobian(losses, params, _identity(3))
    assert matrix is not None
    blocks, _ = task_jacobian(losses, params, batched=False)
    reference = TaskGradients(blocks)
    torch.testing.assert_close(matrix, reference.matrix, rtol=1e-5, atol=1e-6)
    unused = sum(p.numel() for p in params[: params.index(model.unused)])
    assert bool((matrix[:, unused : unused + 5] == 0).all())  # the unused parameter's columns
    grads = TaskGradients.from_columns(matrix, [p.shape for p in params])
    for block, expected in zip(grads.blocks, blocks, strict=True):
        torch.testing.assert_close(block, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads.raw_gramian, reference.raw_gramian, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_tasks", [1, 2, 5])
def test_gramian_through_a_representation_matches(num_tasks: int) -> None:
    model = TwoLevelNet(num_tasks)
    x, y = regression_problem(num_tasks)
    z, losses = task_losses(model, x, y)
    rep_grads = torch.stack([torch.autograd.grad(loss, z, retain_graph=True)[0] for loss in losses])
    params = list(model.trunk.parameters())
    gramian = layerwise_gramian(z, params, rep_grads)
    assert gramian is not None
    torch.testing.assert_close(
        gramian, _reference(torch.stack(losses), params), rtol=1e-6, atol=1e-9
    )


def test_no_dependency_gives_a_zero_gramian() -> None:
    x = torch.randn(3, requires_grad=True)
    unrelated = torch.randn(2, requires_grad=True)
    losses = torch.stack([x.sum(), (2 * x).sum()])
    gramian = layerwise_gramian(losses, [unrelated], _identity(2))
    assert gramian is not None
    torch.testing.assert_close(gramian, torch.zeros(2, 2, dtype=torch.float64))


class _NoVmapRule(torch.autograd.Function):
    """Doubles its input; its backward goes through numpy, which cannot be vectorised."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x * 2

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return torch.from_numpy(grad.detach().numpy() * 2)


def test_unvectorisable_backward_returns_none_and_says_why(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import taskbalance.engine.jacobian as jacobian

    monkeypatch.setattr(jacobian, "_warned", set())  # said once per process: forget earlier
    w = torch.randn(4, requires_grad=True)
    doubled = _NoVmapRule.apply(w)
    losses = torch.stack([doubled.sum(), doubled.pow(2).sum()])
    with caplog.at_level(logging.WARNING, logger="taskbalance"):
        assert layerwise_gramian(losses, [w], _identity(2)) is None
    assert any("vectorisable backward" in r.message for r in caplog.records)


@pytest.mark.parametrize("magnitude", [1e20, 1e-20])
def test_extreme_gradients_are_left_to_the_rescaling_jacobian_path(magnitude: float) -> None:
    w = torch.ones(3, requires_grad=True)
    losses = torch.stack([(w * magnitude).sum(), (w * 2 * magnitude).sum()])
    gramian = layerwise_gramian(losses, [w], _identity(2))
    assert gramian is not None
    assert not in_safe_range(gramian)


def test_a_gradient_spike_falls_back_for_that_step_only() -> None:
    model = TwoLevelNet(3)
    x, y = regression_problem(3)
    balancer = Balancer("mgda", model.trunk.parameters(), engine="gramian")
    taken = []
    original = balancer._task_gradients

    def spy(*args: Any, **kw: Any) -> Any:
        grads, head_pass = original(*args, **kw)
        taken.append(type(grads))
        return grads, head_pass

    balancer._task_gradients = spy  # type: ignore[method-assign]
    for factor in (1e17, 1.0):  # |g|^2 ~ 1e34: beyond the float32 Gram range
        z, losses = task_losses(model, x, y)
        info = balancer.backward([loss * factor for loss in losses], representation=z)
        assert not info.skipped
    assert taken == [TaskGradients, GramianGradients]
    assert balancer._layerwise_ok


# ----------------------------------------------------------------- through the Balancer
def _step(
    method: str | Method, engine: str, *, with_representation: bool = True, **kwargs: Any
) -> tuple[list[Tensor], Any]:
    model = TwoLevelNet(4)
    x, y = regression_problem(4)
    balancer = Balancer(method, model.trunk.parameters(), engine=engine, **kwargs)  # type: ignore[arg-type]
    captured: dict[str, Any] = {}
    original = balancer._task_gradients

    def spy(*args: Any, **kw: Any) -> Any:
        grads, head_pass = original(*args, **kw)
        captured["grads"] = grads
        return grads, head_pass

    balancer._task_gradients = spy  # type: ignore[method-assign]
    z, losses = task_losses(model, x, y)
    info = balancer.backward(losses, representation=z if with_representation else None)
    grads = [p.grad.clone() if p.grad is not None else torch.zeros(0) for p in model.parameters()]
    return grads, (info, captured.get("grads"))


@pytest.mark.parametrize(
    "method", ["mgda", "upgrad", "cagrad", "nash_mtl", "imtl_g", "aligned_mtl", "fairgrad"]
)
@pytest.mark.parametrize("with_representation", [True, False])
def test_gram_methods_write_the_same_gradients_on_both_paths(
    method: str, with_representation: bool
) -> None:
    fast, (info, grads) = _step(method, "gramian", with_representation=with_representation)
    assert isinstance(grads, GramianGradients)
    plain, (plain_info, plain_grads) = _step(
        method, "jacobian", with_representation=with_representation
    )
    assert isinstance(plain_grads, TaskGradients)
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert info.weights is not None
    assert plain_info.weights is not None
    torch.testing.assert_close(info.weights, plain_info.weights, rtol=1e-6, atol=1e-9)


def test_transforms_loss_scale_and_monitor_agree_on_both_paths() -> None:
    def run(engine: str) -> list[Tensor]:
        model = TwoLevelNet(4)
        x, y = regression_problem(4)
        balancer = Balancer(
            "upgrad",
            model.trunk.parameters(),
            engine=engine,  # type: ignore[arg-type]
            transforms=[ClipPerTaskNorm(0.05), ClipGlobalNorm(0.5)],
            monitor=HealthMonitor(every=1, task_gradients=True),
        )
        for _ in range(2):
            z, losses = task_losses(model, x, y)
            balancer.backward(losses, representation=z, loss_scale=1024.0)
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    for a, b in zip(run("gramian"), run("jacobian"), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["graddrop", "gradvac", "db_mtl", "moco"])
def test_jacobian_methods_write_the_same_gradients_as_the_sequential_loop(method: str) -> None:
    def fresh() -> Method:  # stateful methods: a new instance for each run
        hparams = {"granularity": "layer"} if method == "gradvac" else {}
        return methods.create(method, **hparams)

    fast, (_, grads) = _step(fresh(), "auto")
    # the stacked Jacobian: blocks are views into it, not pieces to concatenate
    assert grads.blocks[0].data_ptr() == grads.matrix.data_ptr()
    plain, (_, loop_grads) = _step(fresh(), "auto", batched=False)
    assert loop_grads.blocks[0].data_ptr() != loop_grads.matrix.data_ptr()
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_jacobian_methods_never_take_the_gram_path() -> None:
    _, (_, grads) = _step("graddrop", "gramian")
    assert isinstance(grads, TaskGradients)


def test_auto_engine_takes_the_gram_path_only_for_a_large_jacobian() -> None:
    _, (_, grads) = _step("mgda", "auto")
    assert isinstance(grads, TaskGradients)
    small = Balancer("mgda", [torch.zeros(1000, requires_grad=True)])
    assert not small._gramian_only(7)
    assert small._gramian_only(8)  # from 8 tasks: faster than the Jacobian path, less memory
    large = Balancer("mgda", [torch.zeros(2**24, requires_grad=True)])  # 64 MiB per task
    assert not large._gramian_only(4)
    assert large._gramian_only(5)
    assert not Balancer("mgda", large.shared_params, engine="jacobian")._gramian_only(1000)


def test_unvectorisable_model_falls_back_to_the_jacobian_once() -> None:
    torch.manual_seed(0)
    trunk = nn.Linear(5, 4)
    heads = [nn.Linear(4, 1) for _ in range(3)]
    balancer = Balancer("mgda", trunk.parameters(), engine="gramian")
    x = torch.randn(8, 5)
    for _ in range(2):
        z = _NoVmapRule.apply(trunk(x))
        losses = [head(z).pow(2).mean() for head in heads]
        info = balancer.backward(losses, representation=z)
        assert not info.skipped
    assert not balancer._layerwise_ok
    assert trunk.weight.grad is not None
    assert torch.isfinite(trunk.weight.grad).all()


def test_unknown_engine_is_rejected_with_the_choices() -> None:
    with pytest.raises(ValueError, match="engine"):
        Balancer("mgda", [torch.zeros(2, requires_grad=True)], engine="gram")  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None)
@given(
    num_tasks=st.integers(1, 6),
    hidden=st.integers(1, 5),
    batch=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_gramian_and_stacked_jacobian_match_the_loop_on_random_trunks(
    num_tasks: int, hidden: int, batch: int, seed: int
) -> None:
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, hidden))
    heads = [nn.Linear(hidden, 1) for _ in range(num_tasks)]
    z = trunk(torch.randn(batch, 3))
    losses = torch.stack([head(z).pow(2).mean() for head in heads])
    params = list(trunk.parameters())
    blocks, _ = task_jacobian(losses, params, batched=False)
    reference = TaskGradients(blocks)
    gramian = layerwise_gramian(losses, params, _identity(num_tasks))
    matrix = stacked_jacobian(losses, params, _identity(num_tasks))
    assert gramian is not None
    assert matrix is not None
    torch.testing.assert_close(gramian, reference.raw_gramian, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(matrix, reference.matrix, rtol=1e-5, atol=1e-7)


def test_half_precision_rows_are_multiplied_in_float32() -> None:
    w = torch.ones(300, dtype=torch.float16, requires_grad=True)  # float16 rows reach the hook
    losses = torch.stack([(w * 60).sum(), (w * -40).sum()]).float()
    gramian = layerwise_gramian(losses, [w], _identity(2))
    assert gramian is not None  # a float16 product would overflow (300 * 3600 > 65504)
    expected = torch.tensor([[60.0**2, -2400.0], [-2400.0, 40.0**2]], dtype=torch.float64) * 300
    torch.testing.assert_close(gramian, expected)
