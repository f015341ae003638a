"""Loss weighting with one learned log-scale per task: uncertainty weighting and IMTL-L."""

from __future__ import annotations

import warnings
from abc import abstractmethod
from typing import Any

import torch
from torch import Tensor

from taskbalance.engine.needs import Need
from taskbalance.methods._adam import AdamState, adam_step
from taskbalance.methods._validation import check_positive
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register
from taskbalance.methods.weighting._losses import SIGN_FREE_METHODS, check_num_tasks

__all__ = ["IMTLL", "LearnedScaleWeighting", "UncertaintyWeighting"]


class LearnedScaleWeighting(Method):
    """Shared mechanics: per-task parameters ``s`` (init 0), weights ``w(s)``, and one Adam
    step on ``s`` per balancing step along the closed-form gradient of the method's
    objective at the step's (detached) losses.

    ``s`` lives inside the method, not in the user's optimizer (no weight decay or schedule
    from it); its Adam state is checkpointed with the method.

    Both objectives have their optimum at ``s_i = +-log L_i``, which exists only for a
    positive (average) loss: while a loss stays negative its weight grows without bound (by a
    factor ``~exp(lr)`` per step). A negative loss is therefore reported once per method
    instance with a ``UserWarning`` (occasional negative losses with a positive average, e.g.
    a Gaussian negative log-likelihood, are fine).
    """

    family = "loss weighting"
    needs = Need.LOSSES
    state_attributes = ("log_scales", "adam")

    def __init__(self, lr: float = 1e-3) -> None:
        self.lr = check_positive(self.name, "lr", lr)
        self.log_scales: Tensor | None = None
        self.adam: AdamState | None = None
        self._warned_negative = False

    def hparams(self) -> dict[str, Any]:
        return {"lr": self.lr}

    @abstractmethod
    def weights_from(self, log_scales: Tensor) -> Tensor:
        """Task weights for the current parameters."""

    @abstractmethod
    def objective_gradient(self, log_scales: Tensor, losses: Tensor) -> Tensor:
        """Gradient of the method's objective with respect to ``s``."""

    def combine(self, ctx: Context) -> Combination:
        losses = ctx.require_losses(self.name).to(torch.float64)
        check_num_tasks(self.name, self.log_scales, ctx.num_tasks)
        if self.log_scales is None or self.adam is None:
            self.log_scales = torch.zeros_like(losses)
            self.adam = AdamState.zeros_like(self.log_scales)
        if not self._warned_negative and bool((losses < 0).any()):
            self._warned_negative = True
            negative = (losses < 0).nonzero().flatten().tolist()
            warnings.warn(
                f"{self.name}: the loss of task(s) {negative} is negative "
                f"({losses.tolist()}); the learned scale's optimum log L exists only for "
                "positive losses, so while a loss stays negative its weight grows without "
                "bound. Shift such losses by a lower bound, or use a method that does not "
                f"need their sign: {SIGN_FREE_METHODS}",
                UserWarning,
                stacklevel=2,
            )
        weights = self.weights_from(self.log_scales)
        gradient = self.objective_gradient(self.log_scales, losses)
        self.log_scales = adam_step(self.log_scales, gradient, self.adam, lr=self.lr)
        return Combination(weights=weights)


@register
class UncertaintyWeighting(LearnedScaleWeighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    Objective ``sum_i 0.5 (exp(-s_i) L_i + s_i)`` with ``s_i = log sigma_i^2`` learned (init 0),
    so the model's gradient is that of ``sum_i w_i L_i`` with ``w_i = 0.5 exp(-s_i)`` and
    ``dObj/ds_i = 0.5 (1 - exp(-s_i) L_i)`` (optimum ``s_i = log L_i``: every weighted loss
    tends to 1/2). Negative losses: see :class:`LearnedScaleWeighting`.

    Scale: weights start at 0.5 each (the paper's and LibMTL's ``1 / (2 sigma^2)``).

    Args:
        lr: learning rate of the internal Adam on ``s`` (LibMTL trains ``s`` with the model's
            optimizer; 1e-3 is the usual Adam rate).
    """

    name = "uw"
    scale = "`0.5 exp(-s_i)` (0.5 at start)"
    reference = (
        "Kendall, Gal & Cipolla, Multi-Task Learning Using Uncertainty to Weigh Losses, CVPR 2018."
    )

    def weights_from(self, log_scales: Tensor) -> Tensor:
        return 0.5 * torch.exp(-log_scales)

    def objective_gradient(self, log_scales: Tensor, losses: Tensor) -> Tensor:
        return 0.5 * (1.0 - torch.exp(-log_scales) * losses)


@register
class IMTLL(LearnedScaleWeighting):
    """IMTL-L, the loss-balance half of IMTL (Liu et al., ICLR 2021).

    Each loss is replaced by ``exp(s_i) L_i - s_i`` with learned ``s_i`` (init 0): the model's
    gradient is that of ``sum_i exp(s_i) L_i`` (weights ``w_i = exp(s_i)``, 1 at the start) and
    ``dObj/ds_i = exp(s_i) L_i - 1``, driving every scaled loss ``exp(s_i) L_i`` towards 1.

    Args:
        lr: learning rate of the internal Adam on ``s``.
    """

    name = "imtl_l"
    scale = "`exp(s_i)` (1 at start)"
    reference = "Liu et al., Towards Impartial Multi-task Learning, ICLR 2021 (IMTL-L)."

    def weights_from(self, log_scales: Tensor) -> Tensor:
        return torch.exp(log_scales)

    def objective_gradient(self, log_scales: Tensor, losses: Tensor) -> Tensor:
        return torch.exp(log_scales) * losses - 1.0
