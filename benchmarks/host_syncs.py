"""Host synchronisations per balancing step, per method.

On a GPU every ``.item()``, ``float(tensor)``, ``bool(tensor)``, ``.tolist()`` or copy to the
CPU of a device tensor waits for the device. The balancer makes its host decisions from few
packed transfers (:mod:`taskbalance.engine.host`): solvers run on a host copy of the Gram
matrix. On this CPU machine :class:`taskbalance.engine.host_audit.DeviceReadAudit` tells host
copies from device tensors and counts, during one ``Balancer.backward`` (after two warm-up
steps) of a small shared MLP with ``T`` tasks, the transfers plus the reads of device values,
at parameter level (and representation level where supported). With ``--device cuda`` it
counts what CUDA itself reports as synchronising (``torch.cuda.set_sync_debug_mode``).

Usage::

    python benchmarks/host_syncs.py --out benchmarks/results/host_syncs.json

``tests/test_host_syncs.py`` checks that no method's count grows beyond the committed one.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taskbalance import Balancer, methods
from taskbalance.engine.host_audit import DeviceReadAudit

SYNC_OPS = ("_local_scalar_dense", "is_nonzero", "item", "tolist", "fetch")


class SyncCounter(DeviceReadAudit):
    """Counts host syncs (kept under its old name for the tests)."""


def _setup(
    method: str, tasks: int, level: str, seed: int, device: str = "cpu"
) -> Callable[[], None]:
    """One step of a small shared MLP with ``tasks`` heads, balanced by ``method``."""
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU()).to(device)
    heads = nn.ModuleList(nn.Linear(32, 1) for _ in range(tasks)).to(device)
    hparams = {"weights": [1.0] * tasks} if method == "fixed" else {}
    balancer = Balancer(methods.create(method, **hparams), trunk.parameters(), level=level)
    x = torch.randn(64, 16, device=device)
    targets = torch.randn(64, tasks, device=device)

    def step() -> None:
        z = trunk(x)
        losses = {
            f"t{i}": ((head(z).squeeze(-1) - targets[:, i]) ** 2).mean()
            for i, head in enumerate(heads)
        }
        balancer.backward(losses, representation=z)
        for p in [*trunk.parameters(), *heads.parameters()]:
            p.grad = None

    return step


def audit(method: str, tasks: int, level: str = "parameters", seed: int = 0) -> DeviceReadAudit:
    """The audit of one ``Balancer.backward`` after two warm-up steps (audited too, so that
    state the method keeps on the host is known as host state, but not counted)."""
    step = _setup(method, tasks, level, seed)
    with DeviceReadAudit() as counter:
        counter.counting = False
        step()
        step()
        counter.counting = True
        counter.reset()
        step()
    return counter


def count(method: str, tasks: int, level: str = "parameters", seed: int = 0) -> int:
    """Host syncs in one ``Balancer.backward`` after a warm-up step."""
    return audit(method, tasks, level, seed).count


def cuda_count(method: str, tasks: int, level: str = "parameters", seed: int = 0) -> int:
    """Synchronising CUDA calls in one step, as CUDA itself reports them
    (``torch.cuda.set_sync_debug_mode("warn")``: one warning per synchronising call)."""
    step = _setup(method, tasks, level, seed, "cuda")
    step()
    step()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def measure(tasks: tuple[int, ...] = (3, 10), device: str = "cpu") -> list[dict[str, Any]]:
    rows = []
    for name in methods.available():
        if name in ("metric_weighting", "dtp"):  # they need metrics reported by the user
            continue
        for level in ("parameters", "representation"):
            if level == "representation" and not methods.get(name).representation_level:
                continue
            if level == "representation" and methods.get(name).family == "loss weighting":
                continue
            row: dict[str, Any] = {"method": name, "level": level}
            for t in tasks:
                row[f"T={t}"] = (
                    count(name, t, level) if device == "cpu" else cuda_count(name, t, level)
                )
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cpu: count with the tagging audit; cuda: count what CUDA reports as syncs",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    rows = measure(tuple(args.tasks), args.device)
    for row in rows:
        counts = "  ".join(f"{k}: {v:4d}" for k, v in row.items() if k.startswith("T="))
        print(f"{row['method']:<18}{row['level']:<16}{counts}")
    if args.out:
        meta = {"torch": torch.__version__, "ops": SYNC_OPS, "device": args.device}
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
