"""Real models' parameters: frozen parameters are skipped like torch.optim does (also when
frozen after the balancer was built), and parameters no task reaches keep ``.grad = None``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from taskbalance import Balancer


def _model() -> tuple[nn.Module, nn.ModuleList]:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Embedding(10, 8), nn.Flatten(), nn.Linear(16, 8), nn.Tanh())
    heads = nn.ModuleList([nn.Linear(8, 1) for _ in range(2)])
    return trunk, heads


def _losses(trunk: nn.Module, heads: nn.ModuleList) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = torch.randint(0, 10, (16, 2), generator=torch.Generator().manual_seed(1))
    z = trunk(x)
    return z, [head(z).pow(2).mean() + i for i, head in enumerate(heads)]


@pytest.mark.parametrize("method", ["ew", "mgda", "upgrad", "graddrop"])
@pytest.mark.parametrize("level", ["parameters", "representation"])
def test_a_frozen_embedding_is_skipped(method: str, level: str) -> None:
    trunk, heads = _model()
    trunk[0].weight.requires_grad_(False)  # frozen before the balancer is built
    balancer = Balancer(method, trunk.parameters(), level=level)  # type: ignore[arg-type]
    z, losses = _losses(trunk, heads)
    info = balancer.backward(losses, representation=z)
    assert not info.skipped
    assert trunk[0].weight.grad is None
    assert trunk[2].weight.grad is not None


@pytest.mark.parametrize("method", ["ew", "mgda", "pcgrad", "moco"])
def test_a_parameter_frozen_later_is_followed(method: str) -> None:
    trunk, heads = _model()
    balancer = Balancer(method, trunk.parameters())
    z, losses = _losses(trunk, heads)
    balancer.backward(losses, representation=z)
    assert trunk[0].weight.grad is not None
    for p in trunk.parameters():
        p.grad = None
    trunk[0].weight.requires_grad_(False)  # frozen after the first step
    if method == "moco":
        balancer.method.reset()  # its tracked gradients had the old parameter count
    z, losses = _losses(trunk, heads)
    info = balancer.backward(losses, representation=z)
    assert not info.skipped
    assert trunk[0].weight.grad is None
    assert trunk[2].weight.grad is not None


@pytest.mark.parametrize("method", ["ew", "mgda", "upgrad", "graddrop", "nash_mtl"])
def test_a_parameter_no_task_reaches_keeps_no_grad(method: str) -> None:
    trunk, heads = _model()
    unused = nn.Parameter(torch.ones(3))  # e.g. a pooler that no head reads
    balancer = Balancer(method, [*trunk.parameters(), unused])
    z, losses = _losses(trunk, heads)
    assert not balancer.backward(losses, representation=z).skipped
    assert unused.grad is None  # AdamW would otherwise decay it
    assert trunk[2].weight.grad is not None


class TwoOutputs(nn.Module):
    """Like a transformer encoder: a sequence output for a tagging head and a pooled output
    for a classification head, both shared."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(5, 8)
        self.pooler = nn.Linear(8, 8)
        self.tagger = nn.Linear(8, 3)
        self.classifier = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        sequence = torch.tanh(self.encoder(x))  # (B, L, H)
        pooled = torch.tanh(self.pooler(sequence[:, 0]))  # (B, H)
        tags = self.tagger(sequence).pow(2).mean()
        label = self.classifier(pooled).sub(1).pow(2).mean()
        return sequence, pooled, [tags, label]


def _shared(model: TwoOutputs) -> list[nn.Parameter]:
    return [*model.encoder.parameters(), *model.pooler.parameters()]


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_several_representation_tensors_at_representation_level(form: str) -> None:
    model = TwoOutputs()
    x = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(2))
    sequence, pooled, losses = model(x)
    rows = []
    for loss in losses:  # the reference: gradients w.r.t. both tensors, concatenated
        grads = torch.autograd.grad(loss, [sequence, pooled], retain_graph=True, allow_unused=True)
        full = [
            torch.zeros_like(z) if g is None else g
            for g, z in zip(grads, (sequence, pooled), strict=True)
        ]
        rows.append(torch.cat([g.reshape(-1) for g in full]))
    from taskbalance import methods
    from taskbalance.aggregate import combine_jacobian

    expected = combine_jacobian(methods.create("mgda"), torch.stack(rows)).weights
    assert expected is not None
    reps = (sequence, pooled) if form == "tuple" else {"sequence": sequence, "pooled": pooled}
    info = Balancer("mgda", _shared(model), level="representation").backward(
        losses, representation=reps
    )
    assert info.weights is not None
    torch.testing.assert_close(info.weights, expected)
    assert float(info.weights.min()) > 0  # not the all-or-nothing weights of one tensor alone
    assert all(p.grad is not None for p in _shared(model))


@pytest.mark.parametrize("method", ["mgda", "graddrop"])
def test_several_representation_tensors_at_parameter_level_change_nothing(method: str) -> None:
    model = TwoOutputs()
    x = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(2))
    _, _, losses = model(x)
    Balancer(method, _shared(model)).backward(losses)
    expected = [p.grad.clone() for p in _shared(model)]  # type: ignore[union-attr]
    model.zero_grad()
    sequence, pooled, losses = model(x)
    Balancer(method, _shared(model)).backward(losses, representation=(sequence, pooled))
    for p, g in zip(_shared(model), expected, strict=True):
        torch.testing.assert_close(p.grad, g)
