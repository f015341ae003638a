"""Gradient-health diagnoses are triggered on purpose, name the right task/layer, and stay
silent on a healthy run; the monitor reuses what the engine computed."""

import logging

import pytest
import torch
from torch import nn

from taskbalance import Balancer
from taskbalance.health import HealthMonitor, HealthThresholds
from taskbalance.models import HardSharing

THRESHOLDS = HealthThresholds(warmup_checks=5, patience=5)


def model_and_data(
    depth: int = 2, activation: type[nn.Module] = nn.Tanh, seed: int = 0
) -> tuple[HardSharing, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(8, 16), activation()]
    for _ in range(depth - 1):
        layers += [nn.Linear(16, 16), activation()]
    model = HardSharing(nn.Sequential(*layers), {"a": nn.Linear(16, 1), "b": nn.Linear(16, 1)})
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=generator)
    y = torch.tanh(x @ torch.randn(8, 1, generator=generator)).squeeze(-1)
    return model, x, y


def train(
    balancer: Balancer,
    model: HardSharing,
    x: torch.Tensor,
    targets: dict[str, torch.Tensor],
    steps: int,
    scale: dict[str, float] | None = None,
    lr: float = 1e-2,
) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        predictions = model(x)
        losses = {
            t: ((predictions[t].squeeze(-1) - targets[t]) ** 2).mean() * (scale or {}).get(t, 1.0)
            for t in targets
        }
        info = balancer.backward(losses)
        if not info.skipped:
            optimizer.step()


def kinds(monitor: HealthMonitor) -> set[tuple[str, str]]:
    return {(d.kind, d.subject) for d in monitor.diagnoses}


def test_vanishing_gradients_in_a_deep_sigmoid_trunk_name_the_early_layers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model, x, y = model_and_data(depth=12, activation=nn.Sigmoid)
    monitor = HealthMonitor(thresholds=THRESHOLDS)
    balancer = Balancer.for_model("ew", model, monitor=monitor)
    with caplog.at_level(logging.WARNING, logger="taskbalance.health"):
        train(balancer, model, x, {"a": y, "b": -y}, steps=8)
    vanishing = {subject for kind, subject in kinds(monitor) if kind == "vanishing"}
    assert "layer 'trunk.0.weight'" in vanishing
    assert "layer 'trunk.22.weight'" not in vanishing  # the last layer is fine
    assert any("trunk.0.weight" in r.message and "AGC" in r.message for r in caplog.records)


def test_an_exploding_task_gradient_is_named() -> None:
    model, x, y = model_and_data()
    monitor = HealthMonitor(thresholds=THRESHOLDS)
    balancer = Balancer.for_model("pcgrad", model, monitor=monitor)
    targets = {"a": y, "b": y * 0.5}
    train(balancer, model, x, targets, steps=10)
    train(balancer, model, x, targets, steps=1, scale={"b": 1e4}, lr=0.0)
    exploding = [d for d in monitor.diagnoses if d.kind == "exploding"]
    assert exploding
    assert exploding[0].subject == "task 'b'"
    assert "ClipPerTaskNorm" in exploding[0].remedy


def test_a_huge_learning_rate_ends_in_an_exploding_warning() -> None:
    model, x, y = model_and_data()
    monitor = HealthMonitor(thresholds=THRESHOLDS)
    balancer = Balancer.for_model("mgda", model, monitor=monitor)
    train(balancer, model, x, {"a": y, "b": y}, steps=40, lr=1e3)
    assert any(d.kind == "exploding" for d in monitor.diagnoses)


def test_a_loss_scaled_by_1e4_dominates_and_the_other_starves() -> None:
    model, x, y = model_and_data()
    monitor = HealthMonitor(task_gradients=True, thresholds=THRESHOLDS)
    balancer = Balancer.for_model("ew", model, monitor=monitor)
    train(balancer, model, x, {"a": y, "b": torch.sin(3 * y)}, steps=10, scale={"a": 1e4}, lr=1e-6)
    found = kinds(monitor)
    assert ("dominating", "task 'a'") in found
    assert ("starving", "task 'b'") in found
    assert ("dominating", "task 'b'") not in found


def same_heads(model: HardSharing) -> HardSharing:
    model.heads["b"].load_state_dict(model.heads["a"].state_dict())
    return model


def test_opposite_targets_are_a_persistent_conflict() -> None:
    model, x, y = model_and_data()
    same_heads(model)
    monitor = HealthMonitor(thresholds=THRESHOLDS)
    balancer = Balancer.for_model("pcgrad", model, monitor=monitor)
    train(balancer, model, x, {"a": y, "b": -y}, steps=12)
    assert ("conflict", "tasks 'a' and 'b'") in kinds(monitor)
    cosines = monitor.mean_cosines()
    assert cosines is not None
    assert float(cosines[0, 1]) < -0.5
    assert "conflict" in monitor.summary()


def test_a_task_with_a_zero_gradient_and_the_stall_it_causes_are_named() -> None:
    # a constant loss: its gradient is 0 from the first step, so its own baseline is 0 too
    # and the relative vanishing rule never fired; MGDA then returns the zero update (the
    # zero vector is in the hull) and training stopped without a word
    model, x, y = model_and_data()
    monitor = HealthMonitor(thresholds=THRESHOLDS, warn=False)
    balancer = Balancer.for_model("mgda", model, monitor=monitor)
    for _ in range(8):
        predictions = model(x)
        losses = {
            "a": ((predictions["a"].squeeze(-1) - y) ** 2).mean(),
            "b": predictions["b"].sum() * 0.0 + 1.0,
        }
        info = balancer.backward(losses)
        assert info.grad_norm is not None
        assert float(info.grad_norm) == 0.0
    assert ("vanishing", "task 'b'") in kinds(monitor)
    assert ("stalled", "the update") in kinds(monitor)
    assert ("vanishing", "task 'a'") not in kinds(monitor)
    assert "Pareto-stationary" in monitor.summary()


def test_a_healthy_run_emits_no_warning() -> None:
    model, x, y = model_and_data()
    monitor = HealthMonitor(task_gradients=True, thresholds=THRESHOLDS)
    balancer = Balancer.for_model("ew", model, monitor=monitor)
    train(balancer, model, x, {"a": y, "b": 0.8 * y + 0.1}, steps=60)
    assert monitor.diagnoses == []
    assert "no problem detected" in monitor.summary()
    record = monitor.records[-1]
    assert set(record["task_grad_norms"]) == {"a", "b"}
    assert record["norm_ratio"] >= 1.0
    assert 0.0 <= record["conflict_rate"] <= 1.0
    assert abs(sum(record["update_share"].values()) - 1.0) < 1e-9
    assert "trunk.0.weight" in record["layer_grad_norms"]


def test_warnings_are_rate_limited() -> None:
    model, x, y = model_and_data()
    same_heads(model)
    monitor = HealthMonitor(
        thresholds=HealthThresholds(warmup_checks=5, patience=2, repeat_every=1000)
    )
    balancer = Balancer.for_model("pcgrad", model, monitor=monitor)
    train(balancer, model, x, {"a": y, "b": -y}, steps=50)
    assert sum(d.kind == "conflict" for d in monitor.diagnoses) == 1


class Spy:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[bool, int]] = []
        original = torch.autograd.grad

        def spy(outputs, inputs, *args, **kwargs):  # type: ignore[no-untyped-def]
            self.calls.append((kwargs.get("is_grads_batched", False), outputs.numel()))
            return original(outputs, inputs, *args, **kwargs)

        monkeypatch.setattr(torch.autograd, "grad", spy)


@pytest.mark.parametrize("method", ["ew", "mgda"])
def test_the_monitor_adds_no_backward_work(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, y = model_and_data()
    calls = []
    for monitor in (None, HealthMonitor()):
        balancer = Balancer.for_model(method, model, monitor=monitor)
        spy = Spy(monkeypatch)
        predictions = model(x)
        balancer.backward({t: ((predictions[t].squeeze(-1) - y) ** 2).mean() for t in ("a", "b")})
        monkeypatch.undo()
        calls.append(spy.calls)
    assert calls[0] == calls[1]  # with a Gram-based method the monitor reuses its Gram matrix


def test_task_gradients_on_request_only_every_n_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, y = model_and_data()
    balancer = Balancer.for_model("ew", model, monitor=HealthMonitor(every=3, task_gradients=True))
    per_step = []
    for _ in range(6):
        spy = Spy(monkeypatch)
        predictions = model(x)
        info = balancer.backward(
            {t: ((predictions[t].squeeze(-1) - y) ** 2).mean() for t in ("a", "b")}
        )
        monkeypatch.undo()
        per_step.append((len(spy.calls), info.task_grad_norms is not None))
    # observed: 1 backward to the linear heads' outputs (the heads' gradients follow from
    # it, engine/linear_heads.py) + 1 batched trunk backward
    assert [n for n, _ in per_step] == [2, 1, 1, 2, 1, 1]
    assert [has for _, has in per_step] == [True, False, False, True, False, False]


def test_update_to_weight_ratios_are_recorded() -> None:
    model, x, y = model_and_data()
    monitor = HealthMonitor()
    balancer = Balancer.for_model("ew", model, monitor=monitor)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor.watch(optimizer, model.named_parameters())
    for _ in range(3):
        optimizer.zero_grad()
        predictions = model(x)
        balancer.backward({t: ((predictions[t].squeeze(-1) - y) ** 2).mean() for t in ("a", "b")})
        optimizer.step()
    ratios = monitor._update_ratios
    weight = dict(model.named_parameters())["trunk.0.weight"]
    assert 0 < ratios["trunk.0.weight"] < 1
    assert weight.grad is not None
    assert ratios["trunk.0.weight"] == pytest.approx(
        float(0.1 * weight.grad.norm() / (weight.detach() + 0.1 * weight.grad).norm()), rel=1e-4
    )


def test_monitor_state_round_trip() -> None:
    model, x, y = model_and_data()
    monitor = HealthMonitor(thresholds=THRESHOLDS)
    balancer = Balancer.for_model("pcgrad", model, monitor=monitor)
    train(balancer, model, x, {"a": y, "b": -y}, steps=4)
    restored = HealthMonitor(thresholds=THRESHOLDS)
    restored.load_state_dict(monitor.state_dict())
    assert restored.state_dict()["checks"] == 4
    torch.testing.assert_close(restored.mean_cosines(), monitor.mean_cosines())


@pytest.mark.parametrize(
    "bad",
    [
        {"patience": 0},
        {"warmup_checks": 2.5},
        {"vanishing_ratio": float("nan")},
        {"exploding_factor": 0.5},
        {"dominance_share": 0.0},
        {"starvation_fraction": 1.0},
        {"conflict_cosine": -2.0},
    ],
)
def test_thresholds_out_of_their_range_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        HealthThresholds(**bad)  # type: ignore[arg-type]
    HealthThresholds(dominance_share=1.0, starvation_fraction=0.0)  # the warnings turned off


def test_without_a_monitor_a_stalled_update_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model, x, y = model_and_data()
    balancer = Balancer.for_model("mgda", model)
    with caplog.at_level(logging.WARNING, logger="taskbalance.balancer"):
        for _ in range(3):
            predictions = model(x)
            balancer.backward(
                {
                    "a": ((predictions["a"].squeeze(-1) - y) ** 2).mean(),
                    "b": predictions["b"].sum() * 0.0 + 1.0,
                }
            )
    stalls = [r for r in caplog.records if "shared parameters is 0" in r.message]
    assert len(stalls) == 1
    assert "['b']" in stalls[0].message


@pytest.mark.parametrize(
    ("method", "case", "stalled"),
    [
        ("mgda", "zero gradient", True),
        ("imtl_g", "zero gradient", True),  # its update is ~1e-16, not exactly 0
        ("upgrad", "opposite", True),
        ("mgda", "opposite", True),
        ("nash_mtl", "zero gradient", False),
        ("cagrad", "zero gradient", False),
        ("upgrad", "zero gradient", False),
        ("mgda", "healthy", False),
        ("imtl_g", "healthy", False),
    ],
)
def test_step_info_says_when_the_methods_combination_vanished(
    method: str, case: str, stalled: bool
) -> None:
    model, x, y = model_and_data()
    balancer = Balancer.for_model(method, model)
    predictions = model(x)
    a, b = (predictions[t].squeeze(-1) for t in ("a", "b"))
    if case == "zero gradient":
        losses = {"a": ((a - y) ** 2).mean(), "b": b.sum() * 0.0 + 1.0}
    elif case == "opposite":
        losses = {"a": a.mean(), "b": -a.mean() + 0.0 * b.sum()}
    else:
        losses = {"a": ((a - y) ** 2).mean(), "b": ((b + y) ** 2).mean()}
    info = balancer.backward(losses)
    assert info.stalled is stalled
    assert info.as_dict()["stalled"] == float(stalled)  # so steps.csv shows when it happened
