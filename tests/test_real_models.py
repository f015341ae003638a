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
