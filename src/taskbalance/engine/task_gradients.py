"""The per-task gradients of one step, and the operations the balancer needs on them.

Two representations with one interface:

* :class:`TaskGradients`: the Jacobian held as blocks, one ``(T, *shape)`` block per input;
* :class:`GramianGradients`: only the Gram matrix (accumulated layer by layer, see
  :mod:`taskbalance.engine.layerwise`); a combination ``J^T w`` is one more backward.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import cached_property

import torch
from torch import Tensor

from taskbalance.engine.gramian import (
    gramian_of_blocks,
    in_float64_range,
    normalised_gramian_of_blocks,
    power_of_two,
)
from taskbalance.engine.host import to_device

__all__ = ["GramianGradients", "RowScaledGradients", "TaskGradients"]


class RowScaledGradients(ABC):
    """Task gradients with a lazy per-task row scaling ``diag(s) J``.

    Per-task transforms (clipping) act on the rows without copying them: the Gram matrix
    becomes ``diag(s) G diag(s)`` and a weighted combination ``J^T (s * w)``.
    """

    def __init__(self, num_tasks: int, row_scale: Tensor | None) -> None:
        self.num_tasks = num_tasks
        self.row_scale = row_scale

    @property
    @abstractmethod
    def raw_gramian(self) -> Tensor:
        """``(T, T)`` float64 Gram matrix of the gradients before any row scaling."""

    @property
    @abstractmethod
    def shapes(self) -> tuple[torch.Size, ...]:
        """Shape of each input the gradients are taken with respect to."""

    @abstractmethod
    def _combine_unscaled(self, weights: Tensor) -> list[Tensor]:
        """``J^T w`` (raw rows) split per input."""

    @abstractmethod
    def _normalised_raw(self) -> tuple[Tensor, float]:
        """``(G / s^2, s)`` before row scaling, ``s`` a power of two, exact even where the
        raw Gram matrix over- or underflows float64."""

    @abstractmethod
    def all_finite(self) -> bool:
        """Whether every gradient entry is finite (the Gram matrix may overflow when not)."""

    @abstractmethod
    def with_row_scale(self, scale: Tensor | None) -> RowScaledGradients:
        """The same raw gradients with another row scaling (shares computed results)."""

    @abstractmethod
    def divided_by(self, factor: float) -> RowScaledGradients:
        """The gradients divided by ``factor`` (undoing a loss scale)."""

    @property
    def gramian(self) -> Tensor:
        """``(T, T)`` float64 Gram matrix ``J J^T`` (row scaling applied)."""
        if self.row_scale is None:
            return self.raw_gramian
        s = self.row_scale.to(torch.float64)
        return self.raw_gramian * s.unsqueeze(0) * s.unsqueeze(1)

    def normalised_gramian(self) -> tuple[Tensor, float]:
        """``(G / s^2, s)``: the Gram matrix (row scaling applied) of ``J / s`` and the power
        of two ``s``; what methods are solved on when ``G`` leaves float64's range."""
        normalised, scale = self._normalised_raw()
        if self.row_scale is not None:
            r = self.row_scale.to(torch.float64)
            normalised = normalised * r.unsqueeze(0) * r.unsqueeze(1)
        return normalised, scale

    def norms(self) -> Tensor:
        """Per-task gradient norms before row scaling, from the Gram diagonal (overflow-safe:
        ``s * sqrt(diag(G / s^2))`` when ``G`` leaves float64's range). Computed once."""
        cached: Tensor | None = self.__dict__.get("_norms")
        if cached is None:
            raw = self.raw_gramian
            if in_float64_range(raw, 1e-300, 1e300) or not self.all_finite():
                cached = raw.diagonal().clamp_min(0).sqrt()
            else:
                normalised, scale = self._normalised_raw()
                cached = normalised.diagonal().clamp_min(0).sqrt() * scale
            self.__dict__["_norms"] = cached
        return cached

    def cosine_gramian(self) -> Tensor:
        """A positive multiple of the raw Gram matrix that is finite whenever the gradients
        are (for scale-free statistics: cosines, conflict rates)."""
        raw = self.raw_gramian
        if in_float64_range(raw, 1e-300, 1e300) or not self.all_finite():
            return raw
        return self._normalised_raw()[0]

    def scale_rows(self, scale: Tensor) -> RowScaledGradients:
        """The same gradients with row ``i`` multiplied by ``scale[i]`` (lazily)."""
        total = scale if self.row_scale is None else self.row_scale * scale
        return self.with_row_scale(total)

    def combine(self, weights: Tensor) -> list[Tensor]:
        """``J^T w`` split per input: ``sum_i w_i g_i`` with the inputs' shapes."""
        if self.row_scale is not None:
            weights = weights * to_device(self.row_scale, weights.device, weights.dtype)
        return self._combine_unscaled(weights)


class TaskGradients(RowScaledGradients):
    """Task gradients held as Jacobian blocks, one ``(T, *shape)`` block per input tensor.

    Derived quantities are computed lazily, each at most once: a method that needs only the
    Gram matrix never triggers the ``T x P`` concatenation, and row scaling never copies the
    gradients unless a method asks for the Jacobian itself.
    """

    def __init__(self, blocks: Sequence[Tensor], row_scale: Tensor | None = None) -> None:
        if not blocks:
            raise ValueError("TaskGradients needs at least one block")
        self.blocks = list(blocks)
        super().__init__(self.blocks[0].shape[0], row_scale)

    @classmethod
    def from_matrix(cls, matrix: Tensor) -> TaskGradients:
        return cls([matrix])

    @classmethod
    def from_columns(cls, matrix: Tensor, shapes: Sequence[torch.Size]) -> TaskGradients:
        """The ``(T, P)`` Jacobian whose consecutive column ranges are the inputs (flattened):
        blocks are views into it, so it is never copied or concatenated again."""
        blocks = []
        offset = 0
        for shape in shapes:
            size = shape.numel()
            blocks.append(matrix[:, offset : offset + size].view(matrix.shape[0], *shape))
            offset += size
        if offset != matrix.shape[1]:
            raise ValueError(f"shapes cover {offset} columns of a {tuple(matrix.shape)} matrix")
        grads = cls(blocks)
        grads.__dict__["matrix"] = matrix
        return grads

    @cached_property
    def raw_gramian(self) -> Tensor:
        return gramian_of_blocks(self._raw_blocks())

    def _raw_blocks(self) -> list[Tensor]:
        whole = self.__dict__.get("matrix") if self.row_scale is None else None
        return [whole] if whole is not None else self.blocks

    def _normalised_raw(self) -> tuple[Tensor, float]:
        cached: tuple[Tensor, float] | None = self.__dict__.get("_normalised")
        if cached is None:
            cached = normalised_gramian_of_blocks(self._raw_blocks())
            self.__dict__["_normalised"] = cached
        return cached

    def all_finite(self) -> bool:
        return all(bool(torch.isfinite(b).all()) for b in self.blocks)

    @property
    def shapes(self) -> tuple[torch.Size, ...]:
        return tuple(b.shape[1:] for b in self.blocks)

    @cached_property
    def matrix(self) -> Tensor:
        """``(T, P)`` Jacobian, blocks flattened and concatenated (row scaling applied)."""
        flats = [b.reshape(self.num_tasks, -1) for b in self.blocks]
        matrix = flats[0] if len(flats) == 1 else torch.cat(flats, dim=1)
        if self.row_scale is not None:
            matrix = matrix * to_device(self.row_scale, matrix.device, matrix.dtype).unsqueeze(1)
        return matrix

    def with_row_scale(self, scale: Tensor | None) -> TaskGradients:
        scaled = TaskGradients(self.blocks, scale)
        for computed in ("raw_gramian", "_normalised", "_norms"):
            if computed in self.__dict__:
                scaled.__dict__[computed] = self.__dict__[computed]
        return scaled

    def divided_by(self, factor: float) -> TaskGradients:
        return TaskGradients([b / factor for b in self.blocks], self.row_scale)

    def _combine_unscaled(self, weights: Tensor) -> list[Tensor]:
        return [
            torch.tensordot(to_device(weights, b.device, b.dtype), b, dims=1) for b in self.blocks
        ]

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


Combiner = Callable[[Tensor], list[Tensor]]


class GramianGradients(RowScaledGradients):
    """Task gradients known only through their Gram matrix.

    Args:
        gramian: ``(T, T)`` float64 ``J J^T``.
        shapes: shapes of the inputs (the shared parameters).
        combiner: ``w -> J^T w`` split per input, computed by one backward pass (the Jacobian
            itself was never stored).
    """

    def __init__(
        self,
        gramian: Tensor,
        shapes: Sequence[torch.Size],
        combiner: Combiner,
        row_scale: Tensor | None = None,
    ) -> None:
        super().__init__(gramian.shape[0], row_scale)
        self._gramian = gramian
        self._shapes = tuple(shapes)
        self._combiner = combiner

    @property
    def raw_gramian(self) -> Tensor:
        return self._gramian

    @property
    def shapes(self) -> tuple[torch.Size, ...]:
        return self._shapes

    def _normalised_raw(self) -> tuple[Tensor, float]:
        # formed from float32-or-wider rows in float64: finite whenever the rows are
        largest = float(self._gramian.diagonal().max())
        scale = power_of_two(math.sqrt(largest)) if largest > 0 else 1.0
        return self._gramian / scale**2, scale

    def all_finite(self) -> bool:
        return bool(torch.isfinite(self._gramian).all())

    def with_row_scale(self, scale: Tensor | None) -> GramianGradients:
        return GramianGradients(self._gramian, self._shapes, self._combiner, scale)

    def divided_by(self, factor: float) -> GramianGradients:
        combiner = self._combiner

        def divided(weights: Tensor) -> list[Tensor]:
            return [g / factor for g in combiner(weights)]

        return GramianGradients(self._gramian / factor**2, self._shapes, divided, self.row_scale)

    def _combine_unscaled(self, weights: Tensor) -> list[Tensor]:
        return self._combiner(weights)
