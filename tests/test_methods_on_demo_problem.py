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
    from taskbalance import demo

    x_train, y_train, _, _ = demo.load_digits_tasks()
    return x_train[:640], {task: y[:640] for task, y in y_train.items()}


@pytest.mark.parametrize(("name", "level"), CASES)
def test_method_trains_the_demo_problem_without_diverging(
    name: str, level: str, data: tuple[torch.Tensor, dict[str, torch.Tensor]]
) -> None:
    from taskbalance import demo

    x, targets = data
    torch.manual_seed(0)
    model = demo.DigitsMTL()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    balancer = Balancer(make_method(name, 3), model.trunk.parameters(), level=level)  # type: ignore[arg-type]

    def full_losses() -> torch.Tensor:
        with torch.no_grad():
            _, outputs = model(x)
            return torch.stack(list(demo.task_losses(outputs, targets).values()))

    initial = full_losses()
    for _ in range(3):
        for start in range(0, x.shape[0], 64):
            optimizer.zero_grad()
            z, outputs = model(x[start : start + 64])
            losses = demo.task_losses(
                outputs, {t: y[start : start + 64] for t, y in targets.items()}
            )
            info = balancer.backward(losses, representation=z, metrics=[0.5, 0.5, 0.5])
            assert not info.skipped
            optimizer.step()
        balancer.end_epoch()
    final = full_losses()
    assert torch.isfinite(final).all()
    assert float((final / initial).mean()) < 0.9, (
        f"{name}/{level}: {initial.tolist()} -> {final.tolist()}"
    )
