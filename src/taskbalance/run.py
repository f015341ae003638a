"""Run a configuration: one training run per method, results and a comparison summary."""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

import taskbalance
from taskbalance import distributed
from taskbalance._validation import run_folder
from taskbalance.config import MethodConfig, RunConfig
from taskbalance.datasets import DATASETS, MultiTaskData, collate, load_dataset
from taskbalance.health.monitor import HealthMonitor
from taskbalance.metrics import METRICS
from taskbalance.models import PLE, HardSharing, MMoE, MultiTaskModel
from taskbalance.train import EarlyStopping, Task, Trainer

__all__ = ["build_model", "load_data", "run_config", "run_one"]

logger = logging.getLogger(__name__)


def _mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def build_model(config: RunConfig, data: MultiTaskData, task_names: list[str]) -> MultiTaskModel:
    outputs = {spec.name: spec.outputs for spec in data.tasks}
    hidden = config.model.hidden
    if config.model.kind == "lenet":
        shape = data.info.get("image_shape")
        if not isinstance(shape, tuple):
            raise ValueError(
                f"model.kind 'lenet' needs an image dataset; {config.data.dataset!r} is not one"
            )
        channels, height, width = shape
        trunk = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * (height // 2) * (width // 2), hidden[-1]),
            nn.ReLU(),
        )
        return HardSharing(trunk, {t: nn.Linear(hidden[-1], outputs[t]) for t in task_names})
    if config.model.kind == "hard_sharing":
        trunk = _mlp([data.input_features, *hidden], config.model.dropout)
        return HardSharing(trunk, {t: nn.Linear(hidden[-1], outputs[t]) for t in task_names})
    if config.model.kind == "ple":
        return PLE(
            lambda features: _mlp([features, *hidden], config.model.dropout),
            {t: nn.Linear(hidden[-1], outputs[t]) for t in task_names},
            in_features=data.input_features,
            expert_features=hidden[-1],
            levels=config.model.levels,
            shared_experts=config.model.experts,
            task_experts=config.model.task_experts,
        )
    experts = [
        _mlp([data.input_features, *hidden], config.model.dropout)
        for _ in range(config.model.experts)
    ]
    towers = {t: nn.Linear(hidden[-1], outputs[t]) for t in task_names}
    return MMoE(experts, towers, gate_features=data.input_features)


def _optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    options = config.training.optimizer
    if options.name == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=options.lr,
            momentum=options.momentum,
            weight_decay=options.weight_decay,
        )
    cls = torch.optim.AdamW if options.name == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)


def load_data(config: RunConfig) -> MultiTaskData:
    """The dataset of ``config`` with its seed and split fractions."""
    options: dict[str, Any] = {"seed": config.seed}
    fractions = {
        "val_fraction": config.data.val_fraction,
        "test_fraction": config.data.test_fraction,
    }
    parameters = inspect.signature(DATASETS[config.data.dataset]).parameters
    options.update({k: v for k, v in fractions.items() if k in parameters})
    options.update(config.data.options)
    return load_dataset(config.data.dataset, **options)


def run_one(
    config: RunConfig,
    method: MethodConfig,
    data: MultiTaskData,
    run_dir: Path,
    threads: int | None = None,
    pick_threads: bool = False,
) -> dict[str, Any]:
    """Train with one method; returns its summary (test metrics of the best validation model)."""
    specs = {spec.name: spec for spec in data.tasks}
    task_weights = {t.name: t.weight for t in config.tasks} if config.tasks else {}
    names = [t.name for t in config.tasks] if config.tasks else list(specs)
    tasks = [
        Task(n, specs[n].loss, list(specs[n].metrics), task_weights.get(n, 1.0)) for n in names
    ]
    torch.manual_seed(config.seed)
    model = build_model(config, data, names)
    if threads is not None or pick_threads:
        choose_threads(model, threads)
    generator = torch.Generator().manual_seed(config.seed)
    batch = config.data.batch_size
    processes = distributed.world_size()

    def keep(rows: list[Any]) -> Any:
        x, targets = collate(rows)
        return x, {t: y for t, y in targets.items() if t in names}

    if processes > 1:  # under torchrun: each rank trains on its shard, batch_size is global
        if batch % processes:
            raise ValueError(
                f"data.batch_size {batch} is the global batch and must be divisible by the "
                f"{processes} processes"
            )
        sampler: DistributedSampler[Any] = DistributedSampler(
            data.train, shuffle=True, seed=config.seed
        )
        train = DataLoader(
            data.train, batch_size=batch // processes, sampler=sampler, collate_fn=keep
        )
    else:
        train = DataLoader(
            data.train, batch_size=batch, shuffle=True, collate_fn=keep, generator=generator
        )
    val = DataLoader(data.val, batch_size=512, collate_fn=keep)
    test = DataLoader(data.test, batch_size=512, collate_fn=keep)
    stopping = config.training.early_stopping
    monitor = (
        HealthMonitor(config.monitor.every, config.monitor.task_gradients)
        if config.monitor
        else None
    )
    trainer = Trainer(
        model,
        tasks,
        taskbalance.methods.create(method.name, **method.hparams),
        optimizer=_optimizer(config, model),
        transforms=[t.build() for t in config.transforms],
        level=method.level or config.training.level,
        update_every=method.update_every,
        engine=method.engine,
        early_stopping=EarlyStopping(stopping.monitor, stopping.mode, stopping.patience)
        if stopping
        else EarlyStopping("mean_loss", "min", patience=10**9),
        grad_accumulation=config.training.grad_accumulation,
        seed=config.seed,
        run_dir=run_dir,
        monitor=monitor,
        log_every=config.training.log_every,
    )
    started = time.perf_counter()
    history = trainer.fit(train, val, epochs=config.training.epochs)
    seconds = time.perf_counter() - started
    test_metrics = trainer.evaluate(test)
    summary = {
        "method": method.display,
        "name": method.name,
        "hparams": method.hparams,
        "level": method.level or config.training.level,
        "update_every": method.update_every,
        "epochs_run": trainer.epoch,
        "steps": trainer.global_step,
        "seconds": round(seconds, 2),
        # median training-step time (Trainer.step_time_ms: forward, balancing backward and
        # optimizer step only); fit_ms_per_step also counts validation, checkpoints and I/O
        "ms_per_step": round(trainer.step_time_ms or math.nan, 3),
        "fit_ms_per_step": round(1000 * seconds / max(trainer.global_step, 1), 3),
        "best_val": trainer.best_metric,
        "test": test_metrics,
        "directions": {
            f"{t.name}/{m}": METRICS[m].higher_is_better
            for t in tasks
            for m in specs[t.name].metrics
        },
        "health": monitor.summary() if monitor else None,
        "history": history,
    }
    if distributed.is_main_process():
        (run_dir / "results.json").write_text(json.dumps(summary, indent=1))
    return summary


SMALL_MODEL_PARAMETERS = 1_000_000


def choose_threads(model: torch.nn.Module, requested: int | None) -> int:
    """Set and return torch's CPU thread count for training ``model``.

    ``requested`` wins. Otherwise a model below a million parameters trains on one thread (its
    steps are a few small matrix products, which extra threads slow down: a 64-128-64 MLP step
    takes milliseconds on one thread and hundreds on many), and a larger one keeps torch's
    default. ``taskbalance bench`` does the same per worker.
    """
    if requested is None:
        parameters = sum(p.numel() for p in model.parameters())
        requested = 1 if parameters < SMALL_MODEL_PARAMETERS else torch.get_num_threads()
    torch.set_num_threads(requested)
    return requested


def run_config(config: RunConfig, output: Path | None = None, threads: int | None = None) -> Path:
    """Run every method of ``config``; writes ``<output>/<method>/...`` and ``summary.json``."""
    root = Path(output or config.output)
    distributed.init_from_environment()  # under torchrun: join its process group
    main = distributed.is_main_process()  # only rank 0 writes
    data = load_data(config)  # missing data fails here, before anything is written
    if main:
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.json").write_text(config.model_dump_json(indent=1))
    runs = []
    for method in config.methods:
        run_dir = root / run_folder(method.display)
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            logger.info("training %s", method.display)
            print(f"[taskbalance] training {method.display} ...", flush=True)
        runs.append(run_one(config, method, data, run_dir, threads=threads, pick_threads=True))
    meta = {
        "taskbalance": taskbalance.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "dataset": config.data.dataset,
        "seed": config.seed,
    }
    summary = {
        "name": config.name,
        "meta": meta,
        "runs": [{k: v for k, v in r.items() if k != "history"} for r in runs],
    }
    if main:
        (root / "summary.json").write_text(json.dumps(summary, indent=1))
    return root
