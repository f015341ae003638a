"""Small models and problems shared by the tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TwoLevelNet(nn.Module):
    """Shared MLP trunk + one linear head per task; ``forward`` returns (features, outputs)."""

    def __init__(self, num_tasks: int, in_dim: int = 6, hidden: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden))
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(num_tasks))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        z = self.trunk(x)
        return z, [head(z).squeeze(-1) for head in self.heads]


def regression_problem(
    num_tasks: int, n: int = 32, in_dim: int = 6, seed: int = 0
) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_dim, generator=generator)
    w = torch.randn(in_dim, num_tasks, generator=generator)
    return x, torch.tanh(x @ w)


def task_losses(model: TwoLevelNet, x: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
    z, outputs = model(x)
    return z, [((out - y[:, i]) ** 2).mean() for i, out in enumerate(outputs)]


def float32_gramian(J: Tensor) -> Tensor:
    """The Gram matrix as the engine computes it, in float32 (returned in float64):
    indefinite at ~1e-7 of its scale when there are more tasks than dimensions."""
    return (J.to(torch.float32) @ J.to(torch.float32).T).to(torch.float64)


class _InfGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:
        return torch.full_like(grad, float("inf"))


def overflowing_gradient(x: Tensor) -> Tensor:
    """``x`` itself, whose backward overflows: every entry of the gradient flowing back through
    it is ``inf`` (what a float16 backward that overflowed produces)."""
    out: Tensor = _InfGradient.apply(x)  # type: ignore[no-untyped-call]
    return out
