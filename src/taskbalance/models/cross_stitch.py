"""Cross-stitch networks: task columns mixed by learnable units after every block."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from taskbalance.models.contract import MultiTaskModel

__all__ = ["CrossStitch", "CrossStitchUnit"]


class CrossStitchUnit(nn.Module):
    """Learnable ``T x T`` mixing: ``x'_t = sum_s alpha_ts x_s`` (one scalar per task pair).

    Initialised near the identity: ``alpha_tt = self_weight``, ``alpha_ts = 1 - self_weight``
    for the others, each row renormalised to sum to 1 (so ``T = 2`` gives 0.9 / 0.1).
    """

    def __init__(self, num_tasks: int, self_weight: float = 0.9) -> None:
        super().__init__()
        if not 0 < self_weight <= 1:
            raise ValueError(f"self_weight must be in (0, 1], got {self_weight}")
        alpha = torch.full((num_tasks, num_tasks), 1 - self_weight)
        alpha.fill_diagonal_(self_weight)
        self.alpha = nn.Parameter(alpha / alpha.sum(dim=1, keepdim=True))

    def forward(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        stacked = torch.stack(list(inputs))  # (T, ...)
        mixed = torch.tensordot(self.alpha, stacked, dims=1)
        return list(mixed.unbind(0))


class CrossStitch(MultiTaskModel):
    """Cross-stitch networks (Misra et al., CVPR 2016).

    Data flow: every task has a column of ``L`` blocks; after each block ``l < L`` a
    cross-stitch unit mixes the columns' activations (which must have equal shapes at that
    depth), and column ``t``'s last activation goes to head ``t``::

        x -> block_1^t -> [stitch_1] -> block_2^t -> [stitch_2] -> ... -> block_L^t -> head_t

    Works for any block sequence (convolutional, recurrent, ...). All columns and stitch units
    influence every task, so they are the shared parameters; the heads are task-specific.
    There is no single shared representation (each head reads its own column): use
    ``level="parameters"``.

    Args:
        columns: ``task name -> sequence of blocks`` (same length for all tasks).
        heads: ``task name -> head`` (default: identity).
        self_weight: initial diagonal of the stitch units (0.9).
    """

    supports_representation = False

    def __init__(
        self,
        columns: Mapping[str, Sequence[nn.Module]],
        heads: Mapping[str, nn.Module] | None = None,
        self_weight: float = 0.9,
    ) -> None:
        super().__init__(tuple(columns))
        if not 0 < self_weight <= 1:  # (checked here too: one block has no stitch unit)
            raise ValueError(f"self_weight must be in (0, 1], got {self_weight}")
        depths = {task: len(blocks) for task, blocks in columns.items()}
        if len(set(depths.values())) != 1 or 0 in depths.values():
            raise ValueError(
                f"every column needs the same (non-zero) number of blocks, got {depths}"
            )
        self.depth = next(iter(depths.values()))
        self.columns = nn.ModuleDict({t: nn.ModuleList(blocks) for t, blocks in columns.items()})
        self.stitches = nn.ModuleList(
            CrossStitchUnit(len(self.task_names), self_weight) for _ in range(self.depth - 1)
        )
        heads = heads or {task: nn.Identity() for task in self.task_names}
        if set(heads) != set(self.task_names):
            raise ValueError(
                f"heads must name the tasks {list(self.task_names)}, got {list(heads)}"
            )
        self.heads = nn.ModuleDict(dict(heads))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        activations = [x] * len(self.task_names)
        for level in range(self.depth):
            activations = [
                self._block(task, level)(a)
                for task, a in zip(self.task_names, activations, strict=True)
            ]
            if level < self.depth - 1:
                activations = self.stitches[level](activations)
        return {
            task: self.heads[task](a) for task, a in zip(self.task_names, activations, strict=True)
        }

    def _block(self, task: str, level: int) -> nn.Module:
        column = self.columns[task]
        assert isinstance(column, nn.ModuleList)
        return column[level]

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.columns.parameters()
        yield from self.stitches.parameters()

    def task_parameters(self, task: str | None = None) -> Iterator[nn.Parameter]:
        heads = self.heads.values() if task is None else [self.heads[self.check_task(task)]]
        return (p for head in heads for p in head.parameters())
