"""Fast adaptive multitask optimisation (``famo``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from taskbalance.engine.needs import Need
from taskbalance.methods._adam import AdamState, adam_step
from taskbalance.methods._validation import check_positive
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register
from taskbalance.methods.weighting._losses import check_num_tasks

_EPS = 1e-8


@register
class FAMO(Method):
    """FAMO: Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023).

    Task logits ``xi`` (init 0), ``z = softmax(xi)``, ``D_i = L_i - L_i^* + 1e-8`` (``L^*``: the
    tasks' minimum losses, default 0). The update is the gradient of ``sum_i (z_i / c) log D_i``
    with ``c = sum_i z_i / D_i`` held constant, i.e. weights

    ``w_i = z_i / (c D_i)``   (they sum to 1),

    which balances the *rates* at which the log-losses decrease. After the model's step, ``xi``
    moves along ``delta = log D(before) - log D(after)`` pulled back through the softmax
    (``grad_xi = z * (delta - z . delta)``), with its own Adam (lr 0.025, weight decay 1e-3).

    The "after" losses: call :meth:`update` with the losses of the same batch after
    ``optimizer.step()`` (exact, costs an extra forward); otherwise the next step's losses are
    used automatically at the start of the next call (no extra forward; a different batch).

    Scale: weights sum to 1 (paper, LibMTL).

    Args:
        lr: learning rate of the internal Adam on ``xi``.
        weight_decay: its L2 weight decay.
        min_losses: ``L^*`` per task (default zeros).
    """

    name = "famo"
    scale = "sum to 1"
    needs_note = "losses (+ losses after the step)"
    family = "loss weighting"
    needs = Need.LOSSES
    reference = "Liu et al., FAMO: Fast Adaptive Multitask Optimization, NeurIPS 2023."
    state_attributes = ("logits", "adam", "previous_losses", "pending")

    def __init__(
        self,
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        min_losses: Sequence[float] | None = None,
    ) -> None:
        self.lr = check_positive(self.name, "lr", lr)
        self.weight_decay = check_positive(self.name, "weight_decay", weight_decay, allow_zero=True)
        self.min_losses = None if min_losses is None else [float(v) for v in min_losses]
        self.logits: Tensor | None = None
        self.adam: AdamState | None = None
        self.previous_losses: Tensor | None = None
        self.pending = False  # weights were computed and the matching update has not run yet

    def hparams(self) -> dict[str, Any]:
        return {"lr": self.lr, "weight_decay": self.weight_decay, "min_losses": self.min_losses}

    def _gap(self, losses: Tensor) -> Tensor:
        floor = torch.zeros_like(losses)
        if self.min_losses is not None:
            if len(self.min_losses) != losses.numel():
                raise ValueError(
                    f"famo: {len(self.min_losses)} min_losses for {losses.numel()} tasks"
                )
            floor = torch.tensor(self.min_losses, dtype=losses.dtype, device=losses.device)
        below = (losses < floor).nonzero().flatten().tolist()
        if below:
            # a gap clamped to 0 would give those tasks the weight 1 / 1e-8 (and log 1e-8)
            raise ValueError(
                f"famo: the loss of task(s) {below} is below its minimum L* "
                f"(losses {losses.tolist()}, min_losses {floor.tolist()}); FAMO balances "
                "log(L_i - L*_i), so L* must be a lower bound of each loss: pass "
                "min_losses=[...] (e.g. for losses that can be negative)"
            )
        return losses - floor + _EPS

    def update(self, new_losses: Tensor | Sequence[float]) -> None:
        """Move the task logits using the losses measured after the optimizer step."""
        if self.logits is None or self.adam is None or self.previous_losses is None:
            raise RuntimeError("famo.update() must follow a balancing step")
        new = torch.as_tensor(new_losses).detach().to(self.logits)
        check_num_tasks(self.name, new, self.logits.numel())
        delta = self._gap(self.previous_losses).log() - self._gap(new).log()
        z = torch.softmax(self.logits, dim=0)
        gradient = z * (delta - (z * delta).sum())
        self.logits = adam_step(
            self.logits, gradient, self.adam, lr=self.lr, weight_decay=self.weight_decay
        )
        self.pending = False

    def combine(self, ctx: Context) -> Combination:
        losses = ctx.require_losses(self.name).to(torch.float64)
        check_num_tasks(self.name, self.logits, ctx.num_tasks)
        if self.logits is None or self.adam is None:
            self.logits = torch.zeros_like(losses)
            self.adam = AdamState.zeros_like(self.logits)
        elif self.pending:
            self.update(losses)
        z = torch.softmax(self.logits, dim=0)
        gap = self._gap(losses)
        weights = (z / gap) / (z / gap).sum()
        self.previous_losses = losses.clone()
        self.pending = True
        return Combination(weights=weights)
