"""Host synchronisations per balancing step, per method (issue: no host syncs inside solvers).

On a GPU every ``.item()``, ``float(tensor)``, ``bool(tensor)`` or data-dependent Python branch
on a device tensor waits for the device. On CPU the same points are visible as calls to
``aten._local_scalar_dense`` (a tensor read as a Python number) and ``aten.is_nonzero``
(``bool(tensor)``); this script counts them with a ``TorchDispatchMode`` during one
``Balancer.backward`` (after a warm-up step, so one-time checks are not counted) of a small
shared MLP with ``T`` tasks, at parameter level (and representation level where supported).

Usage::

    python benchmarks/host_syncs.py --out benchmarks/results/host_syncs.json

``tests/test_host_syncs.py`` checks that no method's count grows beyond the committed one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from taskbalance import Balancer, methods

SYNC_OPS = ("_local_scalar_dense", "is_nonzero", "item")


class SyncCounter(TorchDispatchMode):
    """Counts the aten calls that move a device value to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.overloadpacket.__name__ in SYNC_OPS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def count(method: str, tasks: int, level: str = "parameters", seed: int = 0) -> int:
    """Host syncs in one ``Balancer.backward`` after a warm-up step."""
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
    heads = nn.ModuleList(nn.Linear(32, 1) for _ in range(tasks))
    hparams = {"weights": [1.0] * tasks} if method == "fixed" else {}
    balancer = Balancer(methods.create(method, **hparams), trunk.parameters(), level=level)
    x = torch.randn(64, 16)
    targets = torch.randn(64, tasks)

    def step() -> None:
        z = trunk(x)
        losses = {
            f"t{i}": ((head(z).squeeze(-1) - targets[:, i]) ** 2).mean()
            for i, head in enumerate(heads)
        }
        balancer.backward(losses, representation=z)
        for p in [*trunk.parameters(), *heads.parameters()]:
            p.grad = None

    step()
    step()
    with SyncCounter() as counter:
        step()
    return counter.count


def measure(tasks: tuple[int, ...] = (3, 10)) -> list[dict[str, Any]]:
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
                row[f"T={t}"] = count(name, t, level)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = measure(tuple(args.tasks))
    for row in rows:
        counts = "  ".join(f"{k}: {v:4d}" for k, v in row.items() if k.startswith("T="))
        print(f"{row['method']:<18}{row['level']:<16}{counts}")
    if args.out:
        meta = {"torch": torch.__version__, "ops": SYNC_OPS}
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
