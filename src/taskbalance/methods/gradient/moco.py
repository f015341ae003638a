"""MoCo: stochastic multi-objective descent with tracked gradients (``moco``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from taskbalance.engine.gramian import gramian_of_blocks
from taskbalance.engine.host import to_device
from taskbalance.engine.needs import Need
from taskbalance.methods._validation import check_positive
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.gradient._gram import row_norms
from taskbalance.methods.registry import register
from taskbalance.methods.weighting._losses import non_negative_losses


@register
class MoCo(Method):
    """MoCo (Fernando et al., ICLR 2023): MGDA-style weights on momentum-tracked gradients,
    which removes the bias of stochastic MGDA.

    At step ``k`` (from 1), with task gradients normalised and scaled by their losses
    (``g_i <- g_i / |g_i| * L_i``, as in LibMTL):

    * tracking: ``y_i <- y_i - beta_k (y_i - g_i)``, ``beta_k = beta / k^beta_sigma``;
    * weights: ``lambda <- softmax(lambda - gamma_k (Y Y^T + rho I) lambda)``,
      ``gamma_k = gamma / k^gamma_sigma`` (LibMTL's softmax step on the simplex);
    * update: ``d = Y^T lambda``.

    ``Y`` (``T x P``) and ``lambda`` are tensors in the state, so they checkpoint. Needs the
    Jacobian and the losses; returns a direction.

    Scale: LibMTL's (``lambda`` sums to 1; ``y_i`` has the size of ``L_i``).
    """

    name = "moco"
    scale = "LibMTL's (`λ` sums to 1)"
    needs_note = "Jacobian + losses"
    family = "gradient manipulation"
    needs = Need.JACOBIAN
    reference = (
        "Fernando et al., Mitigating Gradient Bias in Multi-objective Learning: A Provably "
        "Convergent Approach, ICLR 2023."
    )
    representation_level = False  # tracks per-coordinate gradients across steps
    state_attributes = ("tracked", "task_weights", "steps")

    def __init__(
        self,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
    ) -> None:
        self.beta = check_positive(self.name, "beta", beta)
        self.beta_sigma = check_positive(self.name, "beta_sigma", beta_sigma, allow_zero=True)
        self.gamma = check_positive(self.name, "gamma", gamma)
        self.gamma_sigma = check_positive(self.name, "gamma_sigma", gamma_sigma, allow_zero=True)
        self.rho = check_positive(self.name, "rho", rho, allow_zero=True)
        self.tracked: Tensor | None = None
        self.task_weights: Tensor | None = None
        self.steps = 0

    def hparams(self) -> dict[str, Any]:
        return {
            "beta": self.beta,
            "beta_sigma": self.beta_sigma,
            "gamma": self.gamma,
            "gamma_sigma": self.gamma_sigma,
            "rho": self.rho,
        }

    def combine(self, ctx: Context) -> Combination:
        J = ctx.require_jacobian(self.name)
        # L_i g_i / |g_i| points against g_i for a negative loss
        losses = non_negative_losses(ctx, self.name).to(J.device, J.dtype)
        num_tasks = J.shape[0]
        if self.tracked is None or self.task_weights is None:
            self.tracked = torch.zeros_like(J)
            # (the task weights live on the host, with the Gram matrix they are updated from)
            self.task_weights = torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)
        elif self.tracked.shape != J.shape:
            raise ValueError(
                f"moco tracks gradients of shape {tuple(self.tracked.shape)}, "
                f"got {tuple(J.shape)}; call reset() to start over"
            )
        self.steps += 1
        beta = self.beta / self.steps**self.beta_sigma
        gamma = self.gamma / self.steps**self.gamma_sigma
        # y <- y - beta (y - L_i g_i / |g_i|), in place and without a T x P temporary; a zero
        # gradient contributes zero (LibMTL divides by |g_i| + 1e-8, which stops normalising
        # gradients below 1e-8: here the normalisation is exact at every scale)
        norms = row_norms(J).to(torch.float64)
        safe = torch.where(norms > 0, norms, 1.0)
        row_factor = torch.where(norms > 0, beta * losses.to(torch.float64) / safe, 0.0)
        self.tracked.mul_(1 - beta).addcmul_(J, row_factor.to(J.dtype).unsqueeze(1))
        gram = gramian_of_blocks([self.tracked])  # on the host
        gram = gram + self.rho * torch.eye(num_tasks, dtype=gram.dtype, device=gram.device)
        weights = self.task_weights.to(gram.device)  # (state loaded from a GPU checkpoint)
        self.task_weights = torch.softmax(weights - gamma * gram @ weights, dim=0)
        return Combination(direction=to_device(self.task_weights, J.device, J.dtype) @ self.tracked)
