"""MTAdam: Adam that balances several loss terms per parameter (Malkiel & Wolf, 2020)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from taskbalance.engine.jacobian import task_jacobian
from taskbalance.methods._validation import check_positive
from taskbalance.transforms.base import global_norm

__all__ = ["MTAdam"]

logger = logging.getLogger(__name__)

_NORM_FLOOR = 1e-10


class MTAdam(torch.optim.Optimizer):
    """MTAdam (Malkiel & Wolf, "MTAdam: Automatic Balancing of Multiple Training Loss Terms",
    EMNLP 2021 / arXiv:2006.14683).

    For every parameter tensor ``p`` and loss term ``i`` (with gradient ``g_i`` of ``L_i``
    w.r.t. ``p``):

    1. ``n_i <- beta3 n_i + (1 - beta3) |g_i|`` (``n_i = |g_i|`` at the first step): a running
       norm of each term's gradient, per parameter tensor;
    2. ``g_i <- rank_i * n_a * g_i / n_i``: every term is rescaled to the norm of the anchor
       ``a`` (the first term whose running norm exceeds 1e-10), times an optional rank;
    3. per-term Adam moments ``m_i, v_i`` of the rescaled (and weight-decayed) gradients;
    4. ``p <- p - lr / (1 - beta1^t) * sum_i m_i / max_i (sqrt(v_i / (1 - beta2^t)) + eps)``:
       the step divides by the elementwise *max* of the per-term denominators, so no term's
       large second moment is hidden by another's.

    Unlike ``torch.optim.Adam``, :meth:`step` takes the list of loss terms and computes their
    per-parameter gradients itself (one batched backward, see
    :func:`taskbalance.engine.task_jacobian`); ``.grad`` is not used. The state (per-term
    moments, running norms, step) is in ``state_dict()``.

    A step whose loss terms or gradients are not all finite is skipped, as the balancer
    skips one: parameters and state are left untouched, a warning is logged (at the first
    skip and every 100th), and :attr:`skipped_steps` counts them. Checking costs one host read
    of the gradients' norm per step.

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        betas: ``(beta1, beta2, beta3)``; beta3 is the rate of the running gradient norms.
        eps: denominator term.
        weight_decay: L2 penalty added to every term's gradient (as in the reference code).

    Example::

        optimizer = MTAdam(model.parameters(), lr=1e-3)
        losses = [loss_a, loss_b, loss_c]
        optimizer.step(losses)          # no zero_grad / backward needed
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        lr = check_positive("MTAdam", "lr", lr, allow_zero=True)
        eps = check_positive("MTAdam", "eps", eps, allow_zero=True)
        weight_decay = check_positive("MTAdam", "weight_decay", weight_decay, allow_zero=True)
        if len(betas) != 3 or not all(isinstance(b, int | float) and 0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be three numbers in [0, 1), got {betas}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.skipped_steps = 0

    @torch.no_grad()
    def step(  # type: ignore[override]
        self,
        losses: Sequence[Tensor] | Tensor,
        ranks: Sequence[float] | None = None,
        closure: Callable[[], float] | None = None,
    ) -> float | None:
        """One MTAdam update from the loss terms (graphs attached).

        Args:
            losses: the loss terms, in a fixed order (the first is the default anchor).
            ranks: optional relative importance of each term (default all 1): finite and
                ``>= 0`` (a rank of 0 leaves its term out of the update).
            closure: re-evaluates the model and returns the loss (as in ``torch.optim``).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.enable_grad():  # step() runs under no_grad; the stack must join the graph
            stacked = (
                losses
                if isinstance(losses, Tensor)
                else torch.stack([t.reshape(()) for t in losses])
            )
        num_terms = stacked.shape[0]
        rank_tensor = (
            torch.ones(num_terms) if ranks is None else torch.as_tensor(ranks, dtype=torch.float32)
        )
        if rank_tensor.shape != (num_terms,):
            raise ValueError(f"got {rank_tensor.numel()} ranks for {num_terms} loss terms")
        if not bool((torch.isfinite(rank_tensor) & (rank_tensor >= 0)).all()):
            raise ValueError(f"ranks must be finite numbers >= 0, got {rank_tensor.tolist()}")
        params = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        with torch.enable_grad():
            blocks, _ = task_jacobian(stacked, params)
        if not math.isfinite(float(global_norm([stacked.detach(), *blocks]))):
            self._skip(stacked.detach())
            return loss
        gradients = dict(zip(map(id, params), blocks, strict=True))
        for group in self.param_groups:
            beta1, beta2, beta3 = group["betas"]
            for p in group["params"]:
                if id(p) not in gradients:
                    continue
                self._update(p, gradients[id(p)], rank_tensor, group, beta1, beta2, beta3)
        return loss

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim`` state plus ``skipped_steps``, so that a resumed run keeps counting
        (and warning every 100th skip) where it stopped."""
        return {**super().state_dict(), "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        skipped = state.pop("skipped_steps", 0)  # absent in state saved before it was kept
        if isinstance(skipped, bool) or not isinstance(skipped, int) or skipped < 0:
            raise ValueError(f"skipped_steps must be a whole number >= 0, got {skipped!r}")
        super().load_state_dict(state)
        self.skipped_steps = skipped

    def _skip(self, losses: Tensor) -> None:
        """Leave parameters and state as they are, and say so."""
        self.skipped_steps += 1
        if self.skipped_steps == 1 or self.skipped_steps % 100 == 0:
            bad = [i for i, ok in enumerate(torch.isfinite(losses).tolist()) if not ok]
            reason = f"non-finite loss term(s) {bad}" if bad else "non-finite gradient"
            logger.warning(
                "MTAdam step skipped (%s); parameters and state unchanged (%d skipped so far)",
                reason,
                self.skipped_steps,
            )

    def _update(
        self,
        p: Tensor,
        grads: Tensor,
        ranks: Tensor,
        group: dict[str, Any],
        beta1: float,
        beta2: float,
        beta3: float,
    ) -> None:
        num_terms = grads.shape[0]
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float64)
            state["exp_avg"] = torch.zeros_like(grads)
            state["exp_avg_sq"] = torch.zeros_like(grads)
            state["norms"] = torch.zeros(num_terms, dtype=grads.dtype, device=grads.device)
        if state["exp_avg"].shape != grads.shape:
            raise ValueError(
                f"MTAdam was stepped with {state['exp_avg'].shape[0]} loss terms and now gets "
                f"{num_terms}; the number of terms must stay the same"
            )
        state["step"] += 1
        step = state["step"]
        shape = (num_terms,) + (1,) * p.ndim
        current = torch.linalg.vector_norm(grads.reshape(num_terms, -1), dim=1)
        norms = torch.where(step == 1, current, beta3 * state["norms"] + (1 - beta3) * current)
        state["norms"] = norms
        above = norms > _NORM_FLOOR
        first_above = torch.argmax(above.to(torch.int8))  # first index where above is True
        anchor_norm = torch.where(above.any(), norms[first_above], torch.zeros_like(norms[0]))
        factor = torch.where(
            above & (anchor_norm > _NORM_FLOOR),
            ranks.to(norms) * anchor_norm / torch.where(above, norms, torch.ones_like(norms)),
            torch.ones_like(norms),
        )
        grads = grads * factor.view(shape)
        if group["weight_decay"] != 0:
            grads = grads + group["weight_decay"] * p.unsqueeze(0)
        state["exp_avg"].mul_(beta1).add_(grads, alpha=1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grads, grads, value=1 - beta2)
        correction1 = 1 - beta1**step
        correction2 = 1 - beta2**step
        denominators = (state["exp_avg_sq"].sqrt() / correction2.sqrt()).add_(group["eps"])
        largest = denominators.amax(dim=0)
        update = (state["exp_avg"] / largest.unsqueeze(0)).sum(dim=0)
        p.add_(update * (-group["lr"] / correction1).to(p.dtype))
