"""DB-MTL: dual-balancing multi-task learning (``db_mtl``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from taskbalance.engine.needs import Need
from taskbalance.methods._validation import check_fraction, check_positive
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.gradient._gram import row_norms, weighted_sum_of_rows
from taskbalance.methods.registry import register
from taskbalance.methods.weighting._losses import non_negative_losses

_EPS = 1e-8


@register
class DBMTL(Method):
    """DB-MTL (Lin et al., 2023): balance the losses with a log transform and the gradients
    by their magnitudes.

    Loss balance: the gradients of ``log(L_i + 1e-8)``, i.e. ``g_i / (L_i + 1e-8)`` (rows of
    the Jacobian rescaled by the losses). Their EMA, with
    ``beta_k = beta / k^beta_sigma`` at step ``k``:
    ``g_hat_i <- g_i + beta_k (g_hat_i - g_i)`` (init 0). Gradient balance: every ``g_hat_i`` is
    scaled to the largest norm, ``d = sum_i (max_j |g_hat_j| / |g_hat_i|) g_hat_i``.

    Needs the Jacobian (the EMA is a ``T x P`` state, checkpointed) and the losses.

    Args:
        beta: EMA coefficient (paper/LibMTL 0.9).
        beta_sigma: decay exponent of ``beta`` (LibMTL 0).

    Scale: the sum of the balanced log-loss gradients (paper).
    """

    name = "db_mtl"
    scale = "sum of balanced log-loss gradients"
    needs_note = "Jacobian + losses"
    family = "gradient manipulation"
    needs = Need.JACOBIAN
    reference = "Lin et al., Dual-Balancing for Multi-Task Learning, 2023 (arXiv:2308.12029)."
    representation_level = False  # tracks per-coordinate gradients across steps
    state_attributes = ("buffer", "steps")

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0) -> None:
        self.beta = check_fraction(self.name, "beta", beta)
        self.beta_sigma = check_positive(self.name, "beta_sigma", beta_sigma, allow_zero=True)
        self.buffer: Tensor | None = None
        self.steps = 0

    def hparams(self) -> dict[str, Any]:
        return {"beta": self.beta, "beta_sigma": self.beta_sigma}

    def combine(self, ctx: Context) -> Combination:
        J = ctx.require_jacobian(self.name)
        # log(L_i) has no gradient to take for a negative loss (LibMTL's log(L + 1e-8) is NaN)
        losses = non_negative_losses(ctx, self.name).to(J.device)
        if self.buffer is None:
            self.buffer = torch.zeros_like(J)
        elif self.buffer.shape != J.shape:
            raise ValueError(
                f"db_mtl keeps gradients of shape {tuple(self.buffer.shape)}, "
                f"got {tuple(J.shape)}; call reset() to start over"
            )
        self.steps += 1
        beta = self.beta / self.steps**self.beta_sigma
        # m <- beta m + (1 - beta) g_i / L_i, in place and without a T x P temporary
        row_factor = (1 - beta) / (losses + _EPS).to(J.dtype)
        self.buffer.mul_(beta).addcmul_(J, row_factor.unsqueeze(1))
        norms = row_norms(self.buffer)
        scale = torch.where(norms > 0, norms.max() / torch.where(norms > 0, norms, 1.0), 0.0)
        return Combination(direction=weighted_sum_of_rows(scale, self.buffer))
