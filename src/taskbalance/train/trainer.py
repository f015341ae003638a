"""The trainer: a multi-task training loop around :class:`~taskbalance.Balancer`.

Per step: forward -> per-task losses on the labelled samples (tasks without labels in the
batch are left out of the step) -> ``Balancer.backward`` (engine, method, transforms,
``.grad``) -> ``optimizer.step()`` every ``grad_accumulation`` batches (skipped when the
balancer skipped: non-finite loss or gradient). Per epoch: ``end_epoch`` for epoch-based
methods, validation, early stopping on a validation metric (never on test), best-model
selection, callbacks, an atomic checkpoint.

Checkpoints hold the model, optimizer, scheduler, balancer (method and transform state),
health monitor, gradients accumulated so far, every RNG state (Python, NumPy, torch, CUDA and
the data loaders' own generators; also their states at the start of the epoch) and the
position in the epoch. :meth:`Trainer.fit` with ``resume=`` therefore continues
bit-identically to an uninterrupted run from every checkpoint the trainer writes (epoch end,
``checkpoint_every``, ``stop_after_steps``): the epoch's batches are replayed from the
epoch-start RNG state and skipped without computing, then the step-time state is restored.
Checkpoints are verified (SHA-256) and loaded without unpickling code
(:mod:`taskbalance.train.checkpoint`); one from another model, method, task set or optimizer
is refused with a message naming what differs.

Under ``torchrun`` (``torch.distributed`` initialised), the balancer balances the global batch
(:mod:`taskbalance.distributed`); give each rank its shard of the training data (a
``DistributedSampler``, whose ``set_epoch`` the trainer calls) and the whole validation set
(every rank then computes the same metrics, so early stopping agrees). Only rank 0 writes
logs and checkpoints; a checkpoint holds every rank's RNG states, so each rank resumes its own
stream exactly (with the same number of processes).
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import statistics
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from taskbalance import distributed
from taskbalance.balancer import Balancer, EnginePath, Level
from taskbalance.health.monitor import HealthMonitor
from taskbalance.methods.base import Method
from taskbalance.models.contract import MultiTaskModel
from taskbalance.optim.mtadam import MTAdam
from taskbalance.train.callbacks import Callback, CSVLogger, EarlyStopping
from taskbalance.train.checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    loader_generators,
    remove_stale_temporaries,
    restore_rng,
    save_checkpoint,
    seed_everything,
)
from taskbalance.train.data import Batch, unpack_batch
from taskbalance.train.tasks import Task
from taskbalance.transforms.base import Transform

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)


def _is_ddp(model: nn.Module) -> bool:
    return isinstance(model, torch.nn.parallel.DistributedDataParallel)


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to(v, device) for v in value)
    return value


class Trainer:
    """Train a multi-task model with any balancing method.

    Args:
        model: a :class:`~taskbalance.models.MultiTaskModel`, or any module returning a dict
            ``task -> prediction`` (then pass ``shared_params``).
        tasks: the tasks (name, loss, metrics, weight).
        method: balancing method (name or instance).
        optimizer: default ``Adam(model.parameters(), lr=1e-3)``.
        scheduler: a ``torch.optim.lr_scheduler`` stepped every epoch (or every optimizer step
            with ``scheduler_interval="step"``).
        transforms: passed to the :class:`Balancer`.
        level: passed to the :class:`Balancer`.
        update_every: passed to the :class:`Balancer`.
        engine: passed to the :class:`Balancer`.
        shared_params: shared parameters when ``model`` is not a ``MultiTaskModel``.
        callbacks: :class:`~taskbalance.train.callbacks.Callback` objects.
        early_stopping: stop on a validation metric; with ``restore_best`` the model ends with
            the weights of its best validation epoch.
        grad_accumulation: batches per optimizer step (each batch adds ``1/k`` of its balanced
            update: ``Balancer.backward(accumulation_steps=k)``).
        amp: mixed precision on CUDA (ignored, with a log line, on CPU): ``True`` or
            ``"bfloat16"`` autocasts the forward pass to bfloat16 (no loss scaling needed);
            ``"float16"`` autocasts to float16 with dynamic loss scaling (the policy of
            ``torch.amp.GradScaler``: start at 2^16, halve on a non-finite step, which is then
            skipped, double after 2000 good steps). The balancer unscales the gradients before
            the method and the transforms see them.
        device: where to train (default: the model's device).
        seed: seeds Python, NumPy and torch at construction (``None``: leave them).
        run_dir: folder for ``steps.csv``, ``epochs.csv``, ``last.pt`` and ``best.pt``.
        checkpoint_every: also checkpoint every this many optimizer steps.
        monitor: a :class:`~taskbalance.health.HealthMonitor`.
        method_metrics: ``task -> validation metric`` passed to metric-based methods
            (``metric_weighting``, ``dtp``) after each validation.
        progress: show a progress bar (default: when stderr is a terminal and tqdm exists).
        log_every: keep a step record (and write it) every this many steps.
        keep_steps: how many of the latest step records :attr:`steps` keeps in memory (the
            whole history is in ``steps.csv`` when ``run_dir`` is set).
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[Task],
        method: Method | str = "ew",
        *,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        scheduler_interval: str = "epoch",
        transforms: Sequence[Transform] = (),
        level: Level = "parameters",
        update_every: int = 1,
        engine: EnginePath = "auto",
        shared_params: Iterable[Tensor] | None = None,
        callbacks: Sequence[Callback] = (),
        early_stopping: EarlyStopping | None = None,
        restore_best: bool = True,
        grad_accumulation: int = 1,
        amp: bool | str = False,
        device: str | torch.device | None = None,
        seed: int | None = 0,
        run_dir: str | Path | None = None,
        checkpoint_every: int | None = None,
        monitor: HealthMonitor | None = None,
        method_metrics: Mapping[str, str] | None = None,
        progress: bool | None = None,
        log_every: int = 1,
        keep_steps: int = 1000,
    ) -> None:
        if seed is not None:
            seed_everything(seed)
        self.model = model  # forward passes go through it (a DDP wrapper included)
        # what is trained and checkpointed: the module inside a DistributedDataParallel
        self.core: nn.Module = getattr(model, "module", model) if _is_ddp(model) else model
        model = self.core
        self.tasks = {task.name: task for task in tasks}
        if len(self.tasks) != len(tasks) or not tasks:
            raise ValueError("tasks must be non-empty with unique names")
        if isinstance(model, MultiTaskModel):
            unknown = [t for t in self.tasks if t not in model.task_names]
            if unknown:
                raise ValueError(
                    f"tasks {unknown} are not outputs of the model ({list(model.task_names)})"
                )
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}"
            )
        if keep_steps < 1 or log_every < 1:
            raise ValueError(
                f"keep_steps and log_every must be >= 1, got {keep_steps} and {log_every}"
            )
        if checkpoint_every is not None and checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 or None, got {checkpoint_every}")
        if grad_accumulation < 1:
            raise ValueError(f"grad_accumulation must be >= 1, got {grad_accumulation}")
        first = next(model.parameters(), None)
        self.device = (
            torch.device(device)
            if device is not None
            else (first.device if first is not None else torch.device("cpu"))
        )
        self.model.to(self.device)
        common: dict[str, Any] = {
            "transforms": transforms,
            "level": level,
            "task_names": list(self.tasks),
            "monitor": monitor,
            "update_every": update_every,
            "engine": engine,
        }
        if isinstance(model, MultiTaskModel):
            self.balancer = Balancer.for_model(method, model, **common)
        elif shared_params is not None:
            self.balancer = Balancer(method, shared_params, **common)
        else:
            raise ValueError("pass shared_params=... for a model that is not a MultiTaskModel")
        if isinstance(optimizer, MTAdam):
            raise ValueError(
                "MTAdam balances the loss terms itself, from their per-parameter gradients "
                "(optimizer.step(losses)), and ignores .grad: use it in your own loop instead "
                "of the Trainer, or give the Trainer a torch.optim optimizer and a method"
            )
        self.optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-3)
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.callbacks = list(callbacks)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if self.run_dir is not None and not any(isinstance(c, CSVLogger) for c in self.callbacks):
            self.callbacks.append(CSVLogger(self.run_dir, every=log_every))
        self.early_stopping = early_stopping
        self.restore_best = restore_best
        self.grad_accumulation = grad_accumulation
        if amp not in (False, True, "bfloat16", "float16"):
            raise ValueError(f"amp must be False, True, 'bfloat16' or 'float16', got {amp!r}")
        self.amp = bool(amp) and self.device.type == "cuda"
        self.amp_dtype = torch.float16 if amp == "float16" else torch.bfloat16
        if amp and not self.amp:
            logger.info("AMP needs CUDA; training in float32 on %s", self.device)
        self.loss_scale = 2.0**16 if self.amp and self.amp_dtype == torch.float16 else 1.0
        self._good_steps = 0
        self.checkpoint_every = checkpoint_every
        self.monitor = monitor
        self.method_metrics = dict(method_metrics or {})
        self.progress = progress
        self.log_every = log_every
        self.epoch = 0
        self.global_step = 0
        self.batch_in_epoch = 0
        self.history: list[dict[str, float]] = []
        self.steps: deque[dict[str, float]] = deque(maxlen=keep_steps)
        self._best_state: dict[str, Any] | None = None
        self._epoch_rng: dict[str, Any] | None = None
        self._metric_values: list[float] | None = None
        self._micro = 0
        self._generators: dict[str, torch.Generator] = {}
        # seconds of each optimizer step's own work (forward, balancing backward, optimizer
        # step; no data loading, validation, checkpoints or logging): see step_time_ms
        self.step_seconds: list[float] = []
        self._step_clock = 0.0

    @property
    def step_time_ms(self) -> float | None:
        """Median milliseconds of one optimizer step's own work in this process: moving the
        batch to the device, forward, losses, balancing backward (every micro-batch of a
        gradient-accumulation step) and the optimizer step. Data loading, validation,
        checkpoints, logging and callbacks are not included. Host time: on CUDA, kernels
        still running when a step returns count towards a later step. ``None`` before the
        first step."""
        if not self.step_seconds:
            return None
        return 1000 * statistics.median(self.step_seconds)

    # ----------------------------------------------------------------- training
    def fit(
        self,
        train: Iterable[Any],
        val: Iterable[Any] | None = None,
        epochs: int = 1,
        *,
        resume: str | Path | None = None,
        stop_after_steps: int | None = None,
    ) -> list[dict[str, float]]:
        """Train for ``epochs`` epochs (in total, counting a resumed run's); returns the
        per-epoch validation history. ``stop_after_steps`` stops (with a checkpoint when
        ``run_dir`` is set) after that many optimizer steps in total."""
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if self.run_dir is not None and distributed.is_main_process():
            remove_stale_temporaries(self.run_dir, ("last.pt", "best.pt"))
        self._generators = loader_generators(train)
        resume_rng: dict[str, Any] | None = None
        if resume is not None:
            resume_rng = self.load_checkpoint(resume)
        for callback in self.callbacks:
            callback.on_fit_start(self)
        stop = False
        while self.epoch < epochs and not stop:
            if resume_rng is not None and self.batch_in_epoch == 0:
                restore_rng(resume_rng, self._generators)  # an epoch-end checkpoint
                resume_rng = None
            if self.batch_in_epoch == 0 or self._epoch_rng is None:
                self._epoch_rng = capture_rng(self._generators)
            else:
                restore_rng(self._epoch_rng, self._generators)  # replay the epoch's order
            for holder in (train, getattr(train, "sampler", None)):  # DistributedSampler
                set_epoch = getattr(holder, "set_epoch", None)
                if callable(set_epoch):
                    set_epoch(self.epoch)
            iterator = iter(train)
            skipped = sum(1 for _ in itertools.islice(iterator, self.batch_in_epoch))
            if skipped != self.batch_in_epoch:
                raise CheckpointError(
                    f"the training data has {skipped} batches per epoch, the checkpoint was "
                    f"written after batch {self.batch_in_epoch} of epoch {self.epoch + 1}: "
                    "resume with the same data and batch size"
                )
            if resume_rng is not None:
                restore_rng(resume_rng, self._generators)  # the moment of the checkpoint
                resume_rng = None
            total = len(train) if hasattr(train, "__len__") else None  # type: ignore[arg-type]
            for batch in self._progress(iterator, total, initial=self.batch_in_epoch):
                stepped = self._train_batch(batch)
                self.batch_in_epoch += 1
                if not stepped:
                    continue
                if (
                    self.checkpoint_every
                    and self.run_dir is not None
                    and self.global_step % self.checkpoint_every == 0
                ):
                    self.save_checkpoint(self.run_dir / "last.pt")
                if stop_after_steps is not None and self.global_step >= stop_after_steps:
                    if self.run_dir is not None:
                        self.save_checkpoint(self.run_dir / "last.pt")
                    return self.history
            if self.batch_in_epoch == 0:
                raise ValueError(
                    f"the training data gave no batch in epoch {self.epoch + 1}: an empty "
                    "dataset, a one-shot iterator already used up, or drop_last=True with a "
                    "dataset smaller than the batch size"
                )
            stop = self._end_epoch(val)
        if self.restore_best and self._best_state is not None:
            self.core.load_state_dict(self._best_state)
        for callback in self.callbacks:
            callback.on_fit_end(self)
        if self.monitor is not None:
            logger.info("%s", self.monitor.summary())
        return self.history

    def _progress(self, iterator: Iterable[Any], total: int | None, initial: int) -> Iterable[Any]:
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        if not show:
            return iterator
        try:
            from tqdm import tqdm
        except ImportError:
            return iterator
        bar: Iterable[Any] = tqdm(
            iterator, total=total, initial=initial, desc=f"epoch {self.epoch + 1}", leave=False
        )
        return bar

    def _train_batch(self, batch: Any) -> bool:
        """Forward, balance and (every ``grad_accumulation`` batches) step; returns whether
        the optimizer stepped."""
        started = time.perf_counter()
        data = unpack_batch(batch)
        inputs = _to(data.inputs, self.device)
        self.model.train()
        with torch.autocast(device_type="cuda", dtype=self.amp_dtype, enabled=self.amp):
            predictions = self.model(inputs)
        self._check_batch(data)
        losses: dict[str, Tensor] = {}
        for name, target in data.targets.items():
            mask = data.masks.get(name)
            loss = self.tasks[name].compute_loss(
                predictions[name].float(),
                target.to(self.device),
                None if mask is None else mask.to(self.device),
            )
            if loss is not None:
                losses[name] = loss
        info = None
        if losses:
            info = self.balancer.backward(
                losses,
                metrics=self._step_metrics(losses),
                loss_scale=self.loss_scale,
                accumulation_steps=self.grad_accumulation,
            )
            self._update_loss_scale(info.skipped)
        self._micro = (self._micro + 1) % self.grad_accumulation
        if self._micro != 0:
            self._step_clock += time.perf_counter() - started
            return False
        has_grad = any(p.grad is not None for p in self.model.parameters())
        if has_grad:
            self.optimizer.step()
            if self.scheduler is not None and self.scheduler_interval == "step":
                self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_seconds.append(self._step_clock + time.perf_counter() - started)
        self._step_clock = 0.0
        self.global_step += 1
        if info is not None and self.global_step % self.log_every == 0:
            details = info.as_dict()
            details["balancer_step"] = details.pop("step")  # counts backward calls
            record = {"step": float(self.global_step), "epoch": float(self.epoch), **details}
            self.steps.append(record)
            for callback in self.callbacks:
                callback.on_step_end(self, record)
        return True

    def _check_batch(self, data: Batch) -> None:
        """Targets only for tasks, masks only for targets (a misspelt mask key left its task
        unmasked: placeholder labels were trained on, and evaluated, as real ones)."""
        for name in data.targets:
            if name not in self.tasks:
                raise ValueError(
                    f"the batch has targets for {name!r}, which is not a task ({list(self.tasks)})"
                )
        stray = [name for name in data.masks if name not in data.targets]
        if stray:
            raise ValueError(
                f"the batch has masks for {stray}, which have no targets in it "
                f"(targets: {list(data.targets)})"
            )

    def _update_loss_scale(self, skipped: bool) -> None:
        """Dynamic loss scaling for float16 (GradScaler's policy)."""
        if self.loss_scale == 1.0 and not (self.amp and self.amp_dtype == torch.float16):
            return
        if skipped:
            self.loss_scale = max(self.loss_scale * 0.5, 1.0)
            self._good_steps = 0
            return
        self._good_steps += 1
        if self._good_steps >= 2000:
            self.loss_scale *= 2.0
            self._good_steps = 0

    def _step_metrics(self, losses: Mapping[str, Tensor]) -> list[float] | None:
        if self._metric_values is None or set(losses) != set(self.tasks):
            return None
        return self._metric_values

    def _end_epoch(self, val: Iterable[Any] | None) -> bool:
        self.balancer.end_epoch()
        metrics = self.evaluate(val) if val is not None else {}
        stop = False
        if metrics:
            self.history.append({"epoch": float(self.epoch + 1), **metrics})
            if self.method_metrics:
                self._metric_values = (
                    [float(metrics[f"{task}/{self.method_metrics[task]}"]) for task in self.tasks]
                    if set(self.method_metrics) == set(self.tasks)
                    else None
                )
            if self.early_stopping is not None:
                improved, stop = self.early_stopping.update(metrics)
                if improved:
                    self._best_state = copy.deepcopy(self.core.state_dict())
                    if self.run_dir is not None and distributed.is_main_process():
                        save_checkpoint(self._best_state, self.run_dir / "best.pt")
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            self.scheduler.step()
        self.epoch += 1
        self.batch_in_epoch = 0
        for callback in self.callbacks:
            callback.on_epoch_end(self, metrics)
        if self.run_dir is not None:
            self.save_checkpoint(self.run_dir / "last.pt")
        return stop

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, loader: Iterable[Any]) -> dict[str, float]:
        """Per-task loss and metrics on ``loader`` (``"task/metric"`` keys), plus
        ``mean_loss`` (mean of the task losses) and ``average_accuracy`` when tasks report
        accuracy. Returns the values; prints nothing."""
        was_training = self.model.training
        self.model.eval()
        predictions: dict[str, list[Tensor]] = {t: [] for t in self.tasks}
        targets: dict[str, list[Tensor]] = {t: [] for t in self.tasks}
        for batch in loader:
            data = unpack_batch(batch)
            self._check_batch(data)
            with torch.autocast(device_type="cuda", dtype=self.amp_dtype, enabled=self.amp):
                output = self.model(_to(data.inputs, self.device))
            for name, target in data.targets.items():
                prediction = output[name].float()
                target = target.to(self.device)
                mask = data.masks.get(name)
                if mask is not None:
                    mask = mask.to(self.device).bool().reshape(-1)
                    prediction, target = prediction[mask], target[mask]
                predictions[name].append(prediction)
                targets[name].append(target)
        self.model.train(was_training)
        results: dict[str, float] = {}
        losses, accuracies = [], []
        for name, task in self.tasks.items():
            if not predictions[name]:
                continue
            values = task.evaluate(torch.cat(predictions[name]), torch.cat(targets[name]))
            for key, value in values.items():
                results[f"{name}/{key}"] = value
            losses.append(values["loss"])
            if "accuracy" in values:
                accuracies.append(values["accuracy"])
        if losses:
            results["mean_loss"] = sum(losses) / len(losses)
        if accuracies:
            results["average_accuracy"] = sum(accuracies) / len(accuracies)
        return results

    # ----------------------------------------------------------------- checkpoints
    def signature(self) -> dict[str, Any]:
        """What a checkpoint must agree with to be resumed here: the model's class and
        parameter shapes, the method, the tasks, the level and the optimizer's class."""
        return {
            "model": type(self.core).__name__,
            "shapes": {k: list(v.shape) for k, v in self.core.state_dict().items()},
            "method": self.balancer.method.name,
            "tasks": list(self.tasks),
            "level": self.balancer.level,
            "optimizer": type(self.optimizer).__name__,
        }

    def state_dict(self) -> dict[str, Any]:
        accumulating = self._micro != 0  # gradients of the batches since the last step
        return {
            "signature": self.signature(),
            "model": self.core.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "balancer": self.balancer.state_dict(),
            "monitor": self.monitor.state_dict() if self.monitor is not None else None,
            "early_stopping": self.early_stopping.state_dict() if self.early_stopping else None,
            "grads": (
                [None if p.grad is None else p.grad.detach().clone() for p in self._params()]
                if accumulating
                else None
            ),
            "trainer": {
                "epoch": self.epoch,
                "global_step": self.global_step,
                "batch_in_epoch": self.batch_in_epoch,
                "micro": self._micro,
                "history": self.history,
                "metric_values": self._metric_values,
                "loss_scale": self.loss_scale,
                "good_steps": self._good_steps,
            },
            # every rank's RNG states now and at the epoch start (one rank without
            # torch.distributed): each rank resumes its own streams
            "ranks": distributed.gather(
                {"rng": capture_rng(self._generators), "epoch_rng": self._epoch_rng}
            ),
        }

    def _params(self) -> list[Tensor]:
        return list(self.model.parameters())

    def save_checkpoint(self, path: str | Path) -> Path:
        """Atomically write everything needed to resume exactly (verified on load). Under
        torch.distributed every rank must call it (the RNG states are gathered); rank 0
        writes."""
        state = self.state_dict()
        if distributed.is_main_process():
            save_checkpoint(state, path)
        return Path(path)

    def _check_signature(self, saved: Mapping[str, Any], path: Path) -> None:
        here = self.signature()
        differences = [
            f"{key}: checkpoint {saved.get(key)!r}, this trainer {here[key]!r}"
            for key in ("model", "method", "tasks", "level", "optimizer")
            if saved.get(key) != here[key]
        ]
        shapes: Mapping[str, list[int]] = saved.get("shapes", {})
        missing = sorted(set(here["shapes"]) - set(shapes))
        unexpected = sorted(set(shapes) - set(here["shapes"]))
        if missing:
            differences.append(f"model entries not in the checkpoint: {missing[:5]}")
        if unexpected:
            differences.append(f"checkpoint entries not in the model: {unexpected[:5]}")
        differences += [
            f"shape of {name}: checkpoint {shapes[name]}, model {shape}"
            for name, shape in here["shapes"].items()
            if name in shapes and list(shapes[name]) != shape
        ][:5]
        if differences:
            raise CheckpointError(
                f"{path} was written by a different run set-up; it can only be resumed by "
                "the same model, method, tasks, level and optimizer. Differences:\n  - "
                + "\n  - ".join(differences)
            )

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Verify and restore a checkpoint (its digest and signature are checked before
        anything is changed); returns the RNG state of the moment it was written, which
        :meth:`fit` restores at the right point of the epoch."""
        source = Path(path)
        state = load_checkpoint(source)
        if not {"signature", "trainer", "ranks"} <= set(state):
            raise CheckpointError(f"{source} is not a trainer checkpoint (no training state)")
        self._check_signature(state["signature"], source)
        self.core.load_state_dict(state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as error:
            raise CheckpointError(f"{source}: optimizer state does not fit: {error}") from error
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.balancer.load_state_dict(state["balancer"])
        if self.monitor is not None and state["monitor"] is not None:
            self.monitor.load_state_dict(state["monitor"])
        if self.early_stopping is not None and state["early_stopping"] is not None:
            self.early_stopping.load_state_dict(state["early_stopping"])
        grads = state.get("grads")
        for parameter, grad in zip(self._params(), grads or [], strict=False):
            parameter.grad = None if grad is None else grad.to(parameter.device)
        if grads is None:
            self.optimizer.zero_grad(set_to_none=True)
        trainer = state["trainer"]
        self.epoch = int(trainer["epoch"])
        self.global_step = int(trainer["global_step"])
        self.batch_in_epoch = int(trainer["batch_in_epoch"])
        self._micro = int(trainer["micro"])
        self.history = list(trainer["history"])
        self._metric_values = trainer["metric_values"]
        self.loss_scale = float(trainer["loss_scale"])
        self._good_steps = int(trainer["good_steps"])
        ranks = state["ranks"]
        if len(ranks) != distributed.world_size():
            raise CheckpointError(
                f"{source} was written by {len(ranks)} process(es); resume with the same "
                f"number (this run has {distributed.world_size()}) for an exact data order"
            )
        own = ranks[distributed.rank()]
        self._epoch_rng = own["epoch_rng"]
        best = self.run_dir / "best.pt" if self.run_dir is not None else None
        if best is not None and best.exists():
            self._best_state = load_checkpoint(best)
        rng: dict[str, Any] = own["rng"]
        return rng

    @property
    def best_metric(self) -> float:
        return self.early_stopping.best if self.early_stopping is not None else math.nan
