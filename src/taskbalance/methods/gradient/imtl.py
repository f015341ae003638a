"""IMTL: impartial multi-task learning, loss and gradient balance together (``imtl``)."""

from __future__ import annotations

from typing import Any

import torch

from taskbalance.engine.needs import Need
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.gradient.imtl_g import equal_projection_weights
from taskbalance.methods.registry import register
from taskbalance.methods.weighting.learned_scales import IMTLL


@register
class IMTL(Method):
    """IMTL (Liu et al., ICLR 2021) = IMTL-L followed by IMTL-G.

    Loss balance (``imtl_l``): losses become ``exp(s_i) L_i - s_i`` with learned ``s``; their
    gradients are ``exp(s_i) g_i``. Gradient balance (``imtl_g``) is applied to those scaled
    gradients, giving ``alpha``; the update is ``sum_i alpha_i exp(s_i) g_i``, i.e. weights
    ``alpha_i exp(s_i)`` on the raw task gradients. Composition of the two methods (no
    duplicated code); the scaled Gram matrix is ``diag(e^s) G diag(e^s)``.

    Args:
        lr: learning rate of the internal Adam on ``s``.

    Scale: ``alpha`` sums to 1 (LibMTL's IMTL).
    """

    name = "imtl"
    scale = "IMTL-G weights × `exp(s_i)`"
    needs_note = "Gram matrix + losses"
    family = "gradient manipulation"
    needs = Need.GRAMIAN
    homogeneity = 1.0
    reference = "Liu et al., Towards Impartial Multi-task Learning, ICLR 2021."
    state_attributes = ("loss_balance",)

    def __init__(self, lr: float = 1e-3) -> None:
        self.loss_balance = IMTLL(lr=lr)

    def hparams(self) -> dict[str, Any]:
        return self.loss_balance.hparams()

    def combine(self, ctx: Context) -> Combination:
        G = ctx.require_gramian(self.name).to(torch.float64)
        scales = self.loss_balance.combine(ctx).weights
        assert scales is not None
        scales = scales.to(G.device)
        alpha = equal_projection_weights(G * scales.unsqueeze(0) * scales.unsqueeze(1))
        return Combination(weights=alpha * scales)
