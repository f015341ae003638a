"""One backward per head (engine/heads.py): the heads' gradients come out of the backwards
that give the representation Jacobian, so no head is traversed twice; heads that share a
computation fall back to a weighted backward. Both give the gradients of ``sum_i w_i L_i``."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tests.helpers import TwoLevelNet, regression_problem, task_losses
from torch import Tensor, nn

import taskbalance.balancer as balancer_module
from taskbalance import Balancer
from taskbalance.engine.graph import leaves_by_root, reachable_leaves
from taskbalance.engine.heads import HeadGradients, head_backwards
from taskbalance.engine.linear_heads import LinearHeads, linear_heads


class NeckNet(TwoLevelNet):
    """``TwoLevelNet`` whose heads read a shared, parameter-free neck ``tanh(z)``: the heads'
    graphs below ``z`` share a node."""

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        z = self.trunk(x)
        neck = torch.tanh(z)
        return z, [head(neck).squeeze(-1) for head in self.heads]


class SharedBiasNet(TwoLevelNet):
    """Heads that also share one extra parameter (not in the trunk, after ``z``)."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.offset = nn.Parameter(torch.tensor(0.3))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        z = self.trunk(x)
        return z, [head(z).squeeze(-1) + self.offset for head in self.heads]


def test_head_backwards_gives_each_loss_gradient_at_z_and_at_its_own_head() -> None:
    model = TwoLevelNet(3)
    x, y = regression_problem(3)
    z, losses = task_losses(model, x, y)
    unused = nn.Parameter(torch.ones(2))
    losses.append(((unused * 0.5) ** 2).sum())  # does not depend on z
    heads = [list(h.parameters()) for h in model.heads] + [[unused]]
    expected = [
        torch.autograd.grad(loss, [z, *head], retain_graph=True, allow_unused=True)
        for loss, head in zip(losses, heads, strict=True)
    ]
    result = head_backwards(losses, z, heads)
    assert result.rows.shape == (4, *z.shape)
    for i, grads in enumerate(expected):
        row = torch.zeros_like(z) if grads[0] is None else grads[0]
        torch.testing.assert_close(result.rows[i], row)
        assert [id(p) for p in result.params[i]] == [id(p) for p in heads[i]]
        for got, want in zip(result.grads[i], grads[1:], strict=True):
            torch.testing.assert_close(got, want)
    # a head parameter the loss does not reach is left out, not given a zero
    result = head_backwards(losses[:1], z, [[*heads[0], unused]])
    assert [[id(p) for p in ps] for ps in result.params] == [[id(p) for p in heads[0]]]
    with pytest.raises(ValueError, match="2 heads for 1 losses"):
        head_backwards(losses[:1], z, heads[:2])


def test_weighted_heads_are_the_gradients_of_the_weighted_objective() -> None:
    model = TwoLevelNet(3)
    x, y = regression_problem(3)
    z, losses = task_losses(model, x, y)
    heads = [list(h.parameters()) for h in model.heads]
    factors = torch.tensor([0.5, -2.0, 3.0])
    objective = (factors * torch.stack(losses)).sum()
    every_head = [p for head in heads for p in head]
    expected_heads = torch.autograd.grad(objective, every_head, retain_graph=True)
    (expected_z,) = torch.autograd.grad(objective, z, retain_graph=True)
    result = head_backwards(losses, z, heads)
    params, grads = result.weighted(factors, unscale=0.25)
    assert [id(p) for p in params] == [id(p) for p in every_head]
    for got, want in zip(grads, expected_heads, strict=True):
        torch.testing.assert_close(got, 0.25 * want)
    torch.testing.assert_close(result.combined_rows(factors), expected_z)
    empty = HeadGradients(result.rows[:0], [], [])
    assert empty.weighted(factors[:0]) == ([], [])


def test_leaves_by_root_tells_disjoint_heads_from_shared_computation() -> None:
    x, y = regression_problem(3)
    for net, disjoint in ((TwoLevelNet(3), True), (NeckNet(3), False), (SharedBiasNet(3), False)):
        z, losses = task_losses(net, x, y)
        per_task, separate = leaves_by_root(losses, stop_at=z)
        assert separate is disjoint, type(net).__name__
        joint = reachable_leaves(losses, stop_at=z)
        union = list({id(p): p for ps in per_task for p in ps}.values())
        assert [id(p) for p in union] == [id(p) for p in joint]
        for head, leaves in zip(net.heads, per_task, strict=True):
            assert {id(p) for p in head.parameters()} <= {id(p) for p in leaves}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per head pass of the balancer: a call of ``head_backwards``, or linear heads
    recognised by ``linear_heads`` (one backward to the heads' outputs instead)."""
    made: list[int] = []

    def spy(*args: Any, **kwargs: Any) -> HeadGradients:
        made.append(1)
        return head_backwards(*args, **kwargs)

    def linear_spy(*args: Any, **kwargs: Any) -> LinearHeads | None:
        found = linear_heads(*args, **kwargs)
        if found is not None:
            made.append(1)
        return found

    monkeypatch.setattr(balancer_module, "head_backwards", spy)
    monkeypatch.setattr(balancer_module, "linear_heads", linear_spy)
    return made


def _assert_gradients_of_the_weighted_objective(
    net: TwoLevelNet, x: Tensor, y: Tensor, weights: Tensor
) -> None:
    """The written ``.grad`` are the gradients of ``sum_i w_i L_i`` (recomputed: nothing
    was stepped)."""
    _, losses = task_losses(net, x, y)
    objective = (weights.to(torch.float32) * torch.stack(losses)).sum()
    expected = torch.autograd.grad(objective, list(net.parameters()))
    for p, want in zip(net.parameters(), expected, strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("net_type", [TwoLevelNet, NeckNet, SharedBiasNet])
@pytest.mark.parametrize("level", ["parameters", "representation"])
def test_gradients_of_the_weighted_objective_with_or_without_disjoint_heads(
    net_type: type[TwoLevelNet], level: str, calls: list[int]
) -> None:
    net = net_type(3)
    x, y = regression_problem(3)
    z, losses = task_losses(net, x, y)
    balancer = Balancer("mgda", net.trunk.parameters(), level=level)  # type: ignore[arg-type]
    info = balancer.backward(losses, representation=z)
    assert info.weights is not None
    # disjoint heads: the heads' gradients come from their per-task backwards; heads that
    # share a node or a parameter: the weighted objective's backward
    assert calls == ([1] if net_type is TwoLevelNet else [])
    _assert_gradients_of_the_weighted_objective(net, x, y, info.weights)


def test_the_heads_saved_tensors_are_freed_by_the_step() -> None:
    net = TwoLevelNet(2)
    x, y = regression_problem(2)
    z, losses = task_losses(net, x, y)
    Balancer("mgda", net.trunk.parameters(), level="representation").backward(
        losses, representation=z
    )
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        losses[0].backward()


def test_the_gram_path_frees_the_trunk_with_its_last_backward() -> None:
    # parameter level, Gram-only engine, the trunk reached through z: J^T w is the last
    # backward below z, so it frees the trunk's saved tensors as a plain backward would (the
    # graph would otherwise live on until the next forward, doubling activation memory)
    net = TwoLevelNet(3)
    x, y = regression_problem(3)
    z, losses = task_losses(net, x, y)
    info = Balancer("mgda", net.trunk.parameters(), engine="gramian").backward(
        losses, representation=z
    )
    assert info.weights is not None
    assert not info.skipped
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        z.sum().backward()


@pytest.mark.parametrize("batched", [True, False])
def test_the_jacobian_path_frees_the_trunk_once_its_backward_is_known_to_vectorise(
    batched: bool,
) -> None:
    # the vmap backward frees the graph only after it has run once without failing (a
    # failure part-way would leave nothing for the sequential fallback); the sequential
    # loop frees it with its last row from the first step
    net = TwoLevelNet(3)
    x, y = regression_problem(3)
    balancer = Balancer("graddrop", net.trunk.parameters(), batched=batched)
    held = []
    for _ in range(2):
        z, losses = task_losses(net, x, y)
        assert not balancer.backward(losses, representation=z).skipped
        held.append(_graph_still_held(z))
    assert held == ([True, False] if batched else [False, False])


def _graph_still_held(z: Tensor) -> bool:
    """Whether the graph below ``z`` can still be traversed (its saved tensors kept)."""
    try:
        z.sum().backward()
    except RuntimeError as error:
        if "second time" not in str(error):
            raise
        return False
    return True


@pytest.mark.parametrize("net_type", [TwoLevelNet, NeckNet, SharedBiasNet])
@pytest.mark.parametrize("engine", ["jacobian", "gramian"])
def test_without_a_representation_the_step_frees_the_graph_and_is_exact(
    net_type: type[TwoLevelNet], engine: str, calls: list[int]
) -> None:
    # no representation given: each task's own parameters are taken first (where no task
    # parameter is reached by two tasks), so the batched backward over the stacked losses is
    # the graph's last and frees it (Jacobian path: once it is known to vectorise); the Gram
    # path's J^T w and the heads' gradients are one backward of the weighted objective
    net = net_type(3)
    x, y = regression_problem(3)
    balancer = Balancer("mgda", net.trunk.parameters(), engine=engine)  # type: ignore[arg-type]
    held = []
    for _ in range(2):
        for p in net.parameters():
            p.grad = None
        z, losses = task_losses(net, x, y)
        info = balancer.backward(losses)
        assert info.weights is not None
        _assert_gradients_of_the_weighted_objective(net, x, y, info.weights)
        held.append(_graph_still_held(z))  # (a held graph's backward adds to .grad: last)
    own_heads = net_type is not SharedBiasNet
    if engine == "gramian":
        assert held == [False, False]
        assert calls == []
    else:
        assert held == ([True, False] if own_heads else [True, True])
        assert calls == ([1, 1] if own_heads else [])


def test_leaves_by_root_without_a_stop_gives_every_leaf_each_loss_reaches() -> None:
    net = TwoLevelNet(2)
    x, y = regression_problem(2)
    _, losses = task_losses(net, x, y)
    per_task, disjoint = leaves_by_root(losses)
    assert not disjoint  # the trunk is reached from both
    trunk = {id(p) for p in net.trunk.parameters()}
    for head, leaves in zip(net.heads, per_task, strict=True):
        assert {id(p) for p in leaves} == trunk | {id(p) for p in head.parameters()}


class StructuresNet(nn.Module):
    """Heads that read the representation in awkward ways: a slice view of ``z`` (head 1),
    and for head 2 one of: ``plain`` (its own linear layer), ``twice`` (the same layer on
    ``z`` and ``2z``), ``cross`` (adds task 0's head output), ``double`` (a float64 layer
    on ``z.double()``), ``nohead`` (a parameter-free function of ``z``)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.trunk = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(8, 1), nn.Linear(5, 1), nn.Linear(8, 1)])
        self.wide = nn.Linear(8, 1).double()

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        z = self.trunk(x)
        first = self.heads[0](z)
        second = self.heads[1](z[:, :5])
        third = {
            "plain": lambda: self.heads[2](z),
            "twice": lambda: self.heads[2](z) + self.heads[2](z * 2),
            "cross": lambda: self.heads[2](z) + 0.1 * first,
            "double": lambda: self.wide(z.double()).float(),
            "nohead": lambda: z.mean(dim=1, keepdim=True),
        }[self.kind]()
        return z, [first, second, third]


def _structure_losses(net: StructuresNet, x: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
    z, outputs = net(x)
    return z, [((out.squeeze(-1) - y[:, i]) ** 2).sum() for i, out in enumerate(outputs)]


@pytest.mark.parametrize("kind", ["plain", "twice", "cross", "double", "nohead"])
@pytest.mark.parametrize(
    ("level", "with_representation"),
    [("parameters", True), ("parameters", False), ("representation", True)],
)
@pytest.mark.parametrize("method", ["mgda", "graddrop"])
def test_awkward_heads_get_the_gradients_of_the_combination(
    kind: str, level: str, with_representation: bool, method: str
) -> None:
    net = StructuresNet(kind)
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    z, losses = _structure_losses(net, x, y)
    balancer = Balancer(method, net.trunk.parameters(), level=level)  # type: ignore[arg-type]
    info = balancer.backward(losses, representation=z if with_representation else None)
    assert not info.skipped
    written = {id(p): p.grad for p in net.parameters()}
    _, losses = _structure_losses(net, x, y)
    if info.weights is not None:  # every parameter: the gradient of sum_i w_i L_i
        params = list(net.parameters())
        objective = (info.weights.to(torch.float32) * torch.stack(losses)).sum()
    else:  # a direction (GradDrop): the heads get the unweighted sum of their losses
        params = [p for p in net.parameters() if all(p is not q for q in net.trunk.parameters())]
        objective = torch.stack(losses).sum()
    expected = torch.autograd.grad(objective, params, allow_unused=True)
    for p, want in zip(params, expected, strict=True):
        got = written[id(p)]
        assert (got is None) == (want is None)
        if got is not None and want is not None:
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
