"""Counting a step's host reads of device values, and its device mix-ups, on a CPU.

On a CPU every tensor is on the host, so a read that would stall a GPU (``.item()`` on a
device tensor) looks like any other. :class:`DeviceReadAudit` tells them apart by *tagging*
tensors, as a GPU would place them:

* outputs of :func:`taskbalance.engine.host.fetch` are **host** tensors; outputs of
  :func:`~taskbalance.engine.host.to_device` are **device** tensors;
* tensors created without tensor inputs while the audit runs (``torch.zeros``,
  ``torch.tensor``, Python scalars) are **neutral** (they take the side they are combined with);
* every other tensor (parameters, inputs, activations, gradients) is a **device** tensor,
  and an operation's output is on the device if any input is, else on the host if any input
  is, else neutral.

It counts (1) every transfer made by ``fetch`` and (2) every read of a device tensor's value
(``aten._local_scalar_dense``: ``.item()``, ``float(t)``; ``aten.is_nonzero``: ``bool(t)``;
``Tensor.tolist()``), and it records as *mix-ups* operations that combine a host tensor of one
or more dimensions with a device tensor (on a GPU: "Expected all tensors to be on the same
device"; 0-dimensional host tensors are allowed, as CUDA allows CPU scalars).

Keep the audit active over every step whose state later steps read (warm-up steps too), so
that state created on the host is known as such; tagged tensors are kept alive while it runs.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from taskbalance.engine import host

__all__ = ["DeviceReadAudit"]

_READS = ("_local_scalar_dense", "is_nonzero", "item")
_HOST, _DEVICE, _NEUTRAL = "host", "device", "neutral"


class DeviceReadAudit(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Counts device reads and transfers, and collects device mix-ups (see the module)."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.reads = 0
        self.transfers = 0
        self.counting = True
        self.sites: Counter[str] = Counter()
        self.mixups: list[str] = []
        self._tags: dict[int, str] = {}
        self._alive: list[Tensor] = []
        self._remove_observer: Callable[[], None] = _nothing
        self._tolist: Any = None

    @property
    def count(self) -> int:
        """Host syncs a GPU step would make: transfers plus reads of device values."""
        return self.reads + self.transfers

    def reset(self) -> None:
        self.reads = self.transfers = 0
        self.sites.clear()
        self.mixups.clear()

    # ------------------------------------------------------------------ tagging
    def tag(self, tensor: Tensor) -> str:
        return self._tags.get(id(tensor), _DEVICE)

    def _mark(self, tensor: Tensor, tag: str) -> None:
        self._tags[id(tensor)] = tag
        self._alive.append(tensor)

    def _observe(self, kind: str, tensors: list[Tensor]) -> None:
        if kind == "fetch" and self.counting:
            self.transfers += 1
            self.sites[_site("fetch")] += 1
        for tensor in tensors:
            self._mark(tensor, _HOST if kind == "fetch" else _DEVICE)

    def _read(self, what: str) -> None:
        if self.counting:
            self.reads += 1
            self.sites[_site(what)] += 1

    # ------------------------------------------------------------------ dispatch
    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in ("lift_fresh", "lift_fresh_copy"):  # torch.tensor(...), Python scalars
            lifted = func(*args, **kwargs)
            self._mark(lifted, _NEUTRAL)
            return lifted
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        tags = [self.tag(t) for t in inputs]
        if name in _READS and _DEVICE in tags:
            self._read(name)
        if _DEVICE in tags and any(
            tag == _HOST and t.dim() > 0 for t, tag in zip(inputs, tags, strict=True)
        ):
            shapes = [f"{tag}{tuple(t.shape)}" for t, tag in zip(inputs, tags, strict=True)]
            self.mixups.append(f"{func}: {', '.join(shapes)} at {_site(name)}")
        out = func(*args, **kwargs)
        if _DEVICE in tags:
            return out  # (untagged means device)
        tag = _HOST if _HOST in tags else _NEUTRAL
        for result in tree_leaves(out):
            if isinstance(result, Tensor):
                self._mark(result, tag)
        return out

    def __enter__(self) -> DeviceReadAudit:
        self._remove_observer = host.add_observer(self._observe)
        self._tolist = Tensor.tolist
        audit = self
        original = self._tolist

        def tolist(tensor: Tensor) -> Any:
            if audit.tag(tensor) == _DEVICE:
                audit._read("tolist")
            return original(tensor)

        Tensor.tolist = tolist  # type: ignore[method-assign, assignment]
        super().__enter__()  # type: ignore[no-untyped-call]
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)  # type: ignore[no-untyped-call]
        Tensor.tolist = self._tolist  # type: ignore[method-assign]
        self._remove_observer()


def _nothing() -> None:
    pass


def _site(what: str) -> str:
    """Where in taskbalance a read happened (the innermost three frames)."""
    frames = [
        f
        for f in traceback.extract_stack()
        if "taskbalance" in f.filename and not f.filename.endswith("host_audit.py")
    ]
    where = " <- ".join(
        f"{f.filename.rsplit('taskbalance/', 1)[-1]}:{f.lineno}" for f in frames[-3:][::-1]
    )
    return f"{what} at {where}"
