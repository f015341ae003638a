"""GradNorm: gradient normalisation for adaptive loss balancing (``gradnorm``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from taskbalance.engine.needs import Need
from taskbalance.methods._adam import AdamState, adam_step
from taskbalance.methods._validation import check_positive
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register
from taskbalance.methods.weighting._losses import non_negative_losses

_FLOOR = 1e-4


@register
class GradNorm(Method):
    """GradNorm (Chen et al., ICML 2018).

    Learns task weights ``w`` (init 1) so that the weighted gradient norms
    ``G_i = w_i |g_i|`` follow a common target set by each task's relative training rate:

    ``L_grad = sum_i |G_i - mean_j(G_j) r_i^alpha|``,
    ``r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0))``,

    with the target held constant. Its gradient ``dL_grad/dw_i = sign(G_i - target_i) |g_i|``
    drives one step of the method's own Adam (so the user's optimizer never weight-decays
    ``w``), after which ``w`` is clipped at 1e-4 and renormalised to sum to ``T``. ``L(0)`` is
    the first step's losses. The step uses the weights from before the update.

    ``|g_i|`` come from the Gram matrix diagonal: use ``level="representation"`` (gradients of
    the shared features, the cheap variant; the paper uses the last shared layer) or parameter
    level for all shared parameters.

    Args:
        alpha: restoring-force strength (paper: 1.5).
        lr: learning rate of the internal Adam on ``w``.

    Scale: weights sum to ``T`` (paper).
    """

    name = "gradnorm"
    scale = "weights sum to T"
    needs_note = 'Gram diagonal + losses (use `level="representation"`)'
    family = "gradient manipulation"
    needs = Need.GRAMIAN
    reference = (
        "Chen et al., GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep "
        "Multitask Networks, ICML 2018."
    )
    state_attributes = ("task_weights", "initial_losses", "adam")

    def __init__(self, alpha: float = 1.5, lr: float = 0.025) -> None:
        self.alpha = check_positive(self.name, "alpha", alpha, allow_zero=True)
        self.lr = check_positive(self.name, "lr", lr)
        self.task_weights: Tensor | None = None
        self.initial_losses: Tensor | None = None
        self.adam: AdamState | None = None

    def hparams(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "lr": self.lr}

    def combine(self, ctx: Context) -> Combination:
        G = ctx.require_gramian(self.name).to(torch.float64)
        # the inverse training rate L_i(t) / L_i(0) reads a negative loss's progress backwards
        losses = non_negative_losses(ctx, self.name).to(G.device)
        num_tasks = ctx.num_tasks
        if self.task_weights is None or self.initial_losses is None or self.adam is None:
            self.task_weights = torch.ones(num_tasks, dtype=torch.float64, device=G.device)
            self.initial_losses = losses.clone()
            self.adam = AdamState.zeros_like(self.task_weights)
        elif self.task_weights.shape != (num_tasks,):
            raise ValueError(
                f"gradnorm was used with {self.task_weights.numel()} tasks, now gets {num_tasks}; "
                "call reset() to start over"
            )
        weights = self.task_weights
        norms = G.diagonal().clamp_min(0).sqrt()
        scale = norms.max()
        norms = norms / scale if bool(scale > 0) else norms  # sign-based update: scale-free
        initial = self.initial_losses
        ratios = torch.where(initial > 0, losses / torch.where(initial > 0, initial, 1.0), 1.0)
        mean_ratio = ratios.mean()
        relative = ratios / mean_ratio if bool(mean_ratio > 0) else torch.ones_like(ratios)
        weighted = weights * norms
        target = weighted.mean() * relative.clamp_min(0) ** self.alpha
        gradient = torch.sign(weighted - target) * norms
        updated = adam_step(weights, gradient, self.adam, lr=self.lr).clamp_min(_FLOOR)
        self.task_weights = num_tasks * updated / updated.sum()
        return Combination(weights=weights)
