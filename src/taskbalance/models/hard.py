"""Hard parameter sharing: one trunk, one head per task."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from torch import Tensor, nn

from taskbalance.models.contract import MultiTaskModel

__all__ = ["HardSharing"]


class HardSharing(MultiTaskModel):
    """Hard parameter sharing (Caruana, 1997): ``input -> trunk -> z -> head_t -> prediction_t``.

    Any ``nn.Module`` works as the trunk (MLP, CNN, RNN, Transformer: nothing is read from its
    internals) and as a head. The trunk's output ``z`` is the shared representation.

    Args:
        trunk: shared module; its output is passed to every head.
        heads: ``task name -> head module``.
    """

    def __init__(self, trunk: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__(tuple(heads))
        self.trunk = trunk
        self.heads = nn.ModuleDict(dict(heads))

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        z = self.remember(self.trunk(*args, **kwargs))
        return {task: head(z) for task, head in self.heads.items()}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.trunk.parameters()

    def task_parameters(self, task: str | None = None) -> Iterator[nn.Parameter]:
        heads = self.heads.values() if task is None else [self.heads[self.check_task(task)]]
        return (p for head in heads for p in head.parameters())
