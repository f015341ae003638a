"""Per-task metrics (computed on whole evaluation sets) with their direction."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "METRICS",
    "Metric",
    "accuracy",
    "auc",
    "binary_miou",
    "delta_m",
    "f1",
    "mae",
    "mean_rank",
    "miou",
    "mse",
    "pareto_front",
    "seed_mean_std",
]


@dataclass(frozen=True)
class Metric:
    """A metric ``fn(prediction, target) -> float`` and whether higher is better."""

    fn: Callable[[Tensor, Tensor], float]
    higher_is_better: bool

    def __call__(self, prediction: Tensor, target: Tensor) -> float:
        return self.fn(prediction, target)


def _labels(prediction: Tensor) -> Tensor:
    """Class predictions from logits ``(N, C)`` / ``(N, C, ...)``, or from one logit/probability."""
    if prediction.ndim >= 2 and prediction.shape[1] > 1:
        return prediction.argmax(dim=1)
    flat = (
        prediction.reshape(prediction.shape[0], *prediction.shape[2:])
        if prediction.ndim >= 2
        else prediction
    )
    threshold = 0.5 if bool(((flat >= 0) & (flat <= 1)).all()) else 0.0
    return (flat > threshold).long()


def _accuracy(prediction: Tensor, target: Tensor) -> float:
    return float((_labels(prediction) == target.long()).float().mean())


def _mae(prediction: Tensor, target: Tensor) -> float:
    return float((prediction.reshape(target.shape).float() - target.float()).abs().mean())


def _mse(prediction: Tensor, target: Tensor) -> float:
    return float((prediction.reshape(target.shape).float() - target.float()).pow(2).mean())


def _auc(prediction: Tensor, target: Tensor) -> float:
    """ROC AUC (Mann-Whitney U with tied ranks averaged) of a score for binary targets."""
    scores = prediction.reshape(-1).double()
    if prediction.ndim == 2 and prediction.shape[1] == 2:
        scores = (prediction[:, 1] - prediction[:, 0]).double()
    labels = target.reshape(-1).bool()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=scores.dtype)
    unique, inverse = torch.unique(scores, return_inverse=True)
    mean_ranks = torch.zeros_like(unique).scatter_add_(0, inverse, ranks) / torch.bincount(
        inverse
    ).to(scores)
    ranks = mean_ranks[inverse]
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _f1(prediction: Tensor, target: Tensor) -> float:
    """Macro-averaged F1 over the classes present in target or prediction."""
    predicted, truth = _labels(prediction).reshape(-1), target.reshape(-1).long()
    scores = []
    for cls in torch.unique(torch.cat([predicted, truth])).tolist():
        tp = int(((predicted == cls) & (truth == cls)).sum())
        fp = int(((predicted == cls) & (truth != cls)).sum())
        fn = int(((predicted != cls) & (truth == cls)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores) if scores else float("nan")


def _miou(prediction: Tensor, target: Tensor) -> float:
    """Mean intersection over union of dense class masks (logits ``(N, C, ...)``)."""
    return _miou_of(_labels(prediction).reshape(-1), target.reshape(-1).long())


def _binary_miou(prediction: Tensor, target: Tensor) -> float:
    """Mean IoU of the two classes of a dense binary mask given logits (or probabilities) of
    the same shape as the target."""
    flat = prediction.reshape(-1).float()
    threshold = 0.5 if bool(((flat >= 0) & (flat <= 1)).all()) else 0.0
    predicted = (flat > threshold).long()
    return _miou_of(predicted, target.reshape(-1).long())


def _miou_of(predicted: Tensor, truth: Tensor) -> float:
    ious = []
    for cls in torch.unique(torch.cat([predicted, truth])).tolist():
        intersection = int(((predicted == cls) & (truth == cls)).sum())
        union = int(((predicted == cls) | (truth == cls)).sum())
        ious.append(intersection / union)
    return sum(ious) / len(ious) if ious else float("nan")


def _nan_for_nan_predictions(
    fn: Callable[[Tensor, Tensor], float],
) -> Callable[[Tensor, Tensor], float]:
    """``fn``, but NaN wherever a prediction is NaN (a diverged model): argmax and
    thresholds turn NaN into a class, so all-NaN logits read as, e.g., 33% accuracy and took
    their place in tables and Pareto fronts as a real result. (The regression metrics
    propagate NaN by themselves.)"""

    def guarded(prediction: Tensor, target: Tensor) -> float:
        if prediction.is_floating_point() and bool(torch.isnan(prediction).any()):
            return math.nan
        return fn(prediction, target)

    guarded.__name__ = guarded.__qualname__ = fn.__name__
    guarded.__doc__ = fn.__doc__
    return guarded


accuracy = Metric(_nan_for_nan_predictions(_accuracy), higher_is_better=True)
mae = Metric(_mae, higher_is_better=False)
mse = Metric(_mse, higher_is_better=False)
auc = Metric(_nan_for_nan_predictions(_auc), higher_is_better=True)
f1 = Metric(_nan_for_nan_predictions(_f1), higher_is_better=True)
miou = Metric(_nan_for_nan_predictions(_miou), higher_is_better=True)
binary_miou = Metric(_nan_for_nan_predictions(_binary_miou), higher_is_better=True)

METRICS = {
    "accuracy": accuracy,
    "mae": mae,
    "mse": mse,
    "auc": auc,
    "f1": f1,
    "miou": miou,
    "binary_miou": binary_miou,
}


def _relative_gains(
    results: dict[str, float], baselines: dict[str, float], higher_is_better: dict[str, bool]
) -> dict[str, float]:
    gains = {}
    for key, baseline in baselines.items():
        if key not in results:
            raise KeyError(f"no result for metric {key!r} (results have {sorted(results)})")
        if baseline == 0 or not math.isfinite(baseline):
            raise ValueError(
                f"baseline of {key!r} is {baseline}: relative change undefined "
                "(leave that metric out of the baselines, or rerun its single-task model)"
            )
        sign = 1.0 if higher_is_better[key] else -1.0
        gains[key] = sign * (results[key] - baseline) / abs(baseline)
    return gains


def seed_mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds of the finite values (a seed that
    diverged is left out, and tables name it); ``(nan, nan)`` when no value is finite, a std of
    0 with one finite value."""
    finite = [float(v) for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def delta_m(
    results: dict[str, float],
    baselines: dict[str, float],
    higher_is_better: dict[str, bool],
    average: str = "metrics",
) -> float:
    """Delta-m%: mean relative improvement over single-task baselines, in percent.

    ``100 * mean_k (-1)^{l_k} (M_k - M_b,k) / M_b,k`` with ``l_k = 1`` when lower is better, so
    a positive value is an improvement. Keys are ``"task/metric"``.

    * ``average="metrics"``: uniform over all metrics (Maninis et al., CVPR 2019;
      Vandenhende et al., TPAMI 2021);
    * ``average="tasks"``: first within each task, then over tasks (LibMTL's Delta_p), so a
      task with many metrics does not weigh more.
    """
    gains = _relative_gains(results, baselines, higher_is_better)
    if not gains:
        raise ValueError("no baseline metrics given")
    if average == "metrics":
        return 100.0 * sum(gains.values()) / len(gains)
    if average != "tasks":
        raise ValueError(f"average must be 'metrics' or 'tasks', got {average!r}")
    per_task: dict[str, list[float]] = {}
    for key, gain in gains.items():
        per_task.setdefault(key.split("/")[0], []).append(gain)
    return 100.0 * sum(sum(v) / len(v) for v in per_task.values()) / len(per_task)


def _comparable(value: float, higher_is_better: bool) -> float:
    """``value`` oriented so that larger is better, a NaN (a run that diverged, or a metric
    that could not be computed) as the worst possible value."""
    if math.isnan(value):
        return -math.inf
    return value if higher_is_better else -value


def mean_rank(
    table: dict[str, dict[str, float]], higher_is_better: dict[str, bool]
) -> dict[str, float]:
    """Average rank of each method (row) over the metrics (1 = best; ties share the mean rank;
    a NaN ranks last, tied with any other NaN)."""
    ranks: dict[str, list[float]] = {method: [] for method in table}
    for key, higher in higher_is_better.items():
        values = sorted(
            ((_comparable(row[key], higher), method) for method, row in table.items()),
            key=lambda item: item[0],
            reverse=True,
        )
        position = 0
        while position < len(values):
            end = position
            while end + 1 < len(values) and values[end + 1][0] == values[position][0]:
                end += 1
            shared = (position + end) / 2 + 1
            for index in range(position, end + 1):
                ranks[values[index][1]].append(shared)
            position = end + 1
    return {method: sum(r) / len(r) for method, r in ranks.items() if r}


def pareto_front(
    table: dict[str, dict[str, float]], higher_is_better: dict[str, bool]
) -> list[str]:
    """Methods whose metrics no other method matches or beats everywhere and beats somewhere
    (a NaN counts as the worst value: a diverged run is on the front only if every method
    diverged)."""
    oriented = {
        m: [_comparable(row[k], up) for k, up in higher_is_better.items()]
        for m, row in table.items()
    }

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and any(
            x > y for x, y in zip(a, b, strict=True)
        )

    return [
        m
        for m, row in oriented.items()
        if not any(dominates(o, row) for n, o in oriented.items() if n != m)
    ]
