"""Sparse gradients (``nn.Embedding(sparse=True)``, common in recommendation models): every
method and transform gives the update of the same model with dense gradients, and the
update is written sparse, so that ``torch.optim.SparseAdam`` can take it."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import Tensor, nn

from taskbalance import Balancer
from taskbalance.health import HealthMonitor
from taskbalance.transforms import AGC, AutoClip, ClipGlobalNorm, ClipPerTaskNorm, ClipValue
from taskbalance.transforms.base import Transform, fast_global_norm, global_norm


class EmbeddingNet(nn.Module):
    def __init__(self, num_tasks: int, *, sparse: bool) -> None:
        super().__init__()
        self.embedding = nn.Embedding(50, 8, sparse=sparse)
        self.trunk = nn.Linear(8, 8)
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(num_tasks))

    def forward(self, idx: Tensor) -> tuple[Tensor, list[Tensor]]:
        z = torch.tanh(self.trunk(self.embedding(idx)))
        return z, [head(z).squeeze(-1) for head in self.heads]

    def shared(self) -> list[nn.Parameter]:
        return [*self.embedding.parameters(), *self.trunk.parameters()]


def one_step(
    method: str, num_tasks: int, level: str, transform: Transform | None, *, sparse: bool
) -> tuple[list[Tensor | None], EmbeddingNet]:
    torch.manual_seed(0)
    net = EmbeddingNet(num_tasks, sparse=sparse)
    idx = torch.randint(0, 50, (32,))  # (repeated indices: an uncoalesced sparse gradient)
    targets = torch.randn(num_tasks, 32)
    transforms = [] if transform is None else [copy.deepcopy(transform)]
    balancer = Balancer(method, net.shared(), level=level, transforms=transforms)
    z, outputs = net(idx)
    losses = [((o - y) ** 2).mean() for o, y in zip(outputs, targets, strict=True)]
    balancer.backward(losses, representation=z)
    return [p.grad for p in net.parameters()], net


def dense(grad: Tensor | None) -> Tensor | None:
    return grad.to_dense() if grad is not None and grad.is_sparse else grad


TRANSFORMS: list[Transform | None] = [
    None,
    ClipGlobalNorm(0.1),
    ClipValue(0.01),
    AGC(0.01),
    AutoClip(10),
    ClipPerTaskNorm(0.1),
]


@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: type(t).__name__)
@pytest.mark.parametrize("level", ["parameters", "representation"])
@pytest.mark.parametrize("num_tasks", [2, 10])  # (10: the Gram-only path at parameter level)
@pytest.mark.parametrize("method", ["ew", "uw", "mgda", "pcgrad", "upgrad", "graddrop"])
def test_the_update_equals_the_dense_models(
    method: str, num_tasks: int, level: str, transform: Transform | None
) -> None:
    # the norms, the Jacobian's rows, ClipValue and AGC raised NotImplementedError /
    # "reshape is not implemented for sparse tensors" on the sparse gradient
    logging.disable(logging.WARNING)
    try:
        sparse_grads, net = one_step(method, num_tasks, level, transform, sparse=True)
        dense_grads, _ = one_step(method, num_tasks, level, transform, sparse=False)
    finally:
        logging.disable(logging.NOTSET)
    for name, a, b in zip(
        (n for n, _ in net.named_parameters()), sparse_grads, dense_grads, strict=True
    ):
        torch.testing.assert_close(dense(a), b, rtol=1e-5, atol=1e-7, msg=name)
    embedding_grad = net.embedding.weight.grad
    assert embedding_grad is not None
    assert embedding_grad.is_sparse  # as a plain backward writes it


@pytest.mark.parametrize("method", ["ew", "mgda", "upgrad"])
def test_sparse_adam_trains_with_a_balanced_update(method: str) -> None:
    # the Jacobian path wrote a dense update: "SparseAdam does not support dense gradients"
    torch.manual_seed(0)
    net = EmbeddingNet(3, sparse=True)
    monitor = HealthMonitor(every=1, warn=False)  # (its per-layer norms read the sparse update)
    balancer = Balancer(method, net.shared(), monitor=monitor)
    sparse_opt = torch.optim.SparseAdam(list(net.embedding.parameters()), lr=1e-2)
    dense_opt = torch.optim.Adam([*net.trunk.parameters(), *net.heads.parameters()], lr=1e-2)
    idx, targets = torch.randint(0, 50, (32,)), torch.randn(3, 32)
    totals = []
    for _ in range(40):
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
        _, outputs = net(idx)
        losses = [((o - y) ** 2).mean() for o, y in zip(outputs, targets, strict=True)]
        info = balancer.backward(losses)
        sparse_opt.step()
        dense_opt.step()
        totals.append(float(sum(losses).detach()))
    assert totals[-1] < 0.6 * totals[0]
    assert info.layer_grad_norms is not None
    assert bool(torch.isfinite(info.layer_grad_norms).all())


def test_norms_of_an_uncoalesced_sparse_tensor_are_its_dense_norm() -> None:
    indices = torch.tensor([[0, 0, 3]])  # row 0 twice: its entries add up
    values = torch.tensor([[3.0, 0.0], [1.0, 0.0], [0.0, 4.0]])
    sparse = torch.sparse_coo_tensor(indices, values, (5, 2), check_invariants=True)
    expected = torch.linalg.vector_norm(sparse.to_dense())  # sqrt(16 + 16)
    assert float(fast_global_norm([sparse, torch.ones(2)])) == pytest.approx(
        float(torch.linalg.vector_norm(torch.cat([expected.reshape(1), torch.ones(2)])))
    )
    assert float(global_norm([sparse])) == pytest.approx(float(expected))
    inf = torch.sparse_coo_tensor(indices, values * float("inf"), (5, 2), check_invariants=True)
    assert not bool(torch.isfinite(global_norm([inf])))


def test_clip_value_and_agc_on_sparse_gradients_equal_their_dense_rule() -> None:
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(6, 3))
    indices = torch.tensor([[1, 1, 4]])
    values = torch.tensor([[5.0, -0.2, 0.1], [1.0, 0.0, 0.0], [float("inf"), 0.3, -9.0]])
    grad = torch.sparse_coo_tensor(indices, values, (6, 3), check_invariants=True)
    for transform in (ClipValue(0.5), AGC(0.05)):
        (sparse_out,) = transform.apply([grad], [weight])
        (dense_out,) = transform.apply([grad.to_dense()], [weight])
        assert sparse_out.is_sparse
        torch.testing.assert_close(sparse_out.to_dense(), dense_out, equal_nan=True)


@pytest.mark.parametrize("level", ["parameters", "representation"])
@pytest.mark.parametrize("method", ["mgda", "upgrad", "pcgrad"])
def test_rows_looked_up_with_a_zero_gradient_are_stored_as_a_plain_backward_stores_them(
    method: str, level: str
) -> None:
    # the update made sparse again kept only its non-zero rows: a row the batch looked up
    # whose gradient is exactly 0 was not stored, so SparseAdam skipped decaying its moments
    torch.manual_seed(0)
    net = EmbeddingNet(2, sparse=True)
    idx = torch.arange(12)
    keep = (idx < 6).to(torch.float32)  # rows 6-11 are looked up, with a zero gradient
    z, outputs = net(idx)
    targets = torch.randn(2, 12)
    losses = [(keep * (o - y) ** 2).mean() for o, y in zip(outputs, targets, strict=True)]
    torch.stack(losses).sum().backward(retain_graph=True)
    plain = net.embedding.weight.grad
    assert plain is not None
    net.zero_grad(set_to_none=True)
    Balancer(method, net.shared(), level=level).backward(losses, representation=z)
    update = net.embedding.weight.grad
    assert update is not None
    assert update.is_sparse
    assert torch.equal(update.coalesce().indices(), plain.coalesce().indices())  # rows 0-11
    assert bool((update.to_dense()[6:12] == 0).all())
    torch.testing.assert_close(update.to_dense()[12:], torch.zeros(38, 8))
