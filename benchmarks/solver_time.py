"""Time of each gradient method's own computation (solver), without any backward pass.

For T tasks, a random Jacobian ``J`` (T x P, Gaussian, with every other task pulled towards the
negative of its neighbour so that conflicts exist) and its Gram matrix are built once; each
method's ``combine`` is then timed alone (median over repeats, a fresh method each repeat so
stateful methods do the same work). Methods that need only the Gram matrix never see ``J``.

Usage::

    python benchmarks/solver_time.py                          # T = 2, 10, 40, 128
    python benchmarks/solver_time.py --tasks 10 --out benchmarks/results/solver_time.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import taskbalance
from taskbalance import methods
from taskbalance.engine.needs import Need
from taskbalance.methods.base import Context


def problem(num_tasks: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(num_tasks, dim, generator=generator)
    J[1::2] = -0.5 * J[0::2][: J[1::2].shape[0]] + 0.5 * J[1::2]
    return J, (J.double() @ J.double().T)


def time_method(name: str, num_tasks: int, dim: int, repeats: int) -> float:
    J, G = problem(num_tasks, dim)
    losses = (
        torch.rand(num_tasks, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.1
    )
    needs = methods.get(name).needs
    ctx = Context(
        num_tasks=num_tasks,
        losses=losses,
        gramian=G,
        jacobian=J if needs >= Need.JACOBIAN else None,
        block_shapes=(J.shape[1:],),
    )
    times = []
    for _ in range(repeats):
        method = methods.create(name)
        begin = time.perf_counter()
        method(ctx)
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10, 40, 128])
    parser.add_argument("--dim", type=int, default=10_000, help="P, for methods needing J")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = [n for n in methods.available() if methods.get(n).needs > Need.LOSSES]
    rows: list[dict[str, Any]] = []
    for name in names:
        row: dict[str, Any] = {"method": name, "needs": methods.get(name).needs.name.lower()}
        for num_tasks in args.tasks:
            row[f"T={num_tasks}"] = 1e3 * time_method(name, num_tasks, args.dim, args.repeats)
        rows.append(row)
        cells = [name, row["needs"]] + [f"{row[f'T={t}']:.2f}" for t in args.tasks]
        print("| " + " | ".join(cells) + " |", flush=True)
    if args.out is not None:
        meta = {
            "taskbalance": taskbalance.__version__,
            "torch": torch.__version__,
            "machine": platform.platform(),
            "processor": platform.processor(),
            "dim": args.dim,
            "repeats": args.repeats,
            "unit": "ms",
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
