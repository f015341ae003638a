"""Shared helper of the loss-weighting methods: the sum-to-T weight convention."""

from __future__ import annotations

import torch
from torch import Tensor


def normalise_to_num_tasks(scores: Tensor) -> Tensor:
    """``w_i = T * s_i / sum_j s_j`` for non-negative scores; equal weights when all are 0.

    Computed without host synchronisation (``torch.where`` instead of a Python branch).
    """
    scores = scores.to(torch.float64)
    total = scores.sum()
    num_tasks = scores.numel()
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    normalised = num_tasks * scores / safe_total
    return torch.where(total > 0, normalised, torch.ones_like(scores))
