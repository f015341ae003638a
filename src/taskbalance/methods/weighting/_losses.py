"""Loss checks and per-task state shared by the loss-weighting methods."""

from __future__ import annotations

import torch
from torch import Tensor

from taskbalance.engine.host import STEP_LOSSES, already_fetched
from taskbalance.methods.base import Context

__all__ = ["SIGN_FREE_METHODS", "check_num_tasks", "non_negative_losses"]

SIGN_FREE_METHODS = "'ew', 'rlw', 'stch' or a gradient method such as 'upgrad' or 'mgda'"
"""The methods to suggest for losses that can be negative (they do not need the losses' sign)."""


def non_negative_losses(ctx: Context, method: str) -> Tensor:
    """The step's losses in float64; ``ValueError`` if any is negative.

    The sign is read from the host copy of the losses where the balancing step has already
    fetched it (methods that work on the device, e.g. on the Jacobian: no extra sync)."""
    losses = ctx.require_losses(method).to(torch.float64)
    host = already_fetched(STEP_LOSSES)
    signs = host if host is not None and host.shape == losses.shape else losses
    if bool((signs < 0).any()):
        raise ValueError(
            f"{method} needs non-negative losses, got {losses.tolist()}; for losses that can "
            f"be negative use a method that does not need their sign: {SIGN_FREE_METHODS} "
            "(or shift each loss by a lower bound)"
        )
    return losses


def check_num_tasks(method: str, state: Tensor | None, num_tasks: int) -> None:
    """Raise when a method's per-task state was built for another number of tasks."""
    if state is not None and state.shape[0] != num_tasks:
        raise ValueError(
            f"{method} was used with {state.shape[0]} tasks and now gets {num_tasks}; "
            "call reset() (or create a new method) to change the number of tasks"
        )
