"""Linear task heads (engine/linear_heads.py): one backward to the heads' outputs gives what
the per-task backwards through the heads give (rows, their Gram matrix, the weighted
objective's gradients); any other head is left to the per-task backwards."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional

import taskbalance.balancer as balancer_module
from taskbalance import Balancer
from taskbalance.engine.heads import head_backwards
from taskbalance.engine.linear_heads import LinearHeads, linear_heads

SIZES = (10, 2, 1)


def problem(
    sizes: tuple[int, ...] = SIZES, bias: bool = True, seed: int = 0, frozen_bias: int = -1
) -> tuple[nn.Module, list[nn.Linear], Tensor, Tensor, list[Tensor]]:
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 12))
    heads = [nn.Linear(12, c, bias=bias) for c in sizes]
    if frozen_bias >= 0:
        heads[frozen_bias].bias.requires_grad_(False)
    x = torch.randn(32, 6)
    targets = [torch.randint(0, c, (32,)) if c > 1 else torch.randn(32, 1) for c in sizes]
    z = trunk(x)
    losses = [
        functional.cross_entropy(h(z), t) if c > 1 else functional.mse_loss(h(z), t)
        for h, c, t in zip(heads, sizes, targets, strict=True)
    ]
    return trunk, heads, x, z, losses


def params_of(heads: list[nn.Linear]) -> list[list[Tensor]]:
    return [list(h.parameters()) for h in heads]


@pytest.mark.parametrize("bias", [True, False])
def test_linear_heads_equal_the_per_task_backwards(bias: bool) -> None:
    _, heads, _, z, losses = problem(bias=bias)
    reference = head_backwards(losses, z, params_of(heads), retain_graph=True)
    fast = linear_heads(losses, z, params_of(heads))
    assert isinstance(fast, LinearHeads)
    torch.testing.assert_close(fast.rows, reference.rows)
    flat = reference.rows.reshape(len(SIZES), -1).double()
    torch.testing.assert_close(fast.gramian().double(), flat @ flat.T, rtol=1e-5, atol=1e-7)
    factors = torch.tensor([0.5, -2.0, 3.0])
    torch.testing.assert_close(fast.combined_rows(factors), reference.combined_rows(factors))
    params, grads = fast.weighted(factors, unscale=0.25, then=4.0)
    want_params, want_grads = reference.weighted(factors, unscale=0.25)
    assert [id(p) for p in params] == [id(p) for p in want_params]
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, 4.0 * want)


def test_a_frozen_bias_is_not_a_head_parameter() -> None:
    _, heads, _, z, losses = problem(frozen_bias=1)
    own = [[p for p in h.parameters() if p.requires_grad] for h in heads]
    fast = linear_heads(losses, z, own)
    assert fast is not None
    assert [len(ps) for ps in fast.params] == [2, 1, 2]


OTHER_HEADS: dict[str, Callable[[Tensor, nn.Linear, nn.Parameter], Tensor]] = {
    "a nonlinearity before the layer": lambda z, h, p: h(torch.tanh(z)).sum(),
    "a learnable scale in the loss": lambda z, h, p: (p * h(z)).sum(),
    "z read a second way": lambda z, h, p: h(z).sum() + z.mean(),
    "the weight read a second way": lambda z, h, p: h(z).sum() + h.weight.square().sum(),
    "a batch of sequences": lambda z, h, p: h(z.view(8, 4, 12)).sum(),
    "alpha != 1": lambda z, h, p: torch.addmm(h.bias, z, h.weight.t(), alpha=2.0).sum(),
    "two layers reading z": lambda z, h, p: (h(z) + h(z)).sum(),
}


@pytest.mark.parametrize("kind", list(OTHER_HEADS))
def test_other_heads_are_left_to_the_per_task_backwards(kind: str) -> None:
    _, heads, _, z, losses = problem()
    scale = nn.Parameter(torch.tensor(1.5))
    losses[1] = OTHER_HEADS[kind](z, heads[1], scale)
    own = params_of(heads)
    if kind == "a learnable scale in the loss":
        own[1] = [*own[1], scale]
    assert linear_heads(losses, z, own) is None
    # nothing was computed: the graph is intact for the per-task backwards
    head_backwards(losses, z, own)


def _step(
    level: str, method: str, monkeypatch: pytest.MonkeyPatch, linear: bool
) -> tuple[list[Tensor], Tensor | None]:
    trunk, heads, _, z, losses = problem()
    if not linear:
        monkeypatch.setattr(balancer_module, "linear_heads", lambda *args: None)
    balancer = Balancer(method, trunk.parameters(), level=level)  # type: ignore[arg-type]
    torch.manual_seed(1)
    info = balancer.backward(losses, representation=z)
    params = [*trunk.parameters(), *(p for h in heads for p in h.parameters())]
    assert all(p.grad is not None for p in params)
    return [p.grad.clone() for p in params if p.grad is not None], info.weights


@pytest.mark.parametrize("level", ["representation", "parameters"])
@pytest.mark.parametrize("method", ["mgda", "upgrad", "pcgrad", "nash_mtl", "graddrop"])
def test_the_balancer_writes_the_same_gradients_either_way(
    level: str, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = balancer_module.linear_heads

    def spy(*args: object) -> LinearHeads | None:
        found = original(*args)  # type: ignore[arg-type]
        calls.append(found is not None)
        return found

    monkeypatch.setattr(balancer_module, "linear_heads", spy)
    fast, fast_weights = _step(level, method, monkeypatch, linear=True)
    assert calls == [True]
    slow, slow_weights = _step(level, method, monkeypatch, linear=False)
    if fast_weights is not None and slow_weights is not None:
        torch.testing.assert_close(fast_weights, slow_weights, rtol=1e-5, atol=1e-7)
    for got, want in zip(fast, slow, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
