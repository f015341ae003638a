"""Run configuration files (YAML or TOML), validated with pydantic.

Every error names the key it is about, e.g.
``methods.1.name: unknown method 'pcgard'. Did you mean 'pcgrad'?`` or
``training.epochs: Input should be greater than or equal to 1``. Unknown keys are errors,
numbers must be finite, counts must be integers (``true`` is not 1), and everything that
can be checked without training is checked here: dataset options, task names, the early
stopping metric, labels and the output folder.
"""

from __future__ import annotations

import inspect
import json
import re
import tomllib
import typing
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from taskbalance import methods
from taskbalance._validation import check_choice, run_folder, suggest
from taskbalance.datasets import DATASETS, IMAGE_DATASETS, describe_tasks
from taskbalance.methods.registry import hyperparameters

__all__ = ["ConfigError", "RunConfig", "load_config", "method_label", "run_folder"]


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message lists every problem by key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


# a count is a whole number (YAML's `true` is not 1); a real is finite (no .inf / .nan)
Count = Annotated[int, Field(strict=True, ge=1)]
Real = Annotated[float, BeforeValidator(_not_bool)]


class DataConfig(Strict):
    dataset: str = "digits"
    batch_size: Count = 64
    val_fraction: Real = Field(0.15, gt=0, lt=1)
    test_fraction: Real = Field(0.2, gt=0, lt=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("dataset")
    @classmethod
    def known_dataset(cls, value: str) -> str:
        return check_choice(value, DATASETS, "dataset")

    @model_validator(mode="after")
    def valid_options(self) -> DataConfig:
        parameters = inspect.signature(DATASETS[self.dataset]).parameters
        settable = [n for n in parameters if n not in ("seed", "val_fraction", "test_fraction")]
        for key, value in self.options.items():
            if key not in settable:
                where = "set at the top level / in data" if key in parameters else "unknown"
                raise ValueError(
                    f"options.{key}: {where} option for dataset {self.dataset!r}."
                    f"{suggest(key, settable)} Its options: {', '.join(settable) or 'none'}"
                )
            default = parameters[key].default
            if isinstance(default, int) and not isinstance(default, bool):
                least = 0 if key == "offset" else 1
                if isinstance(value, bool) or not isinstance(value, int) or value < least:
                    raise ValueError(
                        f"options.{key}: must be a whole number >= {least}, got {value!r}"
                    )
        return self


class ModelConfig(Strict):
    """``hard_sharing``: MLP trunk ``hidden`` + linear heads; ``mmoe``: ``experts`` MLP experts,
    a softmax gate per task; ``ple``: ``levels`` CGC levels with ``experts`` shared and
    ``task_experts`` task-specific experts each; ``lenet``: conv trunk for image datasets."""

    kind: Literal["hard_sharing", "mmoe", "ple", "lenet"] = "hard_sharing"
    hidden: list[Count] = Field(default_factory=lambda: [128, 64], min_length=1)
    experts: Count = 4
    task_experts: int = Field(1, ge=0, strict=True)
    levels: Count = 1
    dropout: Real = Field(0.0, ge=0, lt=1)


class TaskConfig(Strict):
    name: str
    weight: Real = Field(1.0, ge=0)


class OptimizerConfig(Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Real = Field(1e-3, gt=0)
    weight_decay: Real = Field(0.0, ge=0)
    momentum: Real = Field(0.0, ge=0, lt=1)


class EarlyStoppingConfig(Strict):
    monitor: str = "mean_loss"
    mode: Literal["min", "max"] = "min"
    patience: Count = 5


class TrainingConfig(Strict):
    epochs: Count = 20
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    early_stopping: EarlyStoppingConfig | None = None
    grad_accumulation: Count = 1
    level: Literal["parameters", "representation"] = "parameters"
    log_every: Count = 1


class MethodConfig(Strict):
    """A method to train with: its registry name, hyperparameters, level (default: the
    training's), ``update_every`` (recompute the weights every k steps, reuse them in between),
    ``engine`` (``auto`` / ``gramian`` / ``jacobian``: how per-task gradients are held; see
    :class:`taskbalance.Balancer`) and an optional display label."""

    name: str
    hparams: dict[str, Any] = Field(default_factory=dict)
    level: Literal["parameters", "representation"] | None = None
    update_every: Count = 1
    engine: Literal["auto", "gramian", "jacobian"] = "auto"
    label: str | None = None

    @field_validator("name")
    @classmethod
    def known_method(cls, value: str) -> str:
        methods.get(value)  # raises with "did you mean"
        return value

    @field_validator("label")
    @classmethod
    def safe_label(cls, value: str | None) -> str | None:
        # the label names the run's folder (through run_folder): never empty, never a way out
        if value is not None and (
            run_folder(value) in ("", ".", "..")
            or any(part.strip() in (".", "..") for part in re.split(r"[/\\]", value))
        ):
            raise ValueError(
                f"label {value!r} names the run's folder: it must not be empty or contain "
                "'.' or '..' path segments (e.g. 'pcgrad-fast' or 'mmoe / ew')"
            )
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
        cls = getattr(transforms, TRANSFORMS[self.name])
        valid = [name for name in inspect.signature(cls).parameters]
        for key in options:
            if key not in valid:
                raise ValueError(
                    f"unknown option {key!r}.{suggest(key, valid)} "
                    f"Valid options: {', '.join(valid) or 'none'}."
                )
        return cls(**options)


class MonitorConfig(Strict):
    every: Count = 10
    task_gradients: bool = False


class RunConfig(Strict):
    """The whole run: data, model, tasks, training, the methods to compare, output folder."""

    name: str = "run"
    seed: int = Field(0, ge=0, strict=True)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    tasks: list[TaskConfig] | None = Field(None, min_length=1)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    methods: list[MethodConfig] = Field(
        default_factory=lambda: [MethodConfig(name="ew")], min_length=1
    )
    transforms: list[TransformConfig] = Field(default_factory=list)
    monitor: MonitorConfig | None = None
    output: str = "runs/run"

    @field_validator("methods", mode="before")
    @classmethod
    def names_as_methods(cls, value: Any) -> Any:
        """``methods: [ew, pcgrad]`` is short for ``[{name: ew}, {name: pcgrad}]``."""
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("output")
    @classmethod
    def plain_output(cls, value: str) -> str:
        if not value.strip() or ".." in PurePath(value).parts or "\0" in value:
            raise ValueError(
                f"output {value!r} must name a folder, without '..' (e.g. 'runs/my-run')"
            )
        return value

    @model_validator(mode="after")
    def tasks_exist(self) -> RunConfig:
        described = describe_tasks(self.data.dataset, self.data.options)
        available = list(described)
        if self.tasks is not None:
            names = [task.name for task in self.tasks]
            for index, task in enumerate(self.tasks):
                if task.name not in available:
                    raise ValueError(
                        f"tasks.{index}.name: dataset {self.data.dataset!r} "
                        f"has no task {task.name!r}."
                        f"{suggest(task.name, available)} Its tasks: {', '.join(available)}"
                    )
                if task.name in names[:index]:
                    raise ValueError(f"tasks.{index}.name: task {task.name!r} is listed twice")
        chosen = [t.name for t in self.tasks] if self.tasks is not None else available
        stopping = self.training.early_stopping
        if stopping is not None:
            metrics = ["mean_loss"] + [
                f"{task}/{metric}" for task in chosen for metric in ("loss", *described[task])
            ]
            if any("accuracy" in described[task] for task in chosen):
                metrics.insert(1, "average_accuracy")
            if stopping.monitor not in metrics:
                raise ValueError(
                    f"training.early_stopping.monitor: no validation metric "
                    f"{stopping.monitor!r}.{suggest(stopping.monitor, metrics)} "
                    f"Available: {', '.join(metrics)}"
                )
        if self.model.kind == "lenet" and self.data.dataset not in IMAGE_DATASETS:
            raise ValueError(
                f"model.kind: 'lenet' is a convolutional trunk for image datasets "
                f"({', '.join(sorted(IMAGE_DATASETS))}); {self.data.dataset!r} is not one: use "
                "'hard_sharing', 'mmoe' or 'ple'"
            )
        count = len(chosen)
        for index, method in enumerate(self.methods):
            if self.model.kind == "ple" and (method.level or self.training.level) == (
                "representation"
            ):
                where = f"methods.{index}.level" if method.level else "training.level"
                raise ValueError(
                    f"{where}: the 'ple' model has no single shared representation (each "
                    "task's tower reads its own gate's mixture); use level 'parameters'"
                )
            weights = method.hparams.get("weights")
            if isinstance(weights, list) and len(weights) != count:
                raise ValueError(
                    f"methods.{index}.hparams.weights: {len(weights)} weights for {count} tasks"
                )
        labels = [m.display for m in self.methods]
        if len(set(labels)) != len(labels):
            raise ValueError(
                "methods: two runs would have the same label; give them distinct 'label's"
            )
        return self


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``X``, ``list[X]``, ``X | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def _known_keys(location: Sequence[Any]) -> list[str]:
    """The keys the config model at ``location`` (the unknown key's parent) accepts."""
    model: type[BaseModel] | None = RunConfig
    for part in location:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        model = _model_in(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def _misplaced_hyperparameter(raw: dict[str, Any], location: Sequence[Any]) -> str | None:
    """For an unknown key ``methods.N.key`` that is a hyperparameter of method N: where to put
    it instead (``hparams:``)."""
    if len(location) != 3 or location[0] != "methods" or not isinstance(location[1], int):
        return None
    entries = raw.get("methods")
    entry = entries[location[1]] if isinstance(entries, list) else None
    if not isinstance(entry, dict):
        return None
    name = entry.get("name")
    if not isinstance(name, str) or name not in methods.available():
        return None
    key = str(location[2])
    if key not in hyperparameters(methods.get(name)):
        return None
    value = json.dumps(entry[key]) if _is_json(entry[key]) else "..."
    return f" {key!r} is a hyperparameter of {name}: write it under hparams: {{{key}: {value}}}."


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _format(error: ValidationError, raw: dict[str, Any] | None = None) -> str:
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            known = _known_keys(item["loc"][:-1])
            key = str(item["loc"][-1])
            hint = _misplaced_hyperparameter(raw, item["loc"]) if raw is not None else None
            message = f"unknown key {key!r}." + (hint or suggest(key, known))
            if known:
                message += f" Valid keys here: {', '.join(known)}."
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
        if not path.is_file():
            raise ConfigError(f"config {path} is a folder, not a file: give a .yaml/.toml/.json")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"config file {path} cannot be read: {error}") from error
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
        raise ConfigError(f"invalid config {where}:\n{_format(error, raw)}") from None
