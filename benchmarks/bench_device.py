"""The device the benchmarks run on, and how they time and measure memory there.

``--device cuda`` in ``step_time.py`` and ``solver_time.py`` (``make bench-gpu``): tensors and
models go to the device, each timed call is bracketed by CUDA events and synchronised (so the
time is the device's, not the launch's), and memory is ``torch.cuda.max_memory_allocated``
above the set-up. On CPU: ``time.perf_counter`` around the call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

_DEVICE = torch.device("cpu")


def set_device(name: str) -> torch.device:
    """Use ``name`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``) for every benchmark tensor."""
    global _DEVICE
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA device is available here")
    _DEVICE = device
    return device


def device() -> torch.device:
    return _DEVICE


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds of ``call()`` on the current device, and its result."""
    if _DEVICE.type != "cuda":
        begin = time.perf_counter()
        result = call()
        return time.perf_counter() - begin, result
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(_DEVICE)
    start.record()
    result = call()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3, result


def cuda_peak_mib(step: Callable[[], Any], steps: int = 3) -> float:
    """Peak CUDA memory allocated by ``steps`` calls of ``step`` above what was allocated
    before them (MiB)."""
    torch.cuda.synchronize(_DEVICE)
    torch.cuda.reset_peak_memory_stats(_DEVICE)
    base = torch.cuda.memory_allocated(_DEVICE)
    for _ in range(steps):
        step()
    torch.cuda.synchronize(_DEVICE)
    return (torch.cuda.max_memory_allocated(_DEVICE) - base) / 2**20
