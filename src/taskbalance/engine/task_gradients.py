"""The per-task gradients of one step, and the operations the balancer needs on them."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import torch
from torch import Tensor

from taskbalance.engine.gramian import gramian_of_blocks

__all__ = ["TaskGradients"]


class TaskGradients:
    """Task gradients held as Jacobian blocks, one ``(T, *shape)`` block per input tensor.

    Derived quantities are computed lazily, each at most once: a method that needs only the
    Gram matrix never triggers the ``T x P`` concatenation. Per-task transforms (clipping) act
    as a lazy row scaling ``diag(s) J``: the Gram matrix becomes ``diag(s) G diag(s)`` and a
    weighted combination ``J^T (s * w)``, so no scaled copy of the gradients is made unless a
    method asks for the Jacobian itself.
    """

    def __init__(self, blocks: Sequence[Tensor], row_scale: Tensor | None = None) -> None:
        if not blocks:
            raise ValueError("TaskGradients needs at least one block")
        self.blocks = list(blocks)
        self.num_tasks = self.blocks[0].shape[0]
        self.row_scale = row_scale

    @classmethod
    def from_matrix(cls, matrix: Tensor) -> TaskGradients:
        return cls([matrix])

    @cached_property
    def raw_gramian(self) -> Tensor:
        """``(T, T)`` float64 Gram matrix of the gradients before any row scaling."""
        return gramian_of_blocks(self.blocks)

    @property
    def gramian(self) -> Tensor:
        """``(T, T)`` float64 Gram matrix ``J J^T`` (row scaling applied)."""
        if self.row_scale is None:
            return self.raw_gramian
        s = self.row_scale.to(torch.float64)
        return self.raw_gramian * s.unsqueeze(0) * s.unsqueeze(1)

    @cached_property
    def matrix(self) -> Tensor:
        """``(T, P)`` Jacobian, blocks flattened and concatenated (row scaling applied)."""
        flats = [b.reshape(self.num_tasks, -1) for b in self.blocks]
        matrix = flats[0] if len(flats) == 1 else torch.cat(flats, dim=1)
        if self.row_scale is not None:
            matrix = matrix * self.row_scale.to(matrix.dtype).unsqueeze(1)
        return matrix

    def norms(self) -> Tensor:
        """Per-task gradient norms before row scaling, from the Gram diagonal."""
        return self.raw_gramian.diagonal().clamp_min(0).sqrt()

    def scale_rows(self, scale: Tensor) -> TaskGradients:
        """The same gradients with row ``i`` multiplied by ``scale[i]`` (lazily)."""
        total = scale if self.row_scale is None else self.row_scale * scale
        scaled = TaskGradients(self.blocks, total)
        if "raw_gramian" in self.__dict__:
            scaled.__dict__["raw_gramian"] = self.raw_gramian
        return scaled

    def combine(self, weights: Tensor) -> list[Tensor]:
        """``J^T w`` split per block: ``sum_i w_i g_i`` with the inputs' shapes."""
        if self.row_scale is not None:
            weights = weights * self.row_scale.to(weights.dtype)
        return [torch.tensordot(weights.to(b.dtype), b, dims=1) for b in self.blocks]

    def split(self, direction: Tensor) -> list[Tensor]:
        """A flat ``(P,)`` direction cut back into the inputs' shapes."""
        pieces = []
        offset = 0
        for block in self.blocks:
            size = block[0].numel()
            pieces.append(direction[offset : offset + size].view(block.shape[1:]))
            offset += size
        if offset != direction.numel():
            raise RuntimeError(
                f"a direction of {direction.numel()} entries does not match {offset} gradients"
            )
        return pieces
