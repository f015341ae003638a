"""The gradient engine against a naive per-task autograd loop."""

import logging

import pytest
import torch
from torch._C._functorch import is_batchedtensor

import taskbalance.balancer as balancer_module
from helpers import TwoLevelNet, regression_problem, task_losses
from taskbalance import Balancer, methods
from taskbalance.engine import TaskGradients, gramian_of_blocks, task_jacobian


def naive_rows(losses: list[torch.Tensor], inputs: list[torch.Tensor]) -> torch.Tensor:
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(x) if g is None else g).flatten()
                    for g, x in zip(grads, inputs, strict=True)
                ]
            )
        )
    return torch.stack(rows)


@pytest.mark.parametrize("num_tasks", [1, 2, 5])
@pytest.mark.parametrize("level", ["parameters", "representation"])
def test_jacobian_and_gramian_match_the_naive_loop(num_tasks: int, level: str) -> None:
    model = TwoLevelNet(num_tasks).double()
    x, y = regression_problem(num_tasks)
    z, losses = task_losses(model, x.double(), y.double())
    inputs = list(model.trunk.parameters()) if level == "parameters" else [z]
    expected = naive_rows(losses, inputs)
    blocks, batched = task_jacobian(torch.stack(losses), inputs)
    assert batched
    grads = TaskGradients(blocks)
    torch.testing.assert_close(grads.matrix, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grads.gramian, expected @ expected.T, atol=1e-6, rtol=1e-6)
    sequential, batched = task_jacobian(torch.stack(losses), inputs, batched=False)
    assert not batched
    torch.testing.assert_close(TaskGradients(sequential).matrix, expected, atol=1e-6, rtol=1e-6)


def test_unused_inputs_get_zero_rows() -> None:
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(2, requires_grad=True)
    losses = torch.stack([a.sum(), (a**2).sum()])
    blocks, _ = task_jacobian(losses, [a, b])
    assert torch.equal(blocks[1], torch.zeros(2, 2))


@pytest.mark.parametrize("scale", [1e-20, 1e-12, 1.0, 1e12, 1e20])
def test_gramian_survives_extreme_scales(scale: float) -> None:
    torch.manual_seed(0)
    J = torch.randn(4, 50)
    exact = (J.double() @ J.double().T) * scale**2
    G = gramian_of_blocks([J[:, :20] * scale, J[:, 20:] * scale])
    assert G.dtype == torch.float64
    assert torch.isfinite(G).all()
    torch.testing.assert_close(G, exact, rtol=1e-5, atol=0)


def test_row_scaling_is_lazy_and_consistent() -> None:
    torch.manual_seed(1)
    J = torch.randn(3, 10, dtype=torch.float64)
    s = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    grads = TaskGradients([J]).scale_rows(s)
    scaled = s.unsqueeze(1) * J
    torch.testing.assert_close(grads.gramian, scaled @ scaled.T)
    torch.testing.assert_close(grads.matrix, scaled)
    w = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(grads.combine(w)[0], scaled.T @ w)
    torch.testing.assert_close(grads.norms(), J.norm(dim=1))


class ItemInBackward(torch.autograd.Function):
    """Identity whose backward reads a Python number: not batchable by vmap."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad * (1.0 + 0.0 * float(grad.sum()))


def test_falls_back_to_a_loop_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    x = torch.randn(4, requires_grad=True)
    y = ItemInBackward.apply(x * 2.0)
    losses = torch.stack([y.sum(), (y**2).sum(), y[0] * 3])
    expected = naive_rows(list(losses.unbind()), [x])
    with caplog.at_level(logging.WARNING, logger="taskbalance"):
        blocks, batched = task_jacobian(losses, [x])
    assert not batched
    assert any("falling back" in r.message for r in caplog.records)
    torch.testing.assert_close(TaskGradients(blocks).matrix, expected)


class AutogradSpy:
    """Records every torch.autograd.grad call: was it batched, how many outputs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[dict[str, object]] = []
        original = torch.autograd.grad

        def spy(outputs, inputs, *args, **kwargs):  # type: ignore[no-untyped-def]
            grad_outputs = kwargs.get("grad_outputs")
            vmapped = isinstance(grad_outputs, torch.Tensor) and is_batchedtensor(grad_outputs)
            batched = kwargs.get("is_grads_batched", False) or vmapped
            self.calls.append({"batched": batched, "numel": outputs.numel()})
            return original(outputs, inputs, *args, **kwargs)

        monkeypatch.setattr(torch.autograd, "grad", spy)


@pytest.mark.parametrize("name", ["ew", "fixed", "loss_ratio", "metric_weighting"])
def test_loss_weighting_runs_exactly_one_ordinary_backward(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = TwoLevelNet(3)
    x, y = regression_problem(3)
    hparams = {"weights": [1.0, 2.0, 3.0]} if name == "fixed" else {}
    balancer = Balancer(methods.create(name, **hparams), model.trunk.parameters())
    spy = AutogradSpy(monkeypatch)
    _, losses = task_losses(model, x, y)
    info = balancer.backward(losses)
    # (the stacked losses, with the weights as their output gradient: one vector-Jacobian
    # product, the backward of sum_i w_i L_i without forming it)
    assert spy.calls == [{"batched": False, "numel": 3}]
    assert info.task_grad_norms is None
    assert info.cosines is None


@pytest.mark.parametrize("name", ["ew", "fixed"])
def test_loss_weights_fed_as_the_losses_output_gradient_are_neither_changed_nor_misapplied(
    name: str,
) -> None:
    """The weights are the cotangent of the stacked losses: a loss listed several times gets
    its gradient accumulated from several of their entries, which must not write into them,
    nor into the weights a later ``update_every`` step reuses."""
    model = TwoLevelNet(2)
    x, y = regression_problem(2)
    hparams = {"weights": [1.0, 2.0, 3.0, 0.5]} if name == "fixed" else {}
    balancer = Balancer(methods.create(name, **hparams), model.trunk.parameters(), update_every=2)
    weights = [1.0, 1.0, 1.0, 1.0] if name == "ew" else hparams["weights"]
    for step in range(3):  # computed, reused, computed
        model.zero_grad(set_to_none=True)
        _, (a, b) = task_losses(model, x, y)
        info = balancer.backward([a, b, a, a])
        assert info.reused_weights == (step == 1)
        assert info.weights is not None
        assert info.weights.tolist() == weights
        written = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad(set_to_none=True)
        _, (a, b) = task_losses(model, x, y)
        ((weights[0] + weights[2] + weights[3]) * a + weights[1] * b).backward()
        expected = [p.grad for p in model.parameters() if p.grad is not None]
        assert len(written) == len(expected)
        for got, want in zip(written, expected, strict=True):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("engine", ["jacobian", "gramian"])
def test_gradient_methods_call_autograd_at_the_cost_floor_of_each_level(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    num_tasks = 4
    model = TwoLevelNet(num_tasks)
    x, y = regression_problem(num_tasks)
    head_only = {"batched": False, "numel": 1}

    def calls(level: str, with_representation: bool) -> list[dict[str, object]]:
        balancer = Balancer(
            "mgda",
            model.trunk.parameters(),
            level=level,  # type: ignore[arg-type]
            engine=engine,  # type: ignore[arg-type]
        )
        spy = AutogradSpy(monkeypatch)
        z, losses = task_losses(model, x, y)
        balancer.backward(losses, representation=z if with_representation else None)
        monkeypatch.undo()
        return spy.calls

    z_numel = 32 * 8
    # representation level: the heads are linear layers, so one backward of the stacked
    # losses to the heads' outputs gives every dL_i/dy_i (engine/linear_heads.py), then one
    # backward from z of sum_i w_i dL_i/dz through the trunk; no head is traversed twice
    to_head_outputs = {"batched": False, "numel": num_tasks}
    trunk_from_z = {"batched": False, "numel": z_numel}
    assert calls("representation", True) == [to_head_outputs, trunk_from_z]
    # parameter level with the representation: the same backward to the heads' outputs, the
    # T rows dL_i/dz carried through the trunk in one batched backward; the Gram path needs
    # one more ordinary backward through the trunk for J^T w (the Jacobian is not kept)
    combine_trunk = [trunk_from_z] if engine == "gramian" else []
    assert calls("parameters", True) == [
        to_head_outputs,
        {"batched": True, "numel": z_numel},
        *combine_trunk,
    ]
    # heads that are not one linear layer (the fast path switched off here): one backward
    # per head, to z and to the head's own parameters
    monkeypatch.setattr(balancer_module, "linear_heads", lambda *args: None)
    assert calls("representation", True) == [head_only] * num_tasks + [trunk_from_z]
    # parameter level without it: one batched backward of the stacked losses. Jacobian
    # path: each head's own gradient first (one small backward each), so that the batched
    # backward is the graph's last; Gram path: J^T w and the heads' gradients are one
    # ordinary backward of sum_i w_i L_i (of the stacked losses, w as their output gradient)
    if engine == "gramian":
        expected = [{"batched": True, "numel": num_tasks}, to_head_outputs]
    else:
        expected = [head_only] * num_tasks + [{"batched": True, "numel": num_tasks}]
    assert calls("parameters", False) == expected


def test_shared_parameters_bypassing_the_representation_are_handled_exactly() -> None:
    model = TwoLevelNet(3)
    x, y = regression_problem(3)
    bias = model.trunk[0].bias
    shared = list(model.trunk.parameters())

    def losses_of() -> tuple[torch.Tensor, list[torch.Tensor]]:
        z, losses = task_losses(model, x, y)
        return z, [loss + (i + 1) * bias.sum() ** 2 for i, loss in enumerate(losses)]  # bypasses z

    z, losses = losses_of()
    expected = naive_rows(losses, shared)
    info = Balancer("mgda", shared).backward(losses, representation=z)
    assert info.task_grad_norms is not None
    torch.testing.assert_close(
        info.task_grad_norms, expected.double().norm(dim=1), rtol=1e-5, atol=1e-7
    )
