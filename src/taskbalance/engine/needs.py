"""What a balancing method (or a transform) asks the gradient engine to compute."""

from __future__ import annotations

import enum

__all__ = ["Need"]


class Need(enum.IntEnum):
    """The most expensive quantity a method needs, ordered by cost.

    * ``LOSSES``: the task losses only. The balancer runs one ordinary backward of
      ``sum_i w_i L_i``; no per-task gradient is ever computed.
    * ``GRAMIAN``: the ``T x T`` Gram matrix ``G = J J^T`` of the task gradients.
    * ``JACOBIAN``: the ``T x P`` matrix ``J`` of task gradients itself (methods that act
      coordinate-wise on gradients).

    Needs combine with ``max``: a Jacobian gives the Gram matrix for free.
    """

    LOSSES = 0
    GRAMIAN = 1
    JACOBIAN = 2
