"""Every method (at every level it supports) trains the demo's 3-task digits problem."""

import pytest
import torch

from properties import make_method
from taskbalance import Balancer, methods
from taskbalance.engine.needs import Need

sklearn = pytest.importorskip("sklearn")

CASES = [
    (name, level)
    for name in methods.available()
    for level in ("parameters", "representation")
    if level == "parameters"
    or (methods.get(name).needs > Need.LOSSES and methods.get(name).representation_level)
]


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from taskbalance.datasets import collate, digits

    x, targets = collate([digits().train[i] for i in range(640)])
    return x, targets


@pytest.mark.parametrize(("name", "level"), CASES)
def test_method_trains_the_demo_problem_without_diverging(
    name: str, level: str, data: tuple[torch.Tensor, dict[str, torch.Tensor]]
) -> None:
    from taskbalance import demo

    x, targets = data
    model = demo.digits_model(seed=0)
    tasks = demo.digits_tasks()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    balancer = Balancer.for_model(make_method(name, 3), model, level=level)  # type: ignore[arg-type]

    def task_losses(
        outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {t.name: t.compute_loss(outputs[t.name], labels[t.name], None) for t in tasks}  # type: ignore[misc]

    def full_losses() -> torch.Tensor:
        with torch.no_grad():
            return torch.stack(list(task_losses(model(x), targets).values()))

    initial = full_losses()
    for _ in range(3):
        for start in range(0, x.shape[0], 64):
            optimizer.zero_grad()
            outputs = model(x[start : start + 64])
            losses = task_losses(outputs, {t: y[start : start + 64] for t, y in targets.items()})
            info = balancer.backward(losses, metrics=[0.5, 0.5, 0.5])
            assert not info.skipped
            optimizer.step()
        balancer.end_epoch()
    final = full_losses()
    assert torch.isfinite(final).all()
    assert float((final / initial).mean()) < 0.9, (
        f"{name}/{level}: {initial.tolist()} -> {final.tolist()}"
    )
