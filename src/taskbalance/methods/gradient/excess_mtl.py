"""ExcessMTL: task weights from excess-risk estimates (``excess_mtl``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from taskbalance.engine.needs import Need
from taskbalance.methods._validation import check_count, check_positive
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register

_EPS = 1e-7
"""Added to the accumulated squared gradients under the square root (the official code's)."""


@register
class ExcessMTL(Method):
    """ExcessMTL: robust multi-task learning with excess risks (He et al., ICML 2024).

    A task far from its own optimum gets more weight, and one whose loss stays high only
    because of label noise (a large Bayes error, but a small excess risk) does not. The
    excess risk of task ``i`` is estimated by a second-order Taylor expansion with the
    diagonal Hessian approximated by AdaGrad's accumulator (Eq. 6-7)::

        S_i <- S_i + g_i o g_i           (per coordinate, from 0)
        E_i  = sum_k g_ik^2 / sqrt(S_ik + 1e-7)

    Scale processing (Sec. 3.2): ``r_i = E_i / E_i^0`` with ``E^0`` the baseline. Weights by
    exponentiated gradient (Eq. 9), renormalised to sum to ``T``::

        w <- T softmax(log w + eta r)    (w starts at 1)

    The baseline is the first step's ``E`` (``warmup_steps=0``, the official code and
    LibMTL: no update at that step), or the mean ``E`` of the first ``warmup_steps`` steps,
    which keep the weights at 1 (TorchJD's ``n_warmup_steps``; its docs cite the paper's
    Appendix C.1 for three epochs of statistics), the update starting with the next step.
    A task whose gradient was 0 when the baseline was taken gets its baseline at its first
    non-zero gradient (``r = 1`` then); until then ``r = 0``: its weights are finite for any
    input. The update is
    ``sum_i w_i g_i``.

    At representation level the per-sample gradients are summed over the batch (the first
    dimension of each representation tensor) first, as the official code does, so that the
    accumulator is indexed by features, not by samples.

    Args:
        robust_step_size: ``eta`` (the official code's default 1e-2; its README runs 1).
        warmup_steps: steps whose mean ``E`` is the baseline (0: the first step's).

    Scale: weights sum to ``T`` (official code, LibMTL; TorchJD's sum to 1).
    """

    name = "excess_mtl"
    scale = "sum to T"
    needs_note = "Jacobian (per-coordinate state)"
    family = "gradient manipulation"
    needs = Need.JACOBIAN
    reference = "He et al., Robust Multi-Task Learning with Excess Risks, ICML 2024."
    state_attributes = ("squared_sum", "baseline", "risk_sum", "weights", "steps")

    def __init__(self, robust_step_size: float = 1e-2, warmup_steps: int = 0) -> None:
        self.robust_step_size = check_positive(self.name, "robust_step_size", robust_step_size)
        self.warmup_steps = check_count(self.name, "warmup_steps", warmup_steps, allow_zero=True)
        self.squared_sum: Tensor | None = None  # S + 1e-7: (T, coordinates)
        self.baseline: Tensor | None = None  # E^0: (T,), float64
        self.risk_sum: Tensor | None = None  # sum of E over the warm-up: (T,), float64
        self.weights: Tensor | None = None  # w: (T,), float64
        self.steps = 0

    def hparams(self) -> dict[str, Any]:
        return {"robust_step_size": self.robust_step_size, "warmup_steps": self.warmup_steps}

    def combine(self, ctx: Context) -> Combination:
        rows = _units(ctx, ctx.require_jacobian(self.name))
        if self.squared_sum is None or self.weights is None:
            self.squared_sum = torch.full_like(rows, _EPS)
            self.weights = torch.ones(rows.shape[0], dtype=torch.float64, device=rows.device)
        elif self.squared_sum.shape != rows.shape:
            raise ValueError(
                f"excess_mtl accumulates squared gradients of shape "
                f"{tuple(self.squared_sum.shape)}, got {tuple(rows.shape)} (a different number "
                "of tasks or parameters, or at representation level features of another "
                "shape); call reset() to start over"
            )
        self.squared_sum.addcmul_(rows, rows)
        # E_i = g_i . (g_i / sqrt(S_i + eps)) (the state holds S + eps), one T x P temporary
        scaled = self.squared_sum.rsqrt().mul_(rows)
        risk = torch.linalg.vecdot(scaled, rows).to(torch.float64)
        self.steps += 1
        if self.baseline is None:
            if self.steps <= self.warmup_steps:
                self.risk_sum = risk if self.risk_sum is None else self.risk_sum + risk
                return Combination(weights=self.weights.clone())
            if self.warmup_steps == 0:
                self.baseline = risk
                return Combination(weights=self.weights.clone())
            assert self.risk_sum is not None
            self.baseline, self.risk_sum = self.risk_sum / self.warmup_steps, None
        baseline = torch.where((self.baseline <= 0) & (risk > 0), risk, self.baseline)
        self.baseline = baseline
        ratio = torch.where(baseline > 0, risk / torch.where(baseline > 0, baseline, 1.0), 0.0)
        logits = torch.log(self.weights) + self.robust_step_size * ratio
        self.weights = len(risk) * torch.softmax(logits, dim=0)
        return Combination(weights=self.weights.clone())


def _units(ctx: Context, J: Tensor) -> Tensor:
    """The rows the accumulator is indexed by: the Jacobian itself, or at representation
    level each representation tensor's gradient summed over its first (batch) dimension."""
    if ctx.level != "representation" or not ctx.block_shapes:
        return J
    blocks = torch.split(J, [s.numel() for s in ctx.block_shapes], dim=1)
    pooled = [
        block.reshape(J.shape[0], shape[0] if len(shape) else 1, -1).sum(dim=1)
        for block, shape in zip(blocks, ctx.block_shapes, strict=True)
    ]
    return torch.cat(pooled, dim=1)
