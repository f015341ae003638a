"""Every method really trains a small multi-task problem (both gradient levels)."""

import pytest
import torch

from helpers import TwoLevelNet, regression_problem, task_losses
from properties import make_method
from taskbalance import Balancer, methods
from taskbalance.engine.needs import Need
from taskbalance.transforms import ClipGlobalNorm, ClipPerTaskNorm

CASES = [(name, "parameters") for name in methods.available()] + [
    (name, "representation")
    for name in methods.available()
    if methods.get(name).needs > Need.LOSSES and methods.get(name).representation_level
]


@pytest.mark.parametrize(("name", "level"), CASES)
def test_method_reduces_every_task_loss(name: str, level: str) -> None:
    torch.manual_seed(0)
    num_tasks = 3
    model = TwoLevelNet(num_tasks, hidden=16)
    x, y = regression_problem(num_tasks, n=64)
    balancer = Balancer(make_method(name, num_tasks), model.trunk.parameters(), level=level)  # type: ignore[arg-type]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    with torch.no_grad():
        initial = torch.stack(task_losses(model, x, y)[1])
    for _ in range(150):
        optimizer.zero_grad()
        z, losses = task_losses(model, x, y)
        info = balancer.backward(losses, representation=z, metrics=[0.5, 0.5, 0.5])
        assert not info.skipped
        optimizer.step()
    with torch.no_grad():
        final = torch.stack(task_losses(model, x, y)[1])
    assert torch.all(final < 0.5 * initial), (
        f"{name}/{level}: {initial.tolist()} -> {final.tolist()}"
    )


def test_training_with_clipping_transforms_learns() -> None:
    torch.manual_seed(0)
    model = TwoLevelNet(2, hidden=16)
    x, y = regression_problem(2, n=64)
    balancer = Balancer(
        "pcgrad", model.trunk.parameters(), transforms=[ClipPerTaskNorm(0.5), ClipGlobalNorm(1.0)]
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    first = None
    for _ in range(200):
        optimizer.zero_grad()
        _, losses = task_losses(model, x, y)
        info = balancer.backward(losses)
        first = first if first is not None else info.losses.sum()
        optimizer.step()
    assert float(info.losses.sum()) < 0.5 * float(first)
