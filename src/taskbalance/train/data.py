"""Multi-task data: batch conventions, missing labels, and merging one dataset per task.

Batches the trainer understands:

* ``(inputs, targets)`` or ``(inputs, targets, masks)``: one input, a dict ``task -> target``
  and optionally a dict ``task -> (batch,) bool mask`` of which samples are labelled for the
  task (missing labels: the loss is taken over labelled samples only; a task with no labelled
  sample in the batch is left out of that step entirely);
* ``{"inputs": ..., "targets": {...}, "masks": {...}}``, the same as a dict;
* ``(task, (inputs, target))`` as yielded by :class:`MultiTaskSampler` (one dataset per task).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from taskbalance._validation import check_choice, finite_number, is_positive_int

__all__ = ["Batch", "MultiTaskSampler", "unpack_batch"]

Strategy = Literal["round_robin", "proportional", "temperature"]

_EXHAUSTED = object()


@dataclass
class Batch:
    inputs: Any
    targets: dict[str, Tensor]
    masks: dict[str, Tensor]


def unpack_batch(batch: Any) -> Batch:
    """Normalise the batch formats above into a :class:`Batch`."""
    if isinstance(batch, Mapping):
        if "inputs" not in batch or "targets" not in batch:
            raise ValueError("a dict batch needs 'inputs' and 'targets' (and optionally 'masks')")
        return Batch(batch["inputs"], dict(batch["targets"]), dict(batch.get("masks") or {}))
    if isinstance(batch, tuple | list):
        if len(batch) == 2 and isinstance(batch[0], str):
            task, (inputs, target) = batch
            return Batch(inputs, {task: target}, {})
        if len(batch) in (2, 3) and isinstance(batch[1], Mapping):
            masks = dict(batch[2]) if len(batch) == 3 and batch[2] is not None else {}
            return Batch(batch[0], dict(batch[1]), masks)
    raise ValueError(
        "batches must be (inputs, {task: target}), (inputs, {task: target}, {task: mask}), "
        "a dict with 'inputs'/'targets'/'masks', or (task, (inputs, target)) from "
        f"MultiTaskSampler; got {type(batch).__name__}"
    )


class MultiTaskSampler:
    """Merge one data loader per task into one stream of ``(task, batch)`` steps.

    Each step draws the task whose loader supplies the next batch:

    * ``"round_robin"``: tasks in turn;
    * ``"proportional"``: with probability proportional to the task's dataset size ``n_t``;
    * ``"temperature"``: proportional to ``n_t^(1/T)`` (``T = 1`` is proportional, large ``T``
      approaches uniform; 2-5 is common to up-sample small tasks).

    A loader that runs out is restarted. An epoch is ``steps_per_epoch`` steps (default: the
    total number of batches of all loaders). The draws are seeded per epoch
    (:meth:`set_epoch`, called by the trainer), so an epoch replays exactly.
    """

    def __init__(
        self,
        loaders: Mapping[str, Iterable[Any]],
        strategy: Strategy = "proportional",
        temperature: float = 2.0,
        steps_per_epoch: int | None = None,
        seed: int = 0,
    ) -> None:
        if not loaders:
            raise ValueError("MultiTaskSampler needs at least one loader")
        check_choice(strategy, ("round_robin", "proportional", "temperature"), "strategy")
        finite_number("temperature", temperature)
        if steps_per_epoch is not None and not is_positive_int(steps_per_epoch):
            raise ValueError(
                f"steps_per_epoch must be a positive int (or None: every loader's batches), "
                f"got {steps_per_epoch!r}"
            )
        self.loaders = dict(loaders)
        self.strategy = strategy
        self.temperature = float(temperature)
        self.seed = seed
        self.epoch = 0
        # (round robin needs no sizes: any re-iterable loader will do, given steps_per_epoch)
        self.sizes = (
            {}
            if strategy == "round_robin" and steps_per_epoch is not None
            else {task: self._size(loader) for task, loader in self.loaders.items()}
        )
        empty = [task for task, size in self.sizes.items() if size == 0]
        if empty:
            raise ValueError(
                f"the loader(s) of task(s) {empty} are empty: a drawn task would have no batch "
                "to give; leave those tasks out or give them data"
            )
        self.steps_per_epoch = steps_per_epoch or sum(
            self._batches(loader) for loader in self.loaders.values()
        )

    @staticmethod
    def _size(loader: Iterable[Any]) -> int:
        dataset = getattr(loader, "dataset", None)
        if dataset is not None and hasattr(dataset, "__len__"):
            return len(dataset)
        return MultiTaskSampler._batches(loader)

    @staticmethod
    def _batches(loader: Iterable[Any]) -> int:
        if not hasattr(loader, "__len__"):
            raise ValueError(
                "a loader without a length (no __len__, no sized .dataset) works only with "
                "strategy='round_robin' and steps_per_epoch=N; proportional and temperature "
                "sampling weigh tasks by their dataset sizes"
            )
        return len(loader)  # type: ignore[arg-type]

    def probabilities(self) -> dict[str, float]:
        """Probability of drawing each task at a step."""
        if self.strategy == "round_robin":
            return {task: 1 / len(self.loaders) for task in self.loaders}
        power = 1.0 if self.strategy == "proportional" else 1.0 / self.temperature
        raw = {task: size**power for task, size in self.sizes.items()}
        total = sum(raw.values())
        return {task: value / total for task, value in raw.items()}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        tasks = list(self.loaders)
        weights = [self.probabilities()[t] for t in tasks]
        iterators: dict[str, Iterator[Any]] = {}
        for step in range(self.steps_per_epoch):
            task = (
                tasks[step % len(tasks)]
                if self.strategy == "round_robin"
                else rng.choices(tasks, weights)[0]
            )
            if task not in iterators:
                iterators[task] = iter(self.loaders[task])
            try:
                batch = next(iterators[task])
            except StopIteration:
                iterators[task] = iter(self.loaders[task])
                batch = next(iterators[task], _EXHAUSTED)
                if batch is _EXHAUSTED:
                    raise ValueError(
                        f"the loader of task {task!r} gave no batch after a restart (a "
                        "one-shot iterator, or a dataset smaller than its batch size with "
                        "drop_last=True?): pass a DataLoader or another re-iterable loader"
                    ) from None
            yield task, batch
