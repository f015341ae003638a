"""Ordered (cascaded) tasks, and ESMM's probability chaining."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from taskbalance.models.contract import MultiTaskModel

__all__ = ["ESMM", "Cascade"]


class Cascade(MultiTaskModel):
    """Ordered tasks: task ``t + 1``'s head receives task ``t``'s output.

    Data flow::

        x -> trunk -> z -> head_1 -> y_1
                      z, y_1 -> head_2 -> y_2
                      z, y_2 -> head_3 -> y_3 ...

    Head ``t + 1`` is called as ``head(z, y_t)`` (so it decides how to combine them, e.g.
    concatenation). With ``detach=True`` the earlier prediction is passed as a constant: task
    ``t + 1``'s loss then does not train head ``t``. The trunk output ``z`` is the shared
    representation (head ``t`` is used by tasks ``t`` and later; its parameters count as task
    ``t``'s).

    Args:
        trunk: shared module.
        heads: ``(task name, head)`` pairs in task order.
        detach: pass earlier predictions without gradient.
    """

    def __init__(
        self, trunk: nn.Module, heads: Sequence[tuple[str, nn.Module]], detach: bool = False
    ) -> None:
        super().__init__(tuple(name for name, _ in heads))
        self.trunk = trunk
        self.heads = nn.ModuleDict(dict(heads))
        self.detach = detach

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        z = self.remember(self.trunk(*args, **kwargs))
        outputs: dict[str, Tensor] = {}
        previous: Tensor | None = None
        for task in self.task_names:
            head = self.heads[task]
            if previous is None:
                output = head(z)
            else:
                output = head(z, previous.detach() if self.detach else previous)
            outputs[task] = output
            previous = output
        return outputs

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.trunk.parameters()

    def task_parameters(self, task: str | None = None) -> Iterator[nn.Parameter]:
        heads = self.heads.values() if task is None else [self.heads[self.check_task(task)]]
        return (p for head in heads for p in head.parameters())


class ESMM(MultiTaskModel):
    """Entire-space multi-task model (Ma et al., SIGIR 2018) for click -> conversion.

    Data flow::

        x -> trunk (shared embedding) -> z -> ctr_tower -> pCTR = sigmoid(.)
                                          z -> cvr_tower -> pCVR = sigmoid(.)
                                          pCTCVR = pCTR * pCVR

    Outputs ``{"ctr": pCTR, "ctcvr": pCTCVR, "cvr": pCVR}`` (probabilities). Train with two
    losses over **all impressions**: ``BCE(pCTR, click)`` and ``BCE(pCTCVR, click & buy)``;
    the CVR tower is trained only through pCTCVR, on the entire impression space, which removes
    the sample-selection bias of training CVR on clicked impressions only (``cvr`` is not a
    training task). Task names for the balancer: ``("ctr", "ctcvr")``.

    Args:
        trunk: shared module (e.g. embeddings + MLP).
        ctr_tower: module producing one click logit per sample.
        cvr_tower: module producing one conversion logit per sample.
    """

    def __init__(self, trunk: nn.Module, ctr_tower: nn.Module, cvr_tower: nn.Module) -> None:
        super().__init__(("ctr", "ctcvr"))
        self.trunk = trunk
        self.ctr_tower = ctr_tower
        self.cvr_tower = cvr_tower

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        z = self.remember(self.trunk(*args, **kwargs))
        p_ctr = torch.sigmoid(self.ctr_tower(z)).squeeze(-1)
        p_cvr = torch.sigmoid(self.cvr_tower(z)).squeeze(-1)
        return {"ctr": p_ctr, "ctcvr": p_ctr * p_cvr, "cvr": p_cvr}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.trunk.parameters()

    def task_parameters(self, task: str | None = None) -> Iterator[nn.Parameter]:
        # pCTCVR uses both towers; the CTR tower is counted as the ctr task's, the CVR tower
        # (trained only through pCTCVR) as the ctcvr task's
        towers = {"ctr": [self.ctr_tower], "ctcvr": [self.cvr_tower]}
        chosen = (
            [m for t in self.task_names for m in towers[t]]
            if task is None
            else towers[self.check_task(task)]
        )
        return (p for module in chosen for p in module.parameters())
