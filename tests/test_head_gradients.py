"""Representation level: each head's gradient comes from its own task's backward (no second
pass through the heads); the update equals the one from a backward of the weighted losses."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

import taskbalance.balancer as balancer_module
from taskbalance import Balancer
from taskbalance.transforms import ClipPerTaskNorm

NUM_TASKS = 4


class Heads(nn.Module):
    def __init__(self, shared_head: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8))
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 1)) for _ in range(NUM_TASKS)
        )
        self.common = nn.Linear(1, 1) if shared_head else None

    def losses(self, x: Tensor, y: Tensor) -> tuple[list[Tensor], Tensor]:
        z = self.trunk(x)
        outputs = [head(z) for head in self.heads]
        if self.common is not None:  # one parameter read by every task: no per-task heads
            outputs = [self.common(o) for o in outputs]
        return [((o.squeeze(-1) - y[:, i]) ** 2).mean() * (i + 1) for i, o in enumerate(outputs)], z


def _grads(
    method: str, reuse: bool, monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> list[Tensor]:
    found: list[object] = []
    original = balancer_module._own_heads

    def own_heads(per_task: Any, params: Any) -> Any:
        found.append(original(per_task, params) if reuse else None)
        return found[-1]

    monkeypatch.setattr(balancer_module, "_own_heads", own_heads)
    model = Heads(kwargs.pop("shared_head", False))
    balancer = Balancer(method, model.trunk.parameters(), level="representation", **kwargs)
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):  # a second step: stateful methods see their state
        for p in model.parameters():
            p.grad = None
        x, y = (
            torch.randn(12, 6, generator=generator),
            torch.randn(12, NUM_TASKS, generator=generator),
        )
        losses, z = model.losses(x, y)
        balancer.backward(losses, representation=z)
    monkeypatch.undo()
    assert all((heads is not None) == reuse for heads in found), found
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize(
    "method", ["mgda", "upgrad", "nash_mtl", "imtl_g", "pcgrad", "cagrad", "gradvac", "graddrop"]
)
@pytest.mark.parametrize("clip", [False, True])
def test_head_gradients_from_the_per_task_pass_equal_the_weighted_backward(
    method: str, clip: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    transforms = [ClipPerTaskNorm(0.05)] if clip else []
    torch.manual_seed(0)
    new = _grads(method, True, monkeypatch, transforms=transforms)
    torch.manual_seed(0)
    old = _grads(method, False, monkeypatch, transforms=transforms)
    for a, b in zip(new, old, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_a_parameter_read_by_every_task_takes_the_weighted_backward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[object] = []
    original = balancer_module._own_heads

    def spy(per_task: Any, params: Any) -> Any:
        result = original(per_task, params)
        calls.append(result)
        return result

    monkeypatch.setattr(balancer_module, "_own_heads", spy)
    model = Heads(shared_head=True)
    balancer = Balancer("mgda", model.trunk.parameters(), level="representation")
    losses, z = model.losses(torch.randn(12, 6), torch.randn(12, NUM_TASKS))
    balancer.backward(losses, representation=z)
    assert calls == [None]
    assert model.common is not None
    assert model.common.weight.grad is not None


def test_loss_scale_is_undone_on_the_head_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    scaled = _grads("mgda", True, monkeypatch)
    model = Heads()
    balancer = Balancer("mgda", model.trunk.parameters(), level="representation")
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):
        for p in model.parameters():
            p.grad = None
        x, y = (
            torch.randn(12, 6, generator=generator),
            torch.randn(12, NUM_TASKS, generator=generator),
        )
        losses, z = model.losses(x, y)
        balancer.backward(losses, representation=z, loss_scale=1024.0)
    for a, p in zip(scaled, model.parameters(), strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, a, rtol=1e-5, atol=1e-7)
