"""AutoClip and AGC against their papers' rules."""

import io

import numpy as np
import pytest
import torch

from helpers import TwoLevelNet, regression_problem, task_losses
from taskbalance import Balancer
from taskbalance.transforms import AGC, AutoClip, AutoClipPerTask


def test_autoclip_clips_to_the_percentile_of_the_norm_history() -> None:
    transform = AutoClip(percentile=50)
    norms = [1.0, 3.0, 2.0, 10.0]
    seen: list[float] = []
    for norm in norms:
        g = torch.tensor([norm, 0.0])
        seen.append(norm)
        out = transform.apply([g], [torch.zeros(2)])[0]
        threshold = float(np.percentile(seen, 50))
        expected = norm * min(1.0, threshold / (norm + 1e-6))
        assert float(out[0]) == pytest.approx(expected, rel=1e-6)
    # the spike (10) was clipped to the running median (2.5)
    assert float(out[0]) == pytest.approx(2.5, rel=1e-5)


def test_autoclip_state_round_trip() -> None:
    transform = AutoClip(percentile=25, max_history=3)
    for norm in [1.0, 2.0, 3.0, 4.0]:
        transform.apply([torch.tensor([norm])], [torch.zeros(1)])
    buffer = io.BytesIO()
    torch.save(transform.state_dict(), buffer)
    buffer.seek(0)
    restored = AutoClip(percentile=25, max_history=3)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    spike = [torch.tensor([100.0])]
    assert torch.equal(
        restored.apply(spike, [torch.zeros(1)])[0], transform.apply(spike, [torch.zeros(1)])[0]
    )
    assert transform.state_dict()["history"].shape[0] == 3  # window


def test_autoclip_per_task_keeps_one_history_per_task() -> None:
    transform = AutoClipPerTask(percentile=50)
    for _ in range(5):
        transform.row_scale(torch.tensor([1.0, 100.0], dtype=torch.float64))
    scales = transform.row_scale(torch.tensor([10.0, 100.0], dtype=torch.float64))
    # task 0 spiked relative to its own history and is clipped; task 1 is at its usual size
    assert float(scales[0]) == pytest.approx(0.1, rel=1e-5)
    assert float(scales[1]) == pytest.approx(1.0, rel=1e-6)


def test_autoclip_per_task_in_a_balancer_clips_a_spiking_task() -> None:
    model = TwoLevelNet(2)
    x, y = regression_problem(2)
    balancer = Balancer("ew", model.trunk.parameters(), transforms=[AutoClipPerTask(percentile=50)])
    for _ in range(5):
        model.zero_grad()
        _, losses = task_losses(model, x, y)
        balancer.backward(losses)
    model.zero_grad()
    _, losses = task_losses(model, x, y)
    info = balancer.backward([losses[0] * 1000, losses[1]])
    assert info.task_scales is not None
    assert float(info.task_scales[0]) < 0.01
    assert float(info.task_scales[1]) == pytest.approx(1.0, rel=1e-4)


def test_agc_clips_each_unit_relative_to_its_weights() -> None:
    weight = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # unit norms 5 and 0 (-> eps)
    grad = torch.tensor([[0.3, 0.4], [1.0, 0.0]])  # unit norms 0.5 and 1
    bias, bias_grad = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    out_weight, out_bias = AGC(clipping=0.05, eps=1e-3).apply([grad, bias_grad], [weight, bias])
    # unit 0: 0.5 > 0.05 * 5 = 0.25 -> scaled to norm 0.25; unit 1: limit 0.05 * 1e-3
    torch.testing.assert_close(out_weight[0], grad[0] * 0.5)
    torch.testing.assert_close(out_weight[1].norm(), torch.tensor(5e-5))
    # vectors use their whole norm: 1 > 0.05 * 1 -> scaled to 0.05
    torch.testing.assert_close(out_bias, bias_grad * 0.05)
    untouched = AGC(clipping=1.0).apply([grad[:1]], [weight[:1]])[0]
    torch.testing.assert_close(untouched, grad[:1])


def test_agc_in_training_keeps_updates_proportional() -> None:
    model = TwoLevelNet(2)
    x, y = regression_problem(2)
    balancer = Balancer("ew", model.trunk.parameters(), transforms=[AGC(clipping=0.01)])
    _, losses = task_losses(model, x, y)
    balancer.backward([losses[0] * 1e6, losses[1]])
    for p in model.parameters():
        assert p.grad is not None
        if p.ndim == 2:
            ratio = p.grad.norm(dim=1) / p.detach().norm(dim=1).clamp_min(1e-3)
            assert float(ratio.max()) <= 0.01 * (1 + 1e-5)
