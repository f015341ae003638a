"""Training: tasks, data, the trainer, callbacks and checkpoints."""

from taskbalance.train.callbacks import Callback, CSVLogger, EarlyStopping, TensorBoardLogger
from taskbalance.train.checkpoint import (
    CheckpointError,
    atomic_save,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
)
from taskbalance.train.data import Batch, MultiTaskSampler, unpack_batch
from taskbalance.train.tasks import LOSSES, Task
from taskbalance.train.trainer import Trainer

__all__ = [
    "LOSSES",
    "Batch",
    "CSVLogger",
    "Callback",
    "CheckpointError",
    "EarlyStopping",
    "MultiTaskSampler",
    "Task",
    "TensorBoardLogger",
    "Trainer",
    "atomic_save",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
    "unpack_batch",
]
