"""Balancing across processes: the one module of taskbalance that talks to ``torch.distributed``.

When ``torch.distributed`` is initialised with more than one process (``torchrun``, DDP),
:meth:`taskbalance.Balancer.backward` balances the **global** batch by default
(``distributed="auto"`` / ``"global"``): the method sees the losses, Gram matrix and Jacobian
that one process holding all ranks' batches would see, every rank applies the same
combination, and the gradient written is the one-process gradient on the global batch.

Semantics: each rank's losses are means over its own batch, and the global loss of a task is
the mean of the ranks' losses, ``L_i = (1/R) sum_r L_i^r`` (what DDP's gradient averaging
optimises; with equal per-rank batches it is the mean over the concatenated batch, with
unequal ones each rank's samples count ``1/R`` in total, as under plain DDP). So
``g_i = (1/R) sum_r g_i^r``.

What is exchanged per step, by family (``T`` tasks, ``P`` shared parameters, ``H`` task-
specific parameters, ``R`` processes; all-reduces of float32/float64 buffers):

* loss weighting (and steps reusing weights with ``update_every``): the ``T`` losses, then
  the combined gradient of all ``P + H`` parameters (the bytes of plain DDP + ``T`` floats);
* gradient methods at parameter level: the ``T`` losses, the local ``T x P`` Jacobian, the
  ``T`` weights (broadcast from rank 0, so every rank applies bit-identical weights), and the
  ``H`` head gradients. On gloo the Jacobian is all-reduced: every rank holds the global one
  and forms ``G`` and ``J^T w`` itself. On NCCL, for methods that need only ``G``, it is
  reduce-scattered by columns (:class:`ShardedGradients`: a ``T x T`` all-reduce of the Gram
  slices, an all-gather of ``J^T w``; half the Jacobian traffic). Direction methods (GradDrop,
  MoCo, DB-MTL) compute their direction from the all-reduced global Jacobian (their generators
  and state start equal on every rank and see equal inputs, so they stay equal);
* gradient methods at representation level: the ``T`` losses, the ``T x T`` Gram matrix of the
  representation gradients (the global one is ``(1/R^2) sum_r G_r``: each rank's samples are
  their own coordinates), the ``T`` weights, then ``P + H`` combined gradients.

``distributed="local"`` balances each rank's batch on its own (cheaper: no loss, Jacobian or
Gram exchange) and averages the resulting gradients: an approximation (the mean of per-rank
combinations is not the combination of the global batch; where one rank's method raises,
e.g. refusing its own losses, every rank raises: :meth:`Communicator.together`). The
gradients are written to ``.grad`` by the balancer itself, averaged here: DDP's reducer is
not used (the balancer never calls ``backward`` on the model), so a model needs no wrapper
at all, and DDP's ``no_sync`` has no effect on it (every balancer step exchanges;
accumulation stays exact).

FSDP-sharded parameters are refused with a clear error (their gradients are shards: the Gram
matrix would need the shards' partial Gram matrices, not implemented yet).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from taskbalance.engine.gramian import power_of_two
from taskbalance.engine.host import fetch, to_device
from taskbalance.engine.sparse import dense_gradient
from taskbalance.engine.task_gradients import RowScaledGradients

__all__ = [
    "Communicator",
    "DistributedMode",
    "ShardedGradients",
    "check_parameters",
    "gather",
    "init_from_environment",
    "is_main_process",
    "rank",
    "shard_jacobian",
    "world_size",
]

DistributedMode = Literal["auto", "global", "local", "off"]

_Result = TypeVar("_Result")


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def check_parameters(params: Sequence[Tensor]) -> None:
    """Refuse parameters the distributed balancer cannot handle exactly (FSDP shards)."""
    for p in params:
        kind = type(p).__name__
        if kind == "DTensor" or getattr(p, "_is_flat_param", False) or kind == "FlatParameter":
            raise ValueError(
                "the shared parameters are FSDP shards (DTensor / FlatParameter): taskbalance "
                "balances exactly under DistributedDataParallel or with an unwrapped model "
                "in a process group; FSDP is not supported yet. Use DDP, or shard only the "
                "task-specific parts"
            )


@dataclass(frozen=True)
class Communicator:
    """The collective operations one balancer step needs, on one process group."""

    mode: Literal["global", "local"]
    world_size: int
    group: Any = None  # a torch.distributed ProcessGroup (None: the default group)

    @classmethod
    def resolve(cls, mode: DistributedMode, group: Any = None) -> Communicator | None:
        """The communicator for ``mode`` now, or None for a single-process step."""
        if mode == "off":
            return None
        if not _initialised():
            if mode in ("global", "local"):
                raise ValueError(
                    f"distributed={mode!r} needs torch.distributed to be initialised "
                    "(torchrun, or torch.distributed.init_process_group)"
                )
            return None
        world = dist.get_world_size(group)
        if world == 1:
            return None
        return cls("local" if mode == "local" else "global", world, group)

    @property
    def is_global(self) -> bool:
        return self.mode == "global"

    @property
    def shards_columns(self) -> bool:
        """Whether the parameter-level Jacobian is reduce-scattered by columns (NCCL, whose
        reduce-scatter is native) rather than all-reduced (gloo: its reduce-scatter measured
        slower than its all-reduce of twice the bytes, 121 vs 79 ms per step at T = 10 in
        ``benchmarks/distributed_step.py``). Both give the same update (tested on gloo)."""
        return str(dist.get_backend(self.group)) == "nccl"

    @property
    def device(self) -> torch.device:
        """Where this group's collectives run: the current GPU for NCCL, else the CPU (host
        results such as task weights and the Gram matrix travel there and back)."""
        if str(dist.get_backend(self.group)) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def mean(self, tensor: Tensor) -> Tensor:
        """The mean of ``tensor`` over the ranks (a new tensor; every rank gets the same)."""
        result = tensor.detach().clone()
        dist.all_reduce(result, group=self.group)
        return result / self.world_size

    def same_everywhere(self, tensor: Tensor) -> Tensor:
        """Rank 0's ``tensor`` on every rank (bit-identical weights on all ranks)."""
        result = tensor.detach().to(self.device, copy=True).contiguous()
        source = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        dist.broadcast(result, src=source, group=self.group)
        return result if result.device == tensor.device else fetch(result)[0].to(tensor.dtype)

    def global_blocks(self, blocks: Sequence[Tensor]) -> list[Tensor]:
        """The global Jacobian's blocks: the mean over ranks of the local ``(T, ...)``
        blocks, in one flat all-reduce."""
        flat = torch.cat([b.detach().reshape(b.shape[0], -1) for b in blocks], dim=1)
        flat = self.mean(flat)
        pieces = torch.split(flat, [b[0].numel() for b in blocks], dim=1)
        return [p.reshape(b.shape) for p, b in zip(pieces, blocks, strict=True)]

    def global_representation_gramian(self, local: Tensor) -> Tensor:
        """``(1/R^2) sum_r G_r``: the Gram matrix of the global loss's representation
        gradients (each rank's samples are separate coordinates, scaled by ``1/R``)."""
        total = local.detach().to(self.device, copy=True)
        dist.all_reduce(total, group=self.group)
        total = total / self.world_size**2
        return total if total.device == local.device else fetch(total)[0]

    def average_gradients(
        self, params: Sequence[Tensor], grads: Sequence[Tensor | None]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Average per-parameter gradients over the ranks in one flat all-reduce. A gradient
        missing on a rank (the parameter did not reach its losses) counts as zero there; a
        parameter no rank reached is left out, as in a single process."""
        present = [g for g in grads if g is not None]
        dtype = torch.float32  # at least: half-precision gradients are summed in float32
        for g in present:
            dtype = torch.promote_types(dtype, g.dtype)
        device = params[0].device if params else torch.device("cpu")  # (NCCL: the GPU)
        parts = [
            (
                dense_gradient(g.detach(), p).reshape(-1).to(dtype)
                if g is not None
                else torch.zeros(p.numel())
            ).to(device, dtype)
            for p, g in zip(params, grads, strict=True)
        ]
        used = torch.tensor([g is not None for g in grads], dtype=dtype, device=device)
        flat = self.mean(torch.cat([*parts, used]))
        used_anywhere = (flat[flat.numel() - len(params) :] > 0).tolist()
        offset = 0
        kept_params, kept_grads = [], []
        for p, part, keep in zip(params, parts, used_anywhere, strict=True):
            size = part.numel()
            if keep:
                kept_params.append(p)
                kept_grads.append(flat[offset : offset + size].view(p.shape).to(p.dtype))
            offset += size
        return kept_params, kept_grads

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (so that every rank takes the same branch).
        On the group's device: NCCL cannot reduce a CPU tensor."""
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
        return bool(value.item() > 0)

    def together(self, compute: Callable[[], _Result]) -> _Result:
        """``compute()`` on this rank, and whether it raised on any rank (one scalar
        all-reduce): where it raised, every rank raises (that rank its own error, the others
        a ``RuntimeError`` pointing to it) instead of the others waiting at the next
        collective (``distributed="local"``: each rank's method sees its own losses, so one
        rank's losses can be refused, e.g. a negative loss for ``gls``)."""
        try:
            result = compute()
        except Exception:
            self.any(True)
            raise
        if self.any(False):
            raise RuntimeError(
                "the balancing method raised on another rank (its error is in that rank's "
                "output); every rank stops with it instead of waiting at the next collective"
            )
        return result


# ----------------------------------------------------------------- processes (the trainer's)
def rank() -> int:
    """This process's rank in the default group (0 without torch.distributed)."""
    return dist.get_rank() if _initialised() else 0


def world_size() -> int:
    return dist.get_world_size() if _initialised() else 1


def is_main_process() -> bool:
    """Whether this process writes logs, checkpoints and reports (rank 0)."""
    return rank() == 0


def gather(value: Any) -> list[Any]:
    """Every rank's ``value`` (a picklable object of this process), in rank order; a
    one-element list without torch.distributed."""
    if world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def init_from_environment() -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``
    > 1, ``RANK``, ``MASTER_ADDR``...), with NCCL on CUDA and gloo otherwise; returns whether
    this is a distributed run. A no-op when already initialised or not launched by torchrun."""
    if _initialised():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


# ----------------------------------------------------------------- column-sharded Jacobian
class ShardedGradients(RowScaledGradients):
    """The global Jacobian of a parameter-level step held as column slices, one per rank.

    Built by :meth:`Communicator.shard_jacobian`: a reduce-scatter of the local ``T x P``
    Jacobians leaves each rank the mean over ranks of its ``P / R`` columns ``S_r``; the Gram
    matrix is ``sum_r S_r S_r^T`` (one ``T x T`` all-reduce) and ``J^T w`` is ``S_r^T w`` on
    each rank, all-gathered. Half the bytes of all-reducing the Jacobian, and no rank holds
    more than its slice of the global one. Entries are divided by a power of two ``s`` (the
    largest entry over all ranks) before squaring, so the Gram matrix is exact at any scale.
    """

    def __init__(
        self,
        comm: Communicator,
        mine: Tensor,
        scale: float,
        gramian: Tensor,
        shapes: Sequence[torch.Size],
        size: int,
        row_scale: Tensor | None = None,
    ) -> None:
        super().__init__(gramian.shape[0], row_scale)
        self._comm, self._mine, self._scale = comm, mine, scale
        self._normalised_gramian = gramian  # of J / s
        self._shapes, self._size = tuple(shapes), size

    @property
    def raw_gramian(self) -> Tensor:
        return self._normalised_gramian * self._scale**2

    @property
    def shapes(self) -> tuple[torch.Size, ...]:
        return self._shapes

    def _normalised_raw(self) -> tuple[Tensor, float]:
        return self._normalised_gramian, self._scale

    def all_finite(self) -> bool:
        return bool(torch.isfinite(self._normalised_gramian).all()) and math.isfinite(self._scale)

    def with_row_scale(self, scale: Tensor | None) -> ShardedGradients:
        return ShardedGradients(
            self._comm,
            self._mine,
            self._scale,
            self._normalised_gramian,
            self._shapes,
            self._size,
            scale,
        )

    def divided_by(self, factor: float) -> ShardedGradients:
        return ShardedGradients(
            self._comm,
            self._mine / factor,
            self._scale / factor,  # G / factor^2 = (s / factor)^2 (its normalised G)
            self._normalised_gramian,
            self._shapes,
            self._size,
            self.row_scale,
        )

    def _combine_unscaled(self, weights: Tensor) -> list[Tensor]:
        local = to_device(weights, self._mine.device, torch.float64) @ self._mine.to(torch.float64)
        gathered = torch.empty(
            local.numel() * self._comm.world_size, dtype=local.dtype, device=local.device
        )
        dist.all_gather_into_tensor(gathered, local.contiguous(), group=self._comm.group)
        flat = gathered[: self._size]
        pieces = torch.split(flat, [s.numel() for s in self._shapes])
        return [p.reshape(s) for p, s in zip(pieces, self._shapes, strict=True)]


def shard_jacobian(comm: Communicator, blocks: Sequence[Tensor]) -> ShardedGradients:
    """The global Jacobian of the local ``(T, ...)`` blocks as :class:`ShardedGradients`:
    one reduce-scatter (``T P`` floats), one scalar all-reduce (the scale), one ``T x T``
    all-reduce."""
    num_tasks = blocks[0].shape[0]
    flat = torch.cat([b.detach().reshape(num_tasks, -1) for b in blocks], dim=1)
    size, world = flat.shape[1], comm.world_size
    width = -(-size // world)
    padded = torch.nn.functional.pad(flat, (0, width * world - size))
    by_rank = padded.reshape(num_tasks, world, width).transpose(0, 1).reshape(-1, width)
    mine = torch.empty(num_tasks, width, dtype=flat.dtype, device=flat.device)
    dist.reduce_scatter_tensor(mine, by_rank.contiguous(), group=comm.group)
    mine = mine / world
    largest = (
        mine.detach().abs().amax().to(torch.float64).reshape(1)
        if mine.numel()
        else (torch.zeros(1, dtype=torch.float64, device=flat.device))
    )
    dist.all_reduce(largest, op=dist.ReduceOp.MAX, group=comm.group)
    peak = float(largest.item())
    scale = power_of_two(peak) if peak > 0 and math.isfinite(peak) else 1.0
    wide = mine.to(torch.float64) / scale
    gramian = wide @ wide.T
    dist.all_reduce(gramian, group=comm.group)
    (on_host,) = fetch(gramian)
    return ShardedGradients(comm, mine, scale, on_host, [b.shape[1:] for b in blocks], size)
