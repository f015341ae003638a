"""A training run that the kill-and-resume tests start, kill with SIGKILL and start again.

Usage: ``python resume_worker.py RUN_DIR LOADER`` with LOADER ``global`` (a DataLoader on the
global RNG), ``generator`` (a DataLoader with its own ``generator=``, as ``taskbalance run``
builds them) or ``sampler`` (a MultiTaskSampler over two such loaders, with ``rlw``: one
task per step). The run resumes from ``RUN_DIR/last.pt`` when it exists, prints ``training``
when its first step is about to run and ``done`` when it has finished (so the test times
training and kills the process during it, not during imports), and writes the final
parameters to ``RUN_DIR/final.pt``. With ``KILL_AFTER_SAVE=N`` it kills itself with SIGKILL
right after its N-th checkpoint of this process (a crash just after a checkpoint), with
``KILL_AFTER_SAVE=epoch`` right after its first epoch-end checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from taskbalance.models import HardSharing
from taskbalance.train import Callback, MultiTaskSampler, Task, Trainer, save_checkpoint
from test_trainer import collate, dataset

torch.set_num_threads(1)


def data(seed: int) -> TensorDataset:
    return dataset(n=160, seed=seed)


def single(task: str) -> Any:
    def pick(rows: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
        x, targets = collate(rows)
        return x, targets[task]

    return pick


def loader(kind: str) -> Any:
    if kind == "global":
        return DataLoader(data(0), batch_size=16, shuffle=True, collate_fn=collate)
    if kind == "generator":
        generator = torch.Generator().manual_seed(7)
        return DataLoader(
            data(0), batch_size=16, shuffle=True, collate_fn=collate, generator=generator
        )
    loaders = {
        task: DataLoader(
            data(i),
            batch_size=16,
            shuffle=True,
            collate_fn=single(task),
            generator=torch.Generator().manual_seed(11 + i),
        )
        for i, task in enumerate(("a", "b"))
    }
    return MultiTaskSampler(loaders, strategy="temperature", seed=3)


class Announce(Callback):
    def on_fit_start(self, trainer: Trainer) -> None:
        print("training", flush=True)


def main() -> None:
    run_dir, kind = Path(sys.argv[1]), sys.argv[2]
    torch.manual_seed(123)
    trunk = nn.Sequential(
        nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 32), nn.ReLU()
    )
    model = HardSharing(trunk, {"a": nn.Linear(32, 3), "b": nn.Linear(32, 1)})
    trainer = Trainer(
        model,
        [Task("a", "cross_entropy", ["accuracy"]), Task("b", "mse", ["mae"])],
        "famo" if kind != "sampler" else "rlw",  # one task per step: a stateless method
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        run_dir=run_dir,
        checkpoint_every=4,
        grad_accumulation=2 if kind == "generator" else 1,
        callbacks=[Announce()],
        seed=0,
    )
    kill_after = os.environ.get("KILL_AFTER_SAVE", "0")
    saves = 0
    save = trainer.save_checkpoint

    def save_then_maybe_die(path: str | Path) -> Path:
        nonlocal saves
        written = save(path)
        saves += 1
        at_epoch_end = trainer.batch_in_epoch == 0
        if str(saves) == kill_after or (kill_after == "epoch" and at_epoch_end):
            os.kill(os.getpid(), signal.SIGKILL)
        return written

    trainer.save_checkpoint = save_then_maybe_die  # type: ignore[method-assign]
    last = run_dir / "last.pt"
    val = DataLoader(data(1), batch_size=64, collate_fn=collate)
    trainer.fit(loader(kind), val, epochs=6, resume=last if last.exists() else None)
    print("done", flush=True)
    save_checkpoint({"parameters": list(trainer.model.state_dict().values())}, run_dir / "final.pt")


if __name__ == "__main__":
    main()
