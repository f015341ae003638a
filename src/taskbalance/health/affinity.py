"""Inter-task affinity and task grouping.

Two affinities, both ``T x T`` with entry ``[i, j]`` = how much task ``i`` helps task ``j``:

* **gradient cosine** (cheap): the cosine between the tasks' gradients, averaged over training;
  :class:`HealthMonitor` keeps it for free whenever a gradient method runs
  (:meth:`HealthMonitor.mean_cosines`).
* **look-ahead loss change** (Fifty et al., "Efficiently Identifying Task Groupings for
  Multi-Task Learning", NeurIPS 2021, TAG): ``Z[i, j] = 1 - L_j(theta - lr g_i) / L_j(theta)``,
  the relative decrease of task ``j``'s loss after a step on task ``i``'s gradient alone
  (shared parameters only), averaged over training (:class:`LookaheadAffinity`). Costs one
  batched per-task backward and ``T`` extra forwards per measurement: measure every few steps.

:func:`suggest_groups` turns an affinity matrix into groups of tasks to train together for a
budget of ``k`` models: exhaustive search over the partitions for up to 10 tasks, greedy
agglomeration beyond.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from torch import Tensor

from taskbalance._validation import finite_number
from taskbalance.engine.jacobian import task_jacobian

__all__ = [
    "Grouping",
    "LookaheadAffinity",
    "lookahead_affinity",
    "rank_groupings",
    "suggest_groups",
]

logger = logging.getLogger(__name__)

_EXACT_LIMIT = 10


def lookahead_affinity(
    shared_params: Iterable[Tensor],
    losses_fn: Callable[[], Sequence[Tensor] | Mapping[str, Tensor]],
    lr: float,
) -> Tensor:
    """One TAG measurement: ``Z[i, j] = 1 - L_j(theta - lr g_i) / L_j(theta)``.

    A relative loss change needs losses ``>= 0`` (negative ones are refused); where
    ``L_j(theta) = 0`` (task ``j`` already solved) the column is 0. The losses must be a
    deterministic function of the parameters (the same batch, dropout off: ``model.eval()``),
    else the affinity measures the noise between calls.

    Args:
        shared_params: the shared parameters ``theta`` (restored exactly afterwards).
        losses_fn: computes the task losses on a fixed batch with the current parameters.
        lr: the look-ahead step size (use the training learning rate).
    """
    lr = finite_number("lr (the look-ahead step size)", lr)
    params = list(shared_params)
    losses = losses_fn()
    values = list(losses.values()) if isinstance(losses, Mapping) else list(losses)
    stacked = torch.stack([v.reshape(()) for v in values])
    before = stacked.detach().to(torch.float64)
    if bool((before < 0).any()):
        raise ValueError(
            f"the look-ahead affinity is a relative loss decrease and needs losses >= 0, got "
            f"{before.tolist()}: shift each loss by a lower bound (e.g. L - L_min) first"
        )
    blocks, _ = task_jacobian(stacked, params)
    num_tasks = stacked.shape[0]
    affinity = torch.zeros(num_tasks, num_tasks, dtype=torch.float64)
    originals = [p.detach().clone() for p in params]
    try:
        for i in range(num_tasks):
            with torch.no_grad():
                for p, block in zip(params, blocks, strict=True):
                    p.sub_(lr * block[i])
                after_losses = losses_fn()
                after_values = (
                    list(after_losses.values())
                    if isinstance(after_losses, Mapping)
                    else list(after_losses)
                )
                after = torch.stack([v.reshape(()) for v in after_values]).to(torch.float64)
                for p, original in zip(params, originals, strict=True):
                    p.copy_(original)
            solved = before == 0
            safe = torch.where(solved, torch.ones_like(before), before)
            affinity[i] = torch.where(solved, 0.0, 1 - after / safe).cpu()
    finally:
        with torch.no_grad():
            for p, original in zip(params, originals, strict=True):
                p.copy_(original)
    return affinity


class LookaheadAffinity:
    """Running mean of TAG look-ahead affinities (see :func:`lookahead_affinity`).

    Call :meth:`measure` every few training steps (before ``optimizer.step()``), then read
    :attr:`matrix` and pass it to :func:`suggest_groups`. A measurement that is not finite
    (a loss that overflowed before or after the look-ahead step) is returned but left out of
    the mean, with a warning: one bad batch does not poison the running mean for good.
    """

    def __init__(self, shared_params: Iterable[Tensor], lr: float) -> None:
        self.shared_params = list(shared_params)
        self.lr = finite_number("lr (the look-ahead step size)", lr)
        self.total: Tensor | None = None
        self.count = 0
        self.skipped = 0

    def measure(self, losses_fn: Callable[[], Sequence[Tensor] | Mapping[str, Tensor]]) -> Tensor:
        affinity = lookahead_affinity(self.shared_params, losses_fn, self.lr)
        if not bool(torch.isfinite(affinity).all()):
            self.skipped += 1
            logger.warning(
                "look-ahead affinity measurement not finite (a loss overflowed or is NaN): "
                "left out of the mean (%d left out so far)",
                self.skipped,
            )
            return affinity
        self.total = affinity if self.total is None else self.total + affinity
        self.count += 1
        return affinity

    @property
    def matrix(self) -> Tensor:
        if self.total is None:
            raise RuntimeError("no affinity measured yet: call measure() during training")
        return self.total / self.count

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "count": self.count, "skipped": self.skipped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.total = state["total"]
        self.count = int(state["count"])
        self.skipped = int(state.get("skipped", 0))


@dataclass(frozen=True)
class Grouping:
    """Groups of tasks and their total affinity (sum over tasks of the mean affinity onto the
    task from the other members of its group; a task alone contributes 0)."""

    groups: tuple[tuple[str, ...], ...]
    score: float

    def __str__(self) -> str:
        body = " | ".join(", ".join(group) for group in self.groups)
        return f"{body}  (total affinity {self.score:.4f})"


def _group_score(affinity: Tensor, members: Sequence[int]) -> float:
    if len(members) < 2:
        return 0.0
    index = torch.tensor(members)
    block = affinity[index][:, index].clone()
    block.fill_diagonal_(0.0)
    return float(block.sum(dim=0).sum()) / (len(members) - 1)


def _partitions(items: list[int], max_blocks: int) -> Iterator[list[list[int]]]:
    """Set partitions of ``items`` into at most ``max_blocks`` blocks."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in _partitions(rest, max_blocks):
        for position in range(len(partition)):
            yield [*partition[:position], [first, *partition[position]], *partition[position + 1 :]]
        if len(partition) < max_blocks:
            yield [[first], *partition]


def _check(affinity: Tensor, budget: int, names: Sequence[str] | None) -> tuple[Tensor, list[str]]:
    matrix = torch.as_tensor(affinity, dtype=torch.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"affinity must be a square T x T matrix, got shape {tuple(matrix.shape)}")
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError("affinity has non-finite entries")
    count = matrix.shape[0]
    labels = list(names) if names is not None else [f"task{i}" for i in range(count)]
    if len(labels) != count:
        raise ValueError(f"{len(labels)} names for {count} tasks")
    if len(set(labels)) != count:
        raise ValueError(f"task names must be distinct, got {labels}")
    if not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive number of models, got {budget!r}")
    return matrix, labels


def rank_groupings(
    affinity: Tensor, budget: int, names: Sequence[str] | None = None, top: int = 5
) -> list[Grouping]:
    """The ``top`` best groupings into at most ``budget`` groups (exhaustive; T <= 10)."""
    matrix, labels = _check(affinity, budget, names)
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise ValueError(f"top must be a positive number of groupings, got {top!r}")
    count = matrix.shape[0]
    if count > _EXACT_LIMIT:
        return [suggest_groups(matrix, budget, labels)]

    @cache
    def block_score(members: tuple[int, ...]) -> float:  # (2^T blocks, B_T partitions)
        return _group_score(matrix, members)

    scored = []
    for partition in _partitions(list(range(count)), budget):
        score = sum(block_score(tuple(block)) for block in partition)
        scored.append((score, partition))
    scored.sort(key=lambda item: -item[0])
    return [
        Grouping(tuple(tuple(labels[i] for i in sorted(b)) for b in sorted(p, key=min)), s)
        for s, p in scored[:top]
    ]


def suggest_groups(affinity: Tensor, budget: int, names: Sequence[str] | None = None) -> Grouping:
    """Best grouping of the tasks into at most ``budget`` groups for the given affinity.

    Exhaustive over all partitions for up to 10 tasks; beyond, greedy agglomeration: start from
    one group per task and repeatedly merge the two groups whose union raises the total
    affinity most, while there are more groups than the budget or a merge still helps.
    """
    matrix, labels = _check(affinity, budget, names)
    count = matrix.shape[0]
    if count <= _EXACT_LIMIT:
        return rank_groupings(matrix, budget, labels, top=1)[0]
    groups = [[i] for i in range(count)]
    while len(groups) > 1:
        best: tuple[float, int, int] | None = None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                gain = (
                    _group_score(matrix, groups[a] + groups[b])
                    - _group_score(matrix, groups[a])
                    - _group_score(matrix, groups[b])
                )
                if best is None or gain > best[0]:
                    best = (gain, a, b)
        assert best is not None
        gain, a, b = best
        if gain <= 0 and len(groups) <= budget:
            break
        groups[a] = groups[a] + groups[b]
        del groups[b]
    score = sum(_group_score(matrix, g) for g in groups)
    return Grouping(
        tuple(tuple(labels[i] for i in sorted(g)) for g in sorted(groups, key=min)), score
    )
