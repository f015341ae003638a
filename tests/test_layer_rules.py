"""Per-layer Gram rules: the same Gram matrix as the Jacobian, without the layers' rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.nn import functional

from taskbalance import Balancer
from taskbalance.engine import gramian_of_blocks, task_jacobian
from taskbalance.engine.layer_rules import linear_weight_gramian, plan_rules
from taskbalance.engine.layerwise import layerwise_gramian

NUM_TASKS = 4


def _reference(losses: Tensor, params: list[Tensor]) -> Tensor:
    blocks, _ = task_jacobian(losses, params, batched=False)
    return gramian_of_blocks(blocks)


class Tokens(nn.Module):
    """Embedding (with padding and repeated indices) -> LayerNorm -> Linear on 3-D input."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 8, padding_idx=0)
        self.norm = nn.LayerNorm(8)
        self.linear = nn.Linear(8, 6)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.norm(self.embedding(x))).mean(1)


class Convolutional(nn.Module):
    def __init__(self, dims: int) -> None:
        super().__init__()
        conv = nn.Conv2d(3, 5, 3, padding=1) if dims == 2 else nn.Conv1d(3, 5, 3, stride=2)
        self.conv, self.norm = conv, nn.BatchNorm2d(5) if dims == 2 else nn.BatchNorm1d(5)
        self.linear = nn.LazyLinear(6)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(torch.relu(self.norm(self.conv(x))).flatten(1))


class ScaledInput(nn.Module):
    """A shared parameter below every rule layer: the rules' nodes run anyway (pre-hooks)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.mlp = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 6))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x * self.scale)


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], Tensor], set[str]]] = {
    "mlp": (
        lambda: nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh()),
        lambda: torch.randn(10, 6),
        {"LinearRule"},
    ),
    "mlp-3d-no-bias": (
        lambda: nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 8, bias=False)),
        lambda: torch.randn(3, 4, 6),
        {"LinearRule"},
    ),
    "tokens": (
        Tokens,
        lambda: torch.randint(0, 5, (4, 7)),
        {"LinearRule", "NormalizationRule", "EmbeddingRule"},
    ),
    "conv2d": (
        lambda: Convolutional(2),
        lambda: torch.randn(4, 3, 6, 6),
        {"LinearRule", "NormalizationRule", "ConvolutionRule"},
    ),
    "conv1d": (
        lambda: Convolutional(1),
        lambda: torch.randn(4, 3, 9),
        {"LinearRule", "NormalizationRule", "ConvolutionRule"},
    ),
    "scaled-input": (ScaledInput, lambda: torch.randn(8, 6), {"LinearRule"}),
}


def _losses(model: nn.Module, x: Tensor) -> Tensor:
    z = model(x)
    torch.manual_seed(1)
    heads = [nn.Linear(z.shape[-1], 1) for _ in range(NUM_TASKS)]
    return torch.stack([h(z).pow(2).mean() * (i + 1) for i, h in enumerate(heads)])


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", list(MODELS))
def test_rules_give_the_jacobian_gramian(name: str, training: bool) -> None:
    make, data, expected = MODELS[name]
    torch.manual_seed(0)
    model, x = make(), data()
    model(x)  # initialise lazy layers, move BatchNorm's running statistics off their start
    model.train(training)
    losses = _losses(model, x)
    params = list(model.parameters())
    plan = plan_rules(losses, params)
    assert {type(rule).__name__ for rule in plan.rules} == expected
    gramian = layerwise_gramian(losses, params, torch.eye(NUM_TASKS))
    assert gramian is not None
    torch.testing.assert_close(gramian, _reference(losses, params), rtol=1e-5, atol=1e-7)


def test_rule_layers_are_never_differentiated_by_autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the rules: no ``T x |p|`` rows for the covered parameters (autograd is
    never asked for their gradients)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
    losses = _losses(model, torch.randn(8, 6))
    asked: list[int] = []
    grad = torch.autograd.grad

    def recording(outputs: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        asked.extend(id(t) for t in inputs if isinstance(t, Tensor))
        return grad(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", recording)
    assert layerwise_gramian(losses, list(model.parameters()), torch.eye(NUM_TASKS)) is not None
    assert not {id(p) for p in model.parameters()} & set(asked)
    assert not plan_rules(losses, list(model.parameters())).generic


def test_a_parameter_with_a_gradient_hook_keeps_the_generic_path() -> None:
    """A hook may change the gradient (a mask): the rule, which never forms it, would not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
    losses = _losses(model, torch.randn(8, 6))
    handle = model[2].weight.register_hook(lambda g: g * 0.5)
    try:
        params = list(model.parameters())
        assert plan_rules(losses, params).generic == [2]
        expected = torch.stack(
            [
                torch.cat(
                    [g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True)]
                )
                for loss in losses
            ]
        )
        gramian = layerwise_gramian(losses, params, torch.eye(NUM_TASKS))
    finally:
        handle.remove()
    assert gramian is not None
    torch.testing.assert_close(gramian, (expected @ expected.T).double(), rtol=1e-5, atol=1e-6)
    assert not plan_rules(losses, params).generic  # (the hook removed: the rule again)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 8)
        self.other = nn.Linear(8, 8)

    def forward(self, x: Tensor) -> Tensor:
        twice = self.layer(torch.tanh(self.layer(x)))  # one layer called twice
        return twice + functional.linear(
            twice, self.other.weight
        )  # a weight used outside its module


def test_tied_and_reused_weights_keep_the_generic_path_and_stay_exact() -> None:
    torch.manual_seed(0)
    model = Tied()
    losses = _losses(model, torch.randn(10, 8))
    params = list(model.parameters())
    plan = plan_rules(losses, params)
    covered = {i for rule in plan.rules for i in rule.handled}
    # layer.weight, layer.bias (two calls) are generic; other.weight has one use, as a rule
    assert {0, 1}.isdisjoint(covered)
    gramian = layerwise_gramian(losses, params, torch.eye(NUM_TASKS))
    assert gramian is not None
    torch.testing.assert_close(gramian, _reference(losses, params), rtol=1e-5, atol=1e-7)


def test_embedding_scaled_by_frequency_is_left_to_autograd() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Embedding(10, 4, scale_grad_by_freq=True), nn.Flatten(), nn.Linear(12, 4)
    )
    losses = _losses(model, torch.tensor([[1, 1, 2], [2, 3, 1]]))
    params = list(model.parameters())
    assert {type(r).__name__ for r in plan_rules(losses, params).rules} == {"LinearRule"}
    gramian = layerwise_gramian(losses, params, torch.eye(NUM_TASKS))
    assert gramian is not None
    torch.testing.assert_close(gramian, _reference(losses, params), rtol=1e-5, atol=1e-7)


def test_autocast_bfloat16_layers_use_the_rules_within_bfloat16_accuracy() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8))
    x = torch.randn(12, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = _losses(model, x).float()
    params = list(model.parameters())
    assert len(plan_rules(losses, params).rules) == 2
    gramian = layerwise_gramian(losses, params, torch.eye(NUM_TASKS))
    assert gramian is not None
    reference = _reference(losses, params)
    # bfloat16 keeps 8 bits: entries agree to 1% of the matrix's scale (not each entry's own)
    scale = float(reference.abs().max())
    torch.testing.assert_close(gramian, reference, rtol=0, atol=1e-2 * scale)


def test_rules_off_gives_the_same_gramian() -> None:
    torch.manual_seed(0)
    model = Tokens()
    losses = _losses(model, torch.randint(0, 20, (3, 5)))
    params = list(model.parameters())
    eye = torch.eye(NUM_TASKS)
    with_rules = layerwise_gramian(losses, params, eye)
    without = layerwise_gramian(losses, params, eye, rules=False)
    assert with_rules is not None
    assert without is not None
    torch.testing.assert_close(with_rules, without, rtol=1e-5, atol=1e-8)


@settings(max_examples=40, deadline=None)
@given(
    tasks=st.integers(1, 6),
    n=st.integers(1, 12),
    fan_in=st.integers(1, 12),
    out=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_linear_weight_gramian_both_forms_equal_the_rows(
    tasks: int, n: int, fan_in: int, out: int, seed: int
) -> None:
    """Through the kernel ``x x^T`` (n < fan_in) or through the rows (n > fan_in), chunked:
    always ``<g_s^T x, g_t^T x>``."""
    generator = torch.Generator().manual_seed(seed)
    g = torch.randn(tasks, n, out, generator=generator, dtype=torch.float64)
    x = torch.randn(n, fan_in, generator=generator, dtype=torch.float64)
    rows = torch.einsum("tno,ni->toi", g, x).reshape(tasks, -1)
    torch.testing.assert_close(linear_weight_gramian(g, x), rows @ rows.T)


@pytest.mark.parametrize("method", ["upgrad", "mgda", "nash_mtl", "cagrad"])
def test_balancer_on_the_rules_writes_the_jacobian_paths_gradients(method: str) -> None:
    torch.manual_seed(0)
    grads = {}
    for engine in ("gramian", "jacobian"):
        torch.manual_seed(0)
        model = Convolutional(2)
        x = torch.randn(6, 3, 6, 6)
        model(x)
        balancer = Balancer(method, model.parameters(), engine=engine)  # type: ignore[arg-type]
        torch.manual_seed(1)
        heads = [nn.Linear(6, 1) for _ in range(3)]
        z = model(x)
        balancer.backward(
            [h(z).pow(2).mean() * (i + 1) for i, h in enumerate(heads)], representation=z
        )
        grads[engine] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    for a, b in zip(grads["gramian"], grads["jacobian"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "conv",
    [
        lambda: nn.Conv2d(4, 6, 3, padding="same"),
        lambda: nn.Conv2d(4, 6, 3, groups=2, dilation=2, stride=2),
        lambda: nn.Conv1d(4, 6, 3, padding=2, stride=2),
        lambda: nn.Conv2d(4, 6, 1, bias=False),
    ],
    ids=["same-padding", "groups-dilation-stride", "conv1d-stride", "1x1-no-bias"],
)
def test_convolution_options_keep_the_rule_exact(conv: Callable[[], nn.Module]) -> None:
    torch.manual_seed(0)
    layer = conv()
    x = torch.randn(2, 4, 7, 7) if isinstance(layer, nn.Conv2d) else torch.randn(2, 4, 9)
    model = nn.Sequential(layer, nn.Flatten())
    losses = _losses(model, x)
    params = list(model.parameters())
    assert [type(r).__name__ for r in plan_rules(losses, params).rules] == ["ConvolutionRule"]
    gramian = layerwise_gramian(losses, params, torch.eye(NUM_TASKS))
    assert gramian is not None
    torch.testing.assert_close(gramian, _reference(losses, params), rtol=1e-5, atol=1e-7)


def test_a_broadcast_bias_of_addmm_falls_back_and_stays_exact() -> None:
    """``torch.addmm(b, x, W.t())`` with a one-element ``b``: its gradient sums over every
    unit, which the linear rule does not model, so the step takes the generic path."""
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(5, 4))
    bias = nn.Parameter(torch.randn(1))
    z = torch.addmm(bias, torch.randn(6, 4), weight.t())
    losses = torch.stack([z[:, i].pow(2).mean() for i in range(NUM_TASKS)])
    gramian = layerwise_gramian(losses, [weight, bias], torch.eye(NUM_TASKS))
    assert gramian is not None
    torch.testing.assert_close(gramian, _reference(losses, [weight, bias]), rtol=1e-5, atol=1e-7)


def test_activation_checkpointing_keeps_the_rules_exact() -> None:
    """Non-reentrant checkpointing recomputes the saved tensors the rules read."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8))

    class Checkpointed(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            result: Tensor = checkpoint(trunk, x, use_reentrant=False)
            return result

    losses = _losses(Checkpointed(), torch.randn(10, 6))
    params = list(trunk.parameters())
    assert len(plan_rules(losses, params).rules) == 2
    gramian = layerwise_gramian(losses, params, torch.eye(NUM_TASKS))
    assert gramian is not None
    torch.testing.assert_close(gramian, _reference(losses, params), rtol=1e-5, atol=1e-7)


def test_a_convolution_with_more_weights_than_outputs_is_formed_in_channel_slices() -> None:
    """Here one output channel's weights outnumber a task's whole output gradient, so the
    rows are formed one output channel at a time: still the Jacobian's Gram matrix."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 6, 3), nn.Flatten())
    losses = _losses(model, torch.randn(1, 16, 3, 3))  # output (1, 6, 1, 1)
    params = list(model.parameters())
    gramian = layerwise_gramian(losses, params, torch.eye(NUM_TASKS))
    assert gramian is not None
    torch.testing.assert_close(gramian, _reference(losses, params), rtol=1e-5, atol=1e-7)
