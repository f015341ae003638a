"""Trainer callbacks: a small hook set, early stopping and CSV / TensorBoard logging.

Hooks (all optional, each receives the trainer): ``on_fit_start``, ``on_step_end(trainer,
record)`` after every optimizer step with the step's record (losses, weights, norms),
``on_epoch_end(trainer, metrics)`` with the validation metrics, ``on_fit_end``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskbalance._validation import finite_number, is_positive_int
from taskbalance.distributed import is_main_process

if TYPE_CHECKING:
    from taskbalance.train.trainer import Trainer

__all__ = ["CSVLogger", "Callback", "EarlyStopping", "TensorBoardLogger"]


class Callback:
    def on_fit_start(self, trainer: Trainer) -> None:
        """Called once before the first step."""

    def on_step_end(self, trainer: Trainer, record: dict[str, float]) -> None:
        """Called after every optimizer step."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """Called after every epoch with the validation metrics (empty without validation)."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """Called once after training."""


class EarlyStopping:
    """Stop when a validation metric has not improved for ``patience`` epochs.

    Args:
        monitor: key of the validation metrics (e.g. ``"mean_loss"`` or ``"digit/accuracy"``).
        mode: ``"min"`` or ``"max"``.
        patience: epochs without improvement before stopping.
        min_delta: smallest change that counts as an improvement.
    """

    def __init__(
        self,
        monitor: str = "mean_loss",
        mode: str = "min",
        patience: int = 5,
        min_delta: float = 0.0,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if not is_positive_int(patience):
            raise ValueError(f"patience must be a whole number of epochs >= 1, got {patience!r}")
        finite_number("min_delta", min_delta, allow_zero=True)
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_epochs = 0

    def improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, metrics: dict[str, float]) -> tuple[bool, bool]:
        """``(improved, stop)`` after an epoch's validation metrics."""
        if self.monitor not in metrics:
            raise KeyError(
                f"early stopping monitors {self.monitor!r}, "
                f"not in validation metrics {sorted(metrics)}"
            )
        value = metrics[self.monitor]
        if self.improved(value):
            self.best, self.bad_epochs = value, 0
            return True, False
        self.bad_epochs += 1
        return False, self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = float(state["best"]), int(state["bad_epochs"])


class CSVLogger(Callback):
    """Writes ``steps.csv`` (every ``every`` steps: per-task loss, weight, gradient norm and
    cosines) and ``epochs.csv`` (validation metrics) into ``directory``.

    At the start of :meth:`~taskbalance.train.Trainer.fit` the files are cut back to the
    trainer's position: rows of steps and epochs after it (written by a run that was killed
    after its last checkpoint and is now resumed from it) are dropped, as is a torn last
    line, so the files hold each step once. A fresh trainer starts the files anew.
    """

    def __init__(self, directory: str | Path, every: int = 1) -> None:
        self.directory = Path(directory)
        self.every = every
        self._columns: dict[str, list[str]] = {}

    def on_fit_start(self, trainer: Trainer) -> None:
        self._columns.clear()
        if not is_main_process():
            return
        self._truncate("steps.csv", "step", trainer.global_step)
        self._truncate("epochs.csv", "epoch", trainer.epoch)

    def _truncate(self, name: str, key: str, last: int) -> None:
        path = self.directory / name
        if not path.exists():
            return
        text = path.read_text()
        lines = text.splitlines(keepends=True)
        if not lines:
            return
        header = next(csv.reader([lines[0]]), [])
        column = header.index(key) if key in header else None
        kept = [lines[0]] if lines[0].endswith("\n") else []
        for line in lines[1:]:
            if not line.endswith("\n"):
                break  # torn by a kill mid-write
            row = next(csv.reader([line]), [])
            if column is None or len(row) != len(header):
                break
            try:
                if float(row[column]) > last:
                    break
            except ValueError:
                break
            kept.append(line)
        if len(kept) <= 1:
            path.unlink()  # no row to keep: the next row writes a fresh header
        elif len(kept) < len(lines):
            temporary = path.with_name(f".{name}.truncate")
            temporary.write_text("".join(kept))
            temporary.replace(path)

    def _append(self, name: str, row: dict[str, Any]) -> None:
        if not is_main_process():  # under torch.distributed, rank 0 writes the logs
            return
        path = self.directory / name
        self.directory.mkdir(parents=True, exist_ok=True)
        columns = self._columns.get(name)
        if columns is None:
            if path.exists():
                with path.open() as stream:
                    columns = next(csv.reader(stream), list(row))
            else:
                columns = list(row)
                with path.open("w", newline="") as stream:
                    csv.writer(stream).writerow(columns)
            self._columns[name] = columns
        added = [key for key in row if key not in columns]
        if added:
            # a key the first rows lacked (a skipped first step has no weights, a task without
            # labels in the first batch no loss): widen the header, the earlier rows blank there
            columns = self._widen(path, columns + added)
            self._columns[name] = columns
        with path.open("a", newline="") as stream:
            csv.DictWriter(stream, fieldnames=columns).writerow(row)

    @staticmethod
    def _widen(path: Path, columns: list[str]) -> list[str]:
        """Rewrite ``path`` with the header ``columns`` (atomically: a kill leaves the old or
        the new file, never half of one)."""
        with path.open(newline="") as stream:
            rows = list(csv.DictReader(stream))
        temporary = path.with_name(f".{path.name}.widen")
        with temporary.open("w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        temporary.replace(path)
        return columns

    def on_step_end(self, trainer: Trainer, record: dict[str, float]) -> None:
        if record["step"] % self.every == 0:
            self._append("steps.csv", record)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self._append("epochs.csv", {"epoch": trainer.epoch, "step": trainer.global_step, **metrics})


class TensorBoardLogger(Callback):
    """Scalars to TensorBoard (needs the ``tensorboard`` package)."""

    def __init__(self, directory: str | Path, every: int = 1) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("TensorBoard logging needs `pip install tensorboard`") from error
        self.writer = SummaryWriter(str(directory)) if is_main_process() else None
        self.every = every

    def on_step_end(self, trainer: Trainer, record: dict[str, float]) -> None:
        if self.writer is None:
            return
        if record["step"] % self.every == 0:
            for key, value in record.items():
                if key != "step":
                    self.writer.add_scalar(f"train/{key}", value, int(record["step"]))

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            self.writer.add_scalar(f"val/{key}", value, trainer.global_step)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.flush()
