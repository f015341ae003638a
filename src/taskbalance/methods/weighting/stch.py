"""Smooth Tchebycheff scalarisation (``stch``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from taskbalance.engine.needs import Need
from taskbalance.methods._validation import check_positive
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register
from taskbalance.methods.weighting._losses import check_num_tasks, non_negative_losses

_TINY = 1e-30


@register
class SmoothTchebycheff(Method):
    """Smooth Tchebycheff scalarisation (Lin et al., ICML 2024).

    Minimises ``g_mu(L) = mu log sum_i exp(lambda_i (L_i - z_i) / mu)``, a smooth upper
    bound of the Tchebycheff scalarisation ``max_i lambda_i (L_i - z_i)`` (tight as
    ``mu -> 0``). Its gradient is ``sum_i w_i grad L_i`` with
    ``w_i = lambda_i softmax(lambda (L - z) / mu)_i``: the worst-off task (relative to the
    reference point ``z``) gets most of the weight. Computed with a stable softmax, so it is
    finite for any real losses, negative ones included.

    Losses of different scales make the largest one take all the weight. ``normalise=True``
    uses the scale-free terms ``log(L_i / L_i(0))`` instead (``L(0)``: the first step's
    losses, kept in the state), as the official STCH-MTL code does with its nadir point; the
    weights are then ``T lambda_i softmax(...)_i / L_i`` (the code's ``x T`` included).

    Scale: with unit preferences the weights sum to 1 (``normalise=False``).

    Args:
        mu: smoothing parameter (> 0).
        preference: ``lambda`` (default: all ones).
        reference: ideal point ``z`` (default: all zeros; unused with ``normalise``).
        normalise: use ``log(L / L(0))`` terms (see above).
    """

    name = "stch"
    scale = "sum to 1 (unit preferences)"
    family = "loss weighting"
    needs = Need.LOSSES
    reference = (
        "Lin et al., Smooth Tchebycheff Scalarization for Multi-Objective Optimization, ICML 2024."
    )
    state_attributes = ("initial_losses",)

    def __init__(
        self,
        mu: float = 1.0,
        preference: Sequence[float] | None = None,
        reference: Sequence[float] | None = None,
        normalise: bool = False,
    ) -> None:
        self.mu = check_positive(self.name, "mu", mu)
        self.preference = None if preference is None else [float(p) for p in preference]
        self.reference_point = None if reference is None else [float(r) for r in reference]
        if self.preference is not None and any(p < 0 for p in self.preference):
            raise ValueError(f"stch: preference must be >= 0, got {self.preference}")
        self.normalise = bool(normalise)
        self.initial_losses: torch.Tensor | None = None

    def hparams(self) -> dict[str, Any]:
        return {
            "mu": self.mu,
            "preference": self.preference,
            "reference": self.reference_point,
            "normalise": self.normalise,
        }

    def supports_task_subsets(self) -> bool:
        return not self.normalise and self.preference is None and self.reference_point is None

    def _vector(
        self, values: list[float] | None, fill: float, ctx: Context, what: str
    ) -> torch.Tensor:
        losses = ctx.require_losses(self.name)
        if values is None:
            return torch.full((ctx.num_tasks,), fill, dtype=torch.float64, device=losses.device)
        if len(values) != ctx.num_tasks:
            raise ValueError(f"stch: {len(values)} {what} values for {ctx.num_tasks} tasks")
        return torch.tensor(values, dtype=torch.float64, device=losses.device)

    def combine(self, ctx: Context) -> Combination:
        losses = ctx.require_losses(self.name).to(torch.float64)
        preference = self._vector(self.preference, 1.0, ctx, "preference")
        if not self.normalise:
            reference = self._vector(self.reference_point, 0.0, ctx, "reference")
            weights = preference * torch.softmax(preference * (losses - reference) / self.mu, dim=0)
            return Combination(weights=weights)
        safe = non_negative_losses(ctx, self.name).clamp_min(_TINY)
        check_num_tasks(self.name, self.initial_losses, ctx.num_tasks)
        if self.initial_losses is None:
            self.initial_losses = safe.clone()
        terms = torch.log(safe / self.initial_losses)
        soft = torch.softmax(preference * terms / self.mu, dim=0)
        return Combination(weights=ctx.num_tasks * preference * soft / safe)
