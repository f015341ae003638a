"""Run configuration files (YAML or TOML), validated with pydantic.

Every error names the key it is about, e.g.
``methods.1.name: unknown method 'pcgard'. Did you mean 'pcgrad'?`` or
``training.epochs: Input should be greater than or equal to 1``. Unknown keys are errors.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from taskbalance import methods
from taskbalance._validation import check_choice, suggest
from taskbalance.datasets import DATASETS

__all__ = ["ConfigError", "RunConfig", "load_config", "method_label"]


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message lists every problem by key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    dataset: str = "digits"
    batch_size: int = Field(64, ge=1)
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("dataset")
    @classmethod
    def known_dataset(cls, value: str) -> str:
        return check_choice(value, DATASETS, "dataset")


class ModelConfig(Strict):
    """``hard_sharing``: MLP trunk ``hidden`` + linear heads; ``mmoe``: ``experts`` MLP experts,
    a softmax gate per task; ``ple``: ``levels`` CGC levels with ``experts`` shared and
    ``task_experts`` task-specific experts each; ``lenet``: conv trunk for image datasets."""

    kind: Literal["hard_sharing", "mmoe", "ple", "lenet"] = "hard_sharing"
    hidden: list[int] = Field(default_factory=lambda: [128, 64])
    experts: int = Field(4, ge=1)
    task_experts: int = Field(1, ge=0)
    levels: int = Field(1, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)


class TaskConfig(Strict):
    name: str
    weight: float = Field(1.0, ge=0)


class OptimizerConfig(Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.0, ge=0, lt=1)


class EarlyStoppingConfig(Strict):
    monitor: str = "mean_loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(5, ge=1)


class TrainingConfig(Strict):
    epochs: int = Field(20, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    early_stopping: EarlyStoppingConfig | None = None
    grad_accumulation: int = Field(1, ge=1)
    level: Literal["parameters", "representation"] = "parameters"
    log_every: int = Field(1, ge=1)


class MethodConfig(Strict):
    """A method to train with: its registry name, hyperparameters, level (default: the
    training's), ``update_every`` (recompute the weights every k steps, reuse them in between),
    ``engine`` (``auto`` / ``gramian`` / ``jacobian``: how per-task gradients are held; see
    :class:`taskbalance.Balancer`) and an optional display label."""

    name: str
    hparams: dict[str, Any] = Field(default_factory=dict)
    level: Literal["parameters", "representation"] | None = None
    update_every: int = Field(1, ge=1)
    engine: Literal["auto", "gramian", "jacobian"] = "auto"
    label: str | None = None

    @field_validator("name")
    @classmethod
    def known_method(cls, value: str) -> str:
        methods.get(value)  # raises with "did you mean"
        return value

    @model_validator(mode="after")
    def valid_hparams(self) -> MethodConfig:
        try:
            methods.create(self.name, **self.hparams)
        except (TypeError, ValueError) as error:
            raise ValueError(f"hparams: {error}") from error
        return self

    @property
    def display(self) -> str:
        return self.label or method_label(self.name, self.level, self.update_every)


def method_label(name: str, level: str | None = None, update_every: int = 1) -> str:
    """How a method is shown in tables and run directories: ``mgda``, ``mgda@repr`` at
    representation level, ``mgda+k5`` with ``update_every=5``."""
    label = name if level in (None, "parameters") else f"{name}@{level[:4]}"
    return label if update_every == 1 else f"{label}+k{update_every}"


TRANSFORMS = {
    "clip_global_norm": "ClipGlobalNorm",
    "clip_per_task_norm": "ClipPerTaskNorm",
    "clip_value": "ClipValue",
    "autoclip": "AutoClip",
    "autoclip_per_task": "AutoClipPerTask",
    "agc": "AGC",
}


class TransformConfig(Strict):
    model_config = ConfigDict(extra="allow")
    name: str

    @field_validator("name")
    @classmethod
    def known_transform(cls, value: str) -> str:
        return check_choice(value, TRANSFORMS, "transform")

    @model_validator(mode="after")
    def valid_options(self) -> TransformConfig:
        try:
            self.build()
        except (TypeError, ValueError) as error:
            raise ValueError(f"options of {self.name!r}: {error}") from error
        return self

    def build(self) -> Any:
        from taskbalance import transforms

        options = self.model_extra or {}
        return getattr(transforms, TRANSFORMS[self.name])(**options)


class MonitorConfig(Strict):
    every: int = Field(10, ge=1)
    task_gradients: bool = False


class RunConfig(Strict):
    """The whole run: data, model, tasks, training, the methods to compare, output folder."""

    name: str = "run"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    tasks: list[TaskConfig] | None = None
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    methods: list[MethodConfig] = Field(
        default_factory=lambda: [MethodConfig(name="ew")], min_length=1
    )
    transforms: list[TransformConfig] = Field(default_factory=list)
    monitor: MonitorConfig | None = None
    output: str = "runs/run"

    @model_validator(mode="after")
    def tasks_exist(self) -> RunConfig:
        if self.tasks is not None:
            available = _dataset_tasks(self.data.dataset)
            for index, task in enumerate(self.tasks):
                if available is not None and task.name not in available:
                    raise ValueError(
                        f"tasks.{index}.name: dataset {self.data.dataset!r} "
                        f"has no task {task.name!r}."
                        f"{suggest(task.name, available)} Its tasks: {', '.join(available)}"
                    )
        count = len(self.tasks) if self.tasks is not None else _dataset_task_count(self.data)
        for index, method in enumerate(self.methods):
            weights = method.hparams.get("weights")
            if count is not None and isinstance(weights, list) and len(weights) != count:
                raise ValueError(
                    f"methods.{index}.hparams.weights: {len(weights)} weights for {count} tasks"
                )
        labels = [m.display for m in self.methods]
        if len(set(labels)) != len(labels):
            raise ValueError(
                "methods: two runs would have the same label; give them distinct 'label's"
            )
        return self


def _dataset_task_count(data: DataConfig) -> int | None:
    if data.dataset in ("digits", "multimnist"):
        return 3
    if data.dataset == "synthetic":
        return int(data.options.get("num_tasks", 6))
    return None


def _dataset_tasks(dataset: str) -> list[str] | None:
    known = {"digits": ["digit", "parity", "value"], "multimnist": ["left", "right", "mask"]}
    return known.get(dataset)


def _format(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"{location}: {message}" if location else message)
    return "\n".join(lines)


def load_config(source: str | Path | dict[str, Any]) -> RunConfig:
    """Read and validate a YAML / TOML / JSON run file (or an already-parsed dict)."""
    if isinstance(source, dict):
        raw = source
        where = "config"
    else:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text()
        where = str(path)
        try:
            if path.suffix == ".toml":
                raw = tomllib.loads(text)
            elif path.suffix == ".json":
                raw = json.loads(text)
            else:
                import yaml

                raw = yaml.safe_load(text)
        except Exception as error:
            raise ConfigError(f"{where}: cannot parse: {error}") from error
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: the top level must be a mapping of keys")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"invalid config {where}:\n{_format(error)}") from None
