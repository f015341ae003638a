"""The contract every multi-task architecture follows, so the balancer never has to guess.

A :class:`MultiTaskModel` is an ``nn.Module`` whose ``forward`` returns a dict
``task name -> prediction`` and which says which of its parameters are shared by the tasks
(:meth:`shared_parameters`: what gradient methods balance), which belong to one task
(:meth:`task_parameters`), and, when it has one, the shared representation of the last forward
pass (:attr:`representation`: the tensor every task-specific part reads, for
``level="representation"``).

Bring your own model by subclassing (or use :class:`~taskbalance.models.HardSharing`, which
wraps any trunk and heads)::

    class MyNet(MultiTaskModel):
        def __init__(self):
            super().__init__(("seg", "depth"))
            self.trunk, self.heads = resnet_trunk(), nn.ModuleDict(seg=SegHead(), depth=DepthHead())
        def forward(self, x):
            z = self.remember(self.trunk(x))
            return {task: head(z) for task, head in self.heads.items()}
        def shared_parameters(self):
            return self.trunk.parameters()
        def task_parameters(self, task=None):
            heads = self.heads.values() if task is None else [self.heads[task]]
            return (p for head in heads for p in head.parameters())
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from taskbalance._validation import suggest

__all__ = ["MultiTaskModel"]


class MultiTaskModel(nn.Module):
    """Base class of the architectures (see the module docstring for the contract)."""

    #: whether :attr:`representation` is a valid level for per-task gradients
    supports_representation: ClassVar[bool] = True

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__()
        names = tuple(task_names)
        if not names:
            raise ValueError("a multi-task model needs at least one task")
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {list(names)}")
        for name in names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"task names must be non-empty strings, got {name!r}")
        self.task_names = names
        self._representation: Tensor | None = None

    @abstractmethod
    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Predictions of every task, keyed by task name."""

    @abstractmethod
    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters that more than one task's loss depends on."""

    @abstractmethod
    def task_parameters(self, task: str | None = None) -> Iterator[nn.Parameter]:
        """Parameters of one task (all task-specific parameters when ``task`` is None)."""

    @property
    def representation(self) -> Tensor | None:
        """The shared representation computed by the last ``forward`` (None before it)."""
        if not self.supports_representation:
            raise ValueError(
                f"{type(self).__name__} has no single shared representation that every task "
                "reads; balance it at level='parameters'"
            )
        return self._representation

    def remember(self, representation: Tensor) -> Tensor:
        """Record ``representation`` as the shared features of this forward pass. A forward
        without autograd (``torch.no_grad()``, ``inference_mode``: a look at another batch
        between a training forward and its ``balancer.backward``) keeps the training
        forward's: its output cannot be back-propagated anyway."""
        if torch.is_grad_enabled() and representation.requires_grad:
            self._representation = representation
        return representation

    def check_task(self, task: str) -> str:
        if task not in self.task_names:
            raise ValueError(
                f"unknown task {task!r}.{suggest(task, self.task_names)} "
                f"Tasks: {', '.join(self.task_names)}."
            )
        return task
