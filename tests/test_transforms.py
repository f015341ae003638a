"""Clipping transforms: agreement with torch's clipping, per-task semantics, composition."""

import pytest
import torch

from helpers import TwoLevelNet, regression_problem, task_losses
from taskbalance import Balancer, methods
from taskbalance.transforms import ClipGlobalNorm, ClipPerTaskNorm, ClipValue


def run(transforms: list, method: str = "ew", seed: int = 0) -> TwoLevelNet:  # type: ignore[type-arg]
    model = TwoLevelNet(3, seed=seed)
    x, y = regression_problem(3)
    _, losses = task_losses(model, x, y)
    Balancer(method, model.trunk.parameters(), transforms=transforms).backward(losses)
    return model


def test_global_norm_clipping_equals_torch_clip_grad_norm() -> None:
    reference = run([])
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05)
    clipped = run([ClipGlobalNorm(0.05)])
    for a, b in zip(clipped.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in clipped.parameters()]))  # type: ignore[union-attr]
    assert float(total) == pytest.approx(0.05, rel=1e-4)


def test_global_norm_clipping_leaves_small_gradients_alone() -> None:
    for a, b in zip(run([ClipGlobalNorm(1e6)]).parameters(), run([]).parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_value_clipping_equals_torch_clip_grad_value() -> None:
    reference = run([])
    torch.nn.utils.clip_grad_value_(reference.parameters(), 0.01)
    for a, b in zip(run([ClipValue(0.01)]).parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_per_task_clipping_clips_each_task_before_combining() -> None:
    model = TwoLevelNet(3)
    x, y = regression_problem(3)
    _, losses = task_losses(model, x, y)
    losses = [losses[0] * 100.0, losses[1], losses[2]]  # task 0 explodes
    trunk = list(model.trunk.parameters())
    rows = torch.stack(
        [
            torch.cat([g.flatten() for g in torch.autograd.grad(loss, trunk, retain_graph=True)])
            for loss in losses
        ]
    )
    norms = rows.norm(dim=1)
    max_norm = float(norms[1:].max()) * 1.01  # only task 0 is above the threshold
    factors = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
    head_grad = torch.autograd.grad(losses[0], list(model.heads[0].parameters()), retain_graph=True)
    info = Balancer("ew", trunk, transforms=[ClipPerTaskNorm(max_norm)]).backward(losses)
    written = torch.cat([p.grad.flatten() for p in trunk])  # type: ignore[union-attr]
    torch.testing.assert_close(written, rows.T @ factors, atol=1e-6, rtol=1e-5)
    assert info.task_scales is not None
    torch.testing.assert_close(info.task_scales.float(), factors)
    assert float(info.task_scales[1]) == 1.0
    assert float(info.task_scales[0]) < 0.05
    # the head of the clipped task is scaled by the same factor (consistent update)
    for p, g in zip(model.heads[0].parameters(), head_grad, strict=True):
        torch.testing.assert_close(p.grad, g * factors[0], atol=1e-6, rtol=1e-5)


def test_per_task_clipping_composes_with_gradient_methods_and_global_clipping() -> None:
    model = run([ClipPerTaskNorm(0.1), ClipGlobalNorm(0.05)], method="mgda")
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))  # type: ignore[union-attr]
    assert float(total) <= 0.05 * (1 + 1e-4)


def test_transforms_raise_the_engine_need_only_as_far_as_required() -> None:
    trunk = list(TwoLevelNet(2).trunk.parameters())
    assert Balancer("ew", trunk, transforms=[ClipGlobalNorm(1.0)]).needs == methods.get("ew").needs
    assert Balancer("ew", trunk, transforms=[ClipPerTaskNorm(1.0)]).needs > methods.get("ew").needs


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_thresholds_are_validated(bad: float) -> None:
    for cls in (ClipGlobalNorm, ClipPerTaskNorm, ClipValue):
        with pytest.raises(ValueError, match="> 0"):
            cls(bad)


def test_transform_state_round_trip() -> None:
    transform = ClipGlobalNorm(1.0)
    transform.load_state_dict(transform.state_dict())
    with pytest.raises(ValueError, match="no state"):
        transform.load_state_dict({"x": 1})
    assert "max_norm=1.0" in repr(transform)
