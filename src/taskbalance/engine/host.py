"""Host reads: where a balancing step turns device values into host values.

On an accelerator every read of a device value on the host (``.item()``, ``bool(t)``,
``.tolist()``, a copy to the CPU) waits until all queued work has finished: a *sync*. The
step's host decisions (is a loss finite? is the Gram matrix in float32's safe range? which
constraints of the dual-cone problem are active? is the update finite?) are therefore made
from few, packed reads, all made here:

* :func:`fetch` copies small tensors to the host in one transfer (packed into one buffer).
  The ``T x T`` Gram matrix is fetched once per step, and the losses of the step travel with
  it (:func:`defer`); every method that needs only the Gram matrix, and every iterative
  solver (Wolfe's min-norm, the dual-cone active set, Newton for Nash-MTL and FairGrad,
  CAGrad's search), then runs on that host copy, in float64. ``T x T`` problems are
  latency-bound on a GPU (a kernel launch per tiny operation); on the host they cost
  microseconds and no device sync at all.
* :func:`to_device` sends host results (task weights, per-task factors) back to the device
  without waiting for it (pinned memory, non-blocking copy).

A step of a loss-weighting method reads once (its losses' finiteness and the update's norm,
together); a step of a Gram-matrix method twice (the Gram matrix with the losses, then the
update's norm). Steps that meet overflow or non-finite values take exact slow paths that may
read more. ``benchmarks/host_syncs.py`` counts the reads (observers see each transfer).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = [
    "STEP_LOSSES",
    "add_observer",
    "already_fetched",
    "defer",
    "deferred",
    "fetch",
    "step_reads",
    "to_device",
]

STEP_LOSSES = "losses"
"""Key under which a balancing step defers its detached losses (``(T,)``)."""

# called with ("fetch", host copies) or ("send", device copies): benchmarks count transfers
_observers: list[Callable[[str, list[Tensor]], None]] = []
_pending: contextvars.ContextVar[dict[str, Tensor] | None] = contextvars.ContextVar(
    "taskbalance_pending_reads", default=None
)
_fetched: contextvars.ContextVar[dict[str, Tensor] | None] = contextvars.ContextVar(
    "taskbalance_fetched_reads", default=None
)


def add_observer(observer: Callable[[str, list[Tensor]], None]) -> Callable[[], None]:
    """Call ``observer(kind, tensors)`` on every transfer; returns a function that removes it."""
    _observers.append(observer)
    return lambda: _observers.remove(observer)


@contextlib.contextmanager
def step_reads() -> Iterator[None]:
    """Scope of one step: tensors given to :func:`defer` travel with the step's next fetch."""
    pending_token = _pending.set({})
    fetched_token = _fetched.set({})
    try:
        yield
    finally:
        _pending.reset(pending_token)
        _fetched.reset(fetched_token)


def defer(key: str, tensor: Tensor) -> None:
    """Mark ``tensor`` as needed on the host later in this step: it is copied with the next
    :func:`fetch` (or alone, by :func:`deferred`, if none comes first)."""
    pending = _pending.get()
    if pending is None:
        raise RuntimeError("defer() is only meaningful inside step_reads()")
    pending[key] = tensor


def deferred(key: str) -> Tensor:
    """The host copy of the tensor deferred under ``key`` (fetching it now if no fetch has
    carried it yet)."""
    fetched = _fetched.get()
    if fetched is not None and key in fetched:
        return fetched[key]
    pending = _pending.get()
    if pending is None or key not in pending:
        raise KeyError(f"nothing was deferred under {key!r} in this step")
    fetch()
    assert fetched is not None
    return fetched[key]


def already_fetched(key: str) -> Tensor | None:
    """The host copy of the tensor deferred under ``key`` if a fetch of this step has already
    carried it, else None (never reads the device: for checks that are free on a host copy
    and would cost a sync on the device)."""
    fetched = _fetched.get()
    return None if fetched is None else fetched.get(key)


def fetch(*tensors: Tensor) -> list[Tensor]:
    """Host copies (float64, detached) of ``tensors`` and of the step's deferred tensors, in
    one device-to-host transfer. On the CPU it is a dtype conversion, never a transfer."""
    pending = _pending.get() or {}
    riders = list(pending.items())
    everything = [*tensors, *(t for _, t in riders)]
    if not everything:
        return []
    device = everything[0].device
    if device.type == "cpu":
        host = [_detached(t).to(torch.float64, copy=True) for t in everything]
    else:
        # MPS has no float64: pack in float32 there (exact for float32 and smaller inputs)
        packing = torch.float32 if device.type == "mps" else torch.float64
        packed = torch.cat([_detached(t).reshape(-1).to(device, packing) for t in everything])
        flat = packed.to("cpu").to(torch.float64)
        pieces = torch.split(flat, [t.numel() for t in everything])
        host = [piece.view(t.shape) for piece, t in zip(pieces, everything, strict=True)]
    for observer in _observers:
        observer("fetch", host)
    fetched = _fetched.get()
    if fetched is not None:
        for (key, _), copy in zip(riders, host[len(tensors) :], strict=True):
            fetched[key] = copy
        pending.clear()
    return host[: len(tensors)]


def _detached(tensor: Tensor) -> Tensor:
    """``tensor`` cut from the graph (itself where it is in none: a detach is an operation,
    ~10 us right after a backward)."""
    return tensor.detach() if tensor.requires_grad else tensor


def to_device(tensor: Tensor, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    """``tensor`` on ``device`` (in ``dtype``, or its own), sent without waiting for the
    device (pinned memory, non-blocking copy); a new tensor object even where nothing moves."""
    dtype = dtype or tensor.dtype
    if tensor.device == device:
        result = tensor.to(dtype)
        result = result if result is not tensor else tensor.detach()
    elif device.type == "cuda" and tensor.device.type == "cpu":
        result = tensor.to(dtype).pin_memory().to(device, non_blocking=True)
    else:
        result = tensor.to(device, dtype)
    for observer in _observers:
        observer("send", [result])
    return result
