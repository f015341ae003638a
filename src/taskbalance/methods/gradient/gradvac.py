"""Gradient vaccine (``gradvac``)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from taskbalance.engine.needs import Need
from taskbalance.methods._validation import check_positive, check_seed
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register


def vaccinate(G: Tensor, orders: Tensor, targets: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """One GradVac pass on a Gram matrix: ``(weights, new_targets)``.

    Every ``g_i^PC = sum_k C_ik g_k`` is kept as coefficients; dot products come from
    ``C G`` and norms from ``C G C^T``, so no gradient vector is touched. Row ``i`` of
    ``orders`` lists the other tasks in the order ``i`` visits them.
    """
    num_tasks = G.shape[0]
    rows = torch.arange(num_tasks, device=G.device)
    norms = G.diagonal().clamp_min(0).sqrt()
    coefficients = torch.eye(num_tasks, dtype=G.dtype, device=G.device)
    dots = G.clone()  # C G
    targets = targets.clone()
    for position in range(orders.shape[1]):
        others = orders[:, position]
        own_norm = (dots * coefficients).sum(dim=1).clamp_min(0).sqrt()  # |g_i^PC|
        other_norm = norms[others]
        denominator = own_norm * other_norm
        valid = denominator > 0
        cosine = torch.where(valid, dots[rows, others] / torch.where(valid, denominator, 1.0), 0.0)
        cosine = cosine.clamp(-1.0, 1.0)
        target = targets[rows, others]
        sin_target = (1 - target**2).clamp_min(0).sqrt()
        apply = valid & (cosine < target) & (sin_target > 0)
        step = own_norm * (target * (1 - cosine**2).clamp_min(0).sqrt() - cosine * sin_target)
        step = step / torch.where(apply, other_norm * sin_target, 1.0)
        step = torch.where(apply, step, torch.zeros_like(step))
        coefficients[rows, others] += step
        dots += step.unsqueeze(1) * G[others]
        updated = (1 - beta) * target + beta * cosine
        targets[rows, others] = torch.where(valid, updated, target)
    return coefficients.sum(dim=0), targets


@register
class GradVac(Method):
    """Gradient Vaccine (Wang et al., ICLR 2021).

    Like PCGrad, every task ``i`` visits the other tasks ``j`` in a random order, but instead
    of only removing conflicts it pulls the cosine ``phi_ij = cos(g_i^PC, g_j)`` up to an
    adaptive target ``phi_hat_ij`` (an EMA of the observed cosines, init 0):
    if ``phi_ij < phi_hat_ij``,

    ``g_i^PC += |g_i^PC| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2))
    / (|g_j| sqrt(1 - phi_hat^2)) g_j``,

    then ``phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij``. With the initial target 0 the
    first update is PCGrad's projection. The update is ``sum_i g_i^PC``.

    ``granularity="model"`` works on the whole shared gradient through the Gram matrix;
    ``"layer"`` keeps one target per layer (per parameter tensor, or the representation) and
    vaccinates each layer's gradients separately (needs the Jacobian; returns a direction, so
    heads then get their unweighted gradients).

    Args:
        beta: EMA rate of the targets (LibMTL: 0.5).
        granularity: ``"model"`` or ``"layer"``.
        seed: seed of the visiting orders.

    Scale: sum of the vaccinated gradients (paper, LibMTL).
    """

    name = "gradvac"
    scale = "sum of vaccinated gradients"
    needs_note = 'Gram matrix (`granularity="layer"`: Jacobian)'
    family = "gradient manipulation"
    needs = Need.GRAMIAN
    homogeneity = 1.0
    reference = (
        "Wang et al., Gradient Vaccine: Investigating and Improving Multi-task Optimization "
        "in Massively Multilingual Models, ICLR 2021."
    )
    state_attributes = ("targets", "generator")

    def __init__(
        self, beta: float = 0.5, granularity: Literal["model", "layer"] = "model", seed: int = 0
    ) -> None:
        self.beta = check_positive(self.name, "beta", beta)
        if granularity not in ("model", "layer"):
            raise ValueError(
                f"gradvac: granularity must be 'model' or 'layer', got {granularity!r}"
            )
        self.granularity = granularity
        self.seed = check_seed("gradvac", seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.targets: Tensor | None = None  # (layers, T, T)
        if granularity == "layer":
            self.needs = Need.JACOBIAN  # type: ignore[misc]

    def hparams(self) -> dict[str, Any]:
        return {"beta": self.beta, "granularity": self.granularity, "seed": self.seed}

    def _orders(self, num_tasks: int) -> Tensor:
        keys = torch.rand(num_tasks, num_tasks, generator=self.generator)
        keys.fill_diagonal_(2.0)  # self goes last and is dropped
        return keys.argsort(dim=1)[:, : num_tasks - 1]

    def combine(self, ctx: Context) -> Combination:
        orders = self._orders(ctx.num_tasks)
        if self.granularity == "model":
            G = ctx.require_gramian(self.name).to(torch.float64)
            targets = self._targets(1, ctx.num_tasks, G.device)
            weights, model_targets = vaccinate(G, orders.to(G.device), targets[0], self.beta)
            self.targets = model_targets.unsqueeze(0)
            return Combination(weights=weights)
        J = ctx.require_jacobian(self.name)
        sizes = [s.numel() for s in ctx.block_shapes] or [J.shape[1]]
        targets = self._targets(len(sizes), ctx.num_tasks, J.device)
        pieces: list[Tensor] = []
        layer_targets_list: list[Tensor] = []
        for layer, block in enumerate(torch.split(J, sizes, dim=1)):
            G = block.to(torch.float64) @ block.to(torch.float64).T
            weights, layer_targets = vaccinate(G, orders.to(J.device), targets[layer], self.beta)
            pieces.append(weights.to(block.dtype) @ block)
            layer_targets_list.append(layer_targets)
        self.targets = torch.stack(layer_targets_list)
        return Combination(direction=torch.cat(pieces))

    def _targets(self, layers: int, num_tasks: int, device: torch.device) -> Tensor:
        if self.targets is None:
            return torch.zeros(layers, num_tasks, num_tasks, dtype=torch.float64, device=device)
        if self.targets.shape != (layers, num_tasks, num_tasks):
            raise ValueError(
                f"gradvac was used with {self.targets.shape[1]} tasks and {self.targets.shape[0]} "
                f"layers, now gets {num_tasks} and {layers}; call reset() to start over"
            )
        return self.targets
