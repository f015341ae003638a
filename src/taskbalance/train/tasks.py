"""What the trainer needs to know about a task: its loss and its metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from taskbalance._validation import finite_number
from taskbalance.metrics import METRICS, Metric

__all__ = ["LOSSES", "Task"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _cross_entropy(prediction: Tensor, target: Tensor) -> Tensor:
    return nn.functional.cross_entropy(prediction, target.long())


def _binary_cross_entropy(prediction: Tensor, target: Tensor) -> Tensor:
    return nn.functional.binary_cross_entropy_with_logits(
        prediction.reshape(target.shape), target.float()
    )


def _mse(prediction: Tensor, target: Tensor) -> Tensor:
    return nn.functional.mse_loss(prediction.reshape(target.shape), target.float())


def _l1(prediction: Tensor, target: Tensor) -> Tensor:
    return nn.functional.l1_loss(prediction.reshape(target.shape), target.float())


_BUILTIN_METRICS = frozenset(METRICS.values())

LOSSES: dict[str, LossFn] = {
    "cross_entropy": _cross_entropy,
    "binary_cross_entropy": _binary_cross_entropy,
    "mse": _mse,
    "l1": _l1,
}


@dataclass
class Task:
    """One task of a multi-task model.

    Attributes:
        name: key of the task in the model's output dict and in the batches' targets.
        loss: ``(prediction, target) -> scalar`` (mean over the samples given), or a name from
            :data:`LOSSES`. Several loss terms for one task: pass a function that sums them.
        metrics: ``metric name -> Metric`` (see :mod:`taskbalance.metrics`), or names.
        weight: constant multiplier of the loss before balancing (1 by default).
    """

    name: str
    loss: LossFn | str
    metrics: Mapping[str, Metric] | list[str] = field(default_factory=dict)
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            # (metrics are keyed "task/metric": a "/" in the name would be read as a metric)
            raise ValueError(f"task name must be a non-empty string without '/', got {self.name!r}")
        # (a negative weight would maximise the loss, a NaN one skip every step)
        finite_number(f"task {self.name!r}: weight", self.weight, allow_zero=True)
        if isinstance(self.loss, str):
            if self.loss not in LOSSES:
                raise ValueError(
                    f"task {self.name!r}: unknown loss {self.loss!r}; "
                    f"use one of {sorted(LOSSES)} or a function"
                )
            self.loss = LOSSES[self.loss]
        if isinstance(self.metrics, list):
            unknown = [m for m in self.metrics if m not in METRICS]
            if unknown:
                raise ValueError(
                    f"task {self.name!r}: unknown metrics {unknown}; use {sorted(METRICS)}"
                )
            self.metrics = {m: METRICS[m] for m in self.metrics}

    def compute_loss(
        self, prediction: Tensor, target: Tensor, mask: Tensor | None
    ) -> Tensor | None:
        """The task's loss on the labelled samples, or None when the batch labels none."""
        if mask is not None:
            mask = mask.bool().reshape(-1)
            if not bool(mask.any()):
                return None
            prediction, target = prediction[mask], target[mask]
        loss_fn = self.loss
        assert callable(loss_fn)
        loss = loss_fn(prediction, target)
        return loss * self.weight if self.weight != 1.0 else loss

    def evaluate(self, prediction: Tensor, target: Tensor) -> dict[str, float]:
        """The loss and the metrics on a whole evaluation set.

        With the ``"binary_cross_entropy"`` loss the model outputs logits, and the built-in
        metrics get their probabilities (``sigmoid``): left to guess, they read outputs that
        all lie in ``[0, 1]`` as probabilities and thresholded logits of 0.1-0.9 at 0.5
        instead of 0. A metric of your own gets the outputs as they are."""
        loss_fn = self.loss
        assert callable(loss_fn)
        assert isinstance(self.metrics, Mapping)
        with torch.no_grad():
            results = {"loss": float(loss_fn(prediction, target))}
            probabilities = torch.sigmoid(prediction) if loss_fn is _binary_cross_entropy else None
            for name, metric in self.metrics.items():
                builtin = probabilities is not None and metric in _BUILTIN_METRICS
                given = probabilities if builtin and probabilities is not None else prediction
                results[name] = metric(given, target)
        return results
