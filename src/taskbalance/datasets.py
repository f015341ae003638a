"""Built-in multi-task datasets that need no download (for the CLI, examples and tests).

* ``digits``: scikit-learn's bundled handwritten digits (1,797 8x8 images) as three tasks:
  ``digit`` (10-way classification), ``parity`` (2-way), ``value`` (regression of the digit's
  value, MSE; its loss starts ~30x larger than the others). Needs scikit-learn.
* ``synthetic``: regression tasks generated from clusters of related weight vectors
  (``num_tasks`` tasks in ``clusters`` groups), no dependency.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from taskbalance._validation import check_choice

__all__ = ["DATASETS", "MultiTaskData", "TaskSpec", "load_dataset"]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    loss: str
    metrics: tuple[str, ...]
    outputs: int


@dataclass
class MultiTaskData:
    """Train / validation / test splits (``(x, {task: y})`` samples) and the task specs."""

    train: Dataset[tuple[torch.Tensor, dict[str, torch.Tensor]]]
    val: Dataset[tuple[torch.Tensor, dict[str, torch.Tensor]]]
    test: Dataset[tuple[torch.Tensor, dict[str, torch.Tensor]]]
    tasks: list[TaskSpec]
    input_features: int
    info: dict[str, object] = field(default_factory=dict)


class TensorTasks(Dataset[tuple[torch.Tensor, dict[str, torch.Tensor]]]):
    def __init__(self, x: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        self.x, self.targets = x, targets

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.x[index], {task: y[index] for task, y in self.targets.items()}


def _split(
    x: torch.Tensor, targets: dict[str, torch.Tensor], fractions: tuple[float, float], seed: int
) -> tuple[TensorTasks, TensorTasks, TensorTasks]:
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    n_test = round(fractions[1] * len(order))
    n_val = round(fractions[0] * len(order))
    parts = [order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]]
    train, val, test = (TensorTasks(x[i], {t: y[i] for t, y in targets.items()}) for i in parts)
    return train, val, test


def _sklearn_digits(dataset: str) -> Any:
    """scikit-learn's bundled 8x8 digits (shipped in the wheel: no download)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"the {dataset} dataset needs scikit-learn: pip install 'taskbalance[cli]'"
        ) from error
    return load_digits()


def digits(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2) -> MultiTaskData:
    bunch = _sklearn_digits("digits")
    x = torch.as_tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    targets = {"digit": y, "parity": y % 2, "value": y.to(torch.float32)}
    train, val, test = _split(x, targets, (val_fraction, test_fraction), seed)
    tasks = [
        TaskSpec("digit", "cross_entropy", ("accuracy",), 10),
        TaskSpec("parity", "cross_entropy", ("accuracy",), 2),
        TaskSpec("value", "mse", ("mae",), 1),
    ]
    return MultiTaskData(train, val, test, tasks, 64, {"source": "sklearn.datasets.load_digits"})


def synthetic(
    seed: int = 0,
    num_tasks: int = 6,
    clusters: int = 2,
    samples: int = 2000,
    features: int = 16,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
) -> MultiTaskData:
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, features, generator=generator)
    membership = [t % clusters for t in range(num_tasks)]
    weights = torch.stack(
        [centers[m] + 0.2 * torch.randn(features, generator=generator) for m in membership]
    )
    x = torch.randn(samples, features, generator=generator)
    signal = torch.tanh(x @ weights.T / features**0.5 * 2)
    y = signal + 0.05 * torch.randn(samples, num_tasks, generator=generator)
    targets = {f"task{t}": y[:, t] for t in range(num_tasks)}
    train, val, test = _split(x, targets, (val_fraction, test_fraction), seed)
    tasks = [TaskSpec(name, "mse", ("mae",), 1) for name in targets]
    return MultiTaskData(train, val, test, tasks, features, {"clusters": membership})


def multimnist(
    seed: int = 0,
    samples: int = 6000,
    offset: int = 4,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
) -> MultiTaskData:
    """MultiMNIST-style data (Sener & Koltun, NeurIPS 2018) from scikit-learn's 8x8 digits.

    Two random digits are overlaid on a ``(8 + offset)``-pixel square canvas, one at the top
    left and one shifted by ``offset`` pixels to the bottom right (pixel-wise max, so they
    overlap). Tasks: ``left`` and ``right`` (10-way classification of each digit) and ``mask``
    (per-pixel binary segmentation of the left digit's ink, a dense-prediction task). Inputs are
    ``(1, H, W)`` images.
    """
    bunch = _sklearn_digits("multimnist")
    images = torch.as_tensor(bunch.images, dtype=torch.float32) / 16.0
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(0, len(labels), (samples,), generator=generator)
    second = torch.randint(0, len(labels), (samples,), generator=generator)
    size = 8 + offset
    left = torch.zeros(samples, size, size)
    right = torch.zeros(samples, size, size)
    left[:, :8, :8] = images[first]
    right[:, offset:, offset:] = images[second]
    canvas = torch.maximum(left, right).unsqueeze(1)
    targets = {
        "left": labels[first],
        "right": labels[second],
        "mask": (left > 0.25).float().reshape(samples, -1),
    }
    train, val, test = _split(canvas, targets, (val_fraction, test_fraction), seed)
    tasks = [
        TaskSpec("left", "cross_entropy", ("accuracy",), 10),
        TaskSpec("right", "cross_entropy", ("accuracy",), 10),
        TaskSpec("mask", "binary_cross_entropy", ("binary_miou",), size * size),
    ]
    return MultiTaskData(train, val, test, tasks, size * size, {"image_shape": (1, size, size)})


DATASETS: dict[str, Callable[..., MultiTaskData]] = {
    "digits": digits,
    "synthetic": synthetic,
    "multimnist": multimnist,
}


def load_dataset(name: str, **options: object) -> MultiTaskData:
    return DATASETS[check_choice(name, DATASETS, "dataset")](**options)


def collate(
    rows: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = torch.stack([row[0] for row in rows])
    targets = {task: torch.stack([row[1][task] for row in rows]) for task in rows[0][1]}
    return x, targets
