"""The Gram matrix of the task gradients, robust to their scale.

``G = sum_blocks B B^T`` over the flattened Jacobian blocks, accumulated block by block so the
``T x P`` Jacobian is never concatenated. The small ``T x T`` result is returned in float64.

Gradients of size 1e20 would overflow a float32 Gram matrix (1e40 > 3e38) and gradients of size
1e-20 would underflow it; when the fast float32 product is non-finite or its diagonal leaves
``[1e-30, 1e30]``, the blocks are rescaled by their largest absolute entry ``s`` and
``G = s^2 (J/s)(J/s)^T`` is formed in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["gramian_of_blocks", "in_safe_range"]

_LOW, _HIGH = 1e-30, 1e30


def _accumulate(blocks: Sequence[Tensor], scale: Tensor | None) -> Tensor:
    num_tasks = blocks[0].shape[0]
    total: Tensor | None = None
    for block in blocks:
        flat = block.reshape(num_tasks, -1)
        if scale is not None:
            flat = flat / scale.to(flat.dtype)
        contribution = flat @ flat.T
        total = contribution if total is None else total + contribution
    assert total is not None
    return total.to(torch.float64)


def in_safe_range(gramian: Tensor) -> bool:
    """Whether a Gram matrix formed in float32 can be trusted: finite, and its largest diagonal
    entry zero or within ``[1e-30, 1e30]`` (no overflow, no loss to underflow)."""
    largest = gramian.diagonal().max()
    return bool(torch.isfinite(gramian).all()) and (
        bool(largest == 0) or _LOW <= float(largest) <= _HIGH
    )


def gramian_of_blocks(blocks: Sequence[Tensor]) -> Tensor:
    """``(T, T)`` float64 Gram matrix of the rows of the (block-split) Jacobian."""
    if not blocks:
        raise ValueError("no gradient blocks to build a Gram matrix from")
    fast = _accumulate(blocks, None)
    if in_safe_range(fast):
        return fast
    scale = torch.stack([b.detach().abs().amax().to(torch.float64) for b in blocks]).amax()
    if not bool(torch.isfinite(scale)):
        return torch.full_like(fast, float("nan"))
    if bool(scale == 0):
        return torch.zeros_like(fast)
    scaled = _accumulate([b.to(torch.float64) for b in blocks], scale)
    return scaled * scale**2
