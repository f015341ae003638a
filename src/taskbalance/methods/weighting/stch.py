"""Smooth Tchebycheff scalarisation (``stch``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from taskbalance.engine.needs import Need
from taskbalance.methods._validation import check_count, check_positive
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
    uses the scale-free terms ``log(L_i / n_i)`` instead, with a nadir point ``n`` kept in
    the state; the weights are then ``T lambda_i softmax(...)_i / L_i`` (the official
    STCH-MTL code's ``x T`` included). The nadir is

    * ``warmup=None``: the first step's losses (no warm-up);
    * ``warmup=W`` (an int, the official schedule; its default and LibMTL's
      ``STCH_warmup_epoch`` is 4): the first ``W`` periods train ``sum_i log L_i`` (weights
      ``1 / L_i``), period ``W`` does too and records ``n`` as its mean loss, and the
      smooth Tchebycheff terms start with period ``W + 1``.

    A period is an epoch (``period_steps=None``: call ``Balancer.end_epoch()``, which the
    trainer does) or a fixed number of steps.

    Scale: with unit preferences the weights sum to 1 (``normalise=False``).

    Args:
        mu: smoothing parameter (> 0; official code: 1).
        preference: ``lambda`` (default: all ones).
        reference: ideal point ``z`` (default: all zeros; unused with ``normalise``).
        normalise: use ``log(L / n)`` terms (see above).
        warmup: periods of ``sum log L`` before the period that records the nadir, or
            ``None`` for the first step's losses (``normalise=True`` only).
        period_steps: steps per period, or ``None`` for epochs (with ``warmup`` only).
    """

    name = "stch"
    scale = "sum to 1 (unit preferences)"
    needs_note = "losses (+ epoch ends with `warmup`)"
    family = "loss weighting"
    needs = Need.LOSSES
    reference = (
        "Lin et al., Smooth Tchebycheff Scalarization for Multi-Objective Optimization, ICML 2024."
    )
    # ``initial_losses`` is the nadir point ``n`` (the name predates the warm-up)
    state_attributes = ("initial_losses", "periods_done", "period_count", "nadir_sum")

    def __init__(
        self,
        mu: float = 1.0,
        preference: Sequence[float] | None = None,
        reference: Sequence[float] | None = None,
        normalise: bool = False,
        warmup: int | None = None,
        period_steps: int | None = None,
    ) -> None:
        self.mu = check_positive(self.name, "mu", mu)
        self.preference = None if preference is None else [float(p) for p in preference]
        self.reference_point = None if reference is None else [float(r) for r in reference]
        if self.preference is not None and any(p < 0 for p in self.preference):
            raise ValueError(f"stch: preference must be >= 0, got {self.preference}")
        self.normalise = bool(normalise)
        self.warmup = check_count(self.name, "warmup", warmup, allow_zero=True, allow_none=True)
        self.period_steps = check_count(self.name, "period_steps", period_steps, allow_none=True)
        if self.warmup is not None and not self.normalise:
            raise ValueError(
                "stch: warmup is the official schedule of the normalised terms: pass "
                "normalise=True with it (without normalise there is no nadir point to record)"
            )
        if self.period_steps is not None and self.warmup is None:
            raise ValueError("stch: period_steps counts the warm-up's periods: pass warmup=W too")
        self.initial_losses: torch.Tensor | None = None
        self.periods_done = 0
        self.period_count = 0  # steps in the current period
        self.nadir_sum: torch.Tensor | None = None  # losses summed over the recording period

    def hparams(self) -> dict[str, Any]:
        return {
            "mu": self.mu,
            "preference": self.preference,
            "reference": self.reference_point,
            "normalise": self.normalise,
            "warmup": self.warmup,
            "period_steps": self.period_steps,
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
        check_num_tasks(self.name, self.nadir_sum, ctx.num_tasks)
        if self.initial_losses is None and self.warmup is not None:
            return Combination(weights=self._warm_up(safe))
        if self.initial_losses is None:
            self.initial_losses = safe.clone()
        terms = torch.log(safe / self.initial_losses)
        soft = torch.softmax(preference * terms / self.mu, dim=0)
        return Combination(weights=ctx.num_tasks * preference * soft / safe)

    def _warm_up(self, losses: torch.Tensor) -> torch.Tensor:
        """A warm-up step: the weights of ``sum_i log L_i``; the recording period (and any
        after it, should it see no step) adds the losses to the nadir's sum."""
        assert self.warmup is not None
        if self.periods_done >= self.warmup:
            self.nadir_sum = losses.clone() if self.nadir_sum is None else self.nadir_sum + losses
        self.period_count += 1
        if self.period_steps is not None and self.period_count >= self.period_steps:
            self._close_period()
        return 1.0 / losses

    def _close_period(self) -> None:
        if self.warmup is None or self.initial_losses is not None:
            return
        if self.nadir_sum is not None and self.period_count > 0:
            self.initial_losses = self.nadir_sum / self.period_count
            self.nadir_sum = None
        self.periods_done += 1
        self.period_count = 0

    def end_epoch(self) -> None:
        if self.period_steps is None:
            self._close_period()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # a checkpoint written before the warm-up existed holds the nadir only
        fresh = {"periods_done": 0, "period_count": 0, "nadir_sum": None}
        super().load_state_dict({**fresh, **state} if set(state) == {"initial_losses"} else state)
