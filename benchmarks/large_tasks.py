"""Hundreds of tasks: training steps at T = 128, 512 and 1000 on a small trunk.

Each task is one output of a small shared MLP (32 -> 64 -> 64, ReLU, batch 128) read by its
own linear head; losses are mean squared errors against random targets. One training step is
forward, ``Balancer.backward(losses, representation=z)`` at parameter level (the Gram-only
engine path, which ``auto`` takes at these T) and an Adam step.

For each Gram-based method it reports, one CPU thread, medians over ``--steps`` steps after
two warm-up steps:

* ``step ms``: the whole training step;
* ``solver warm``: the method's own computation inside those steps (the balancer's instance,
  warm-started from the previous step where the method does so), and its share of the step;
* ``solver cold``: a freshly created method on the same Gram matrices (no previous step), and
  its share of the step;
* ``TorchJD``: TorchJD's ``Weighting`` for the same method on the same Gram matrices (its
  fastest, Gramian-only path), when ``pip install 'taskbalance[bench]'`` is present.

Each (method, T) runs in its own process with a time limit, so one slow case cannot stall the
table::

    python benchmarks/large_tasks.py --out benchmarks/results/large_tasks.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
METHODS = ["mgda", "upgrad", "dualproj", "cagrad", "nash_mtl", "fairgrad", "imtl_g", "aligned_mtl"]


def run_one(method: str, tasks: int, steps: int, gramians_to: Path | None = None) -> dict[str, Any]:
    """Measure one (method, T) in this process."""
    import torch
    from torch import nn

    from taskbalance import Balancer, methods
    from taskbalance.methods.base import Context

    torch.set_num_threads(1)
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
    heads = nn.Linear(64, tasks)  # head i is row i
    x = torch.randn(128, 32)
    targets = torch.randn(128, tasks)
    optimizer = torch.optim.Adam([*trunk.parameters(), *heads.parameters()], lr=1e-3)
    balancer = Balancer(method, trunk.parameters())
    contexts: list[Context] = []
    solver_seconds: list[float] = []
    combine = balancer.method.combine

    def timed_combine(ctx: Context) -> Any:
        begin = time.perf_counter()
        result = combine(ctx)
        solver_seconds.append(time.perf_counter() - begin)
        contexts.append(ctx)
        return result

    balancer.method.combine = timed_combine  # type: ignore[method-assign]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        z = trunk(x)
        errors = (heads(z) - targets).pow(2).mean(dim=0)
        balancer.backward(list(errors.unbind()), representation=z)
        optimizer.step()

    step_seconds = []
    for index in range(steps + 2):
        begin = time.perf_counter()
        step()
        if index >= 2:
            step_seconds.append(time.perf_counter() - begin)
    warm = solver_seconds[2:]
    cold = []
    for ctx in contexts[2:]:
        fresh = methods.create(method)
        begin = time.perf_counter()
        fresh(ctx)
        cold.append(time.perf_counter() - begin)
    step_ms = 1e3 * statistics.median(step_seconds)
    row: dict[str, Any] = {
        "method": method,
        "tasks": tasks,
        "step_ms": step_ms,
        "solver_warm_ms": 1e3 * statistics.median(warm),
        "solver_cold_ms": 1e3 * statistics.median(cold),
    }
    row["warm_share"] = row["solver_warm_ms"] / step_ms
    row["cold_share"] = row["solver_cold_ms"] / step_ms
    if gramians_to is not None:
        torch.save([c.gramian for c in contexts[2:]], gramians_to)
    return row


def _torchjd_ms(method: str, gramians_from: Path) -> float | None:
    """TorchJD's Gramian weighting for ``method`` on the saved matrices (None: unavailable).
    Run in its own process (``--torchjd``) with what is left of the case's time limit: at
    T = 1000 one call of its UPGrad would take far longer than ours."""
    import torch

    sys.path.insert(0, str(HERE))
    from torchjd_equivalents import available

    equivalent = available().get(method)
    if equivalent is None or equivalent.weighting is None:
        return None
    gramians = torch.load(gramians_from)
    weighting = equivalent.weighting(gramians[0].shape[0])
    seconds = []
    for gramian in gramians:
        matrix = gramian.to(dtype=__import__("torch").float32)
        begin = time.perf_counter()
        weighting(matrix)
        seconds.append(time.perf_counter() - begin)
        if seconds[-1] > 10:  # one call says enough (and keeps the case within its limit)
            break
    return 1e3 * statistics.median(seconds)


_ONE_THREAD = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
"""The children's environment: SciPy's LAPACK (Aligned-MTL from 256 tasks) on one thread too,
as torch (``torch.set_num_threads(1)``)."""


def _run_limited(command: list[str], limit: float) -> tuple[Any, str | None]:
    """The JSON a child prints last, or an error line."""
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=limit, check=False, env=_ONE_THREAD
        )
    except subprocess.TimeoutExpired:
        return None, f"over {limit:.0f} s"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return None, (done.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(lines[-1]), None


def _measure(method: str, tasks: int, steps: int, limit: float) -> dict[str, Any]:
    """Ours in one child process, then TorchJD on the same matrices in another, both within
    ``limit`` seconds together."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        gramians = Path(scratch) / "gramians.pt"
        command = [sys.executable, __file__, "--one", method, str(tasks), "--steps", str(steps)]
        begin = time.perf_counter()
        row, error = _run_limited([*command, "--gramians", str(gramians)], limit)
        if error is not None:
            return {"method": method, "tasks": tasks, "error": error}
        left = max(limit - (time.perf_counter() - begin), 1.0)
        command = [sys.executable, __file__, "--torchjd", method, str(gramians)]
        row["torchjd_ms"], torchjd_error = _run_limited(command, left)
        if torchjd_error is not None:
            row["torchjd_error"] = torchjd_error
    return dict(row)


def _cell(value: float | str | None) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[128, 512, 1000])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--limit", type=float, default=300.0, help="seconds per (method, T)")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--update",
        action="store_true",
        help="replace only the measured (method, T) rows of an existing --out file",
    )
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "T"), help=argparse.SUPPRESS)
    parser.add_argument("--gramians", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--torchjd", nargs=2, metavar=("METHOD", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        row = run_one(args.one[0], int(args.one[1]), args.steps, args.gramians)
        print(json.dumps(row))
        return
    if args.torchjd:
        print(json.dumps(_torchjd_ms(args.torchjd[0], Path(args.torchjd[1]))))
        return
    rows: list[dict[str, Any]] = []
    print(
        f"{'method':<12}{'T':>6}{'step ms':>10}{'warm ms':>10}{'share':>8}"
        f"{'cold ms':>10}{'share':>8}{'TorchJD ms':>12}"
    )
    for tasks in args.tasks:
        for method in args.methods:
            row = _measure(method, tasks, args.steps, args.limit)
            rows.append(row)
            if "error" in row:
                print(f"{method:<12}{tasks:>6}  {row['error'][:80]}", flush=True)
                continue
            torchjd = row["torchjd_ms"]
            if torchjd is None and "torchjd_error" in row:
                torchjd = row["torchjd_error"]
            print(
                f"{method:<12}{tasks:>6}{row['step_ms']:>10.1f}{row['solver_warm_ms']:>10.2f}"
                f"{row['warm_share']:>8.1%}{row['solver_cold_ms']:>10.2f}{row['cold_share']:>8.1%}"
                f"{_cell(torchjd):>12}",
                flush=True,
            )
    if args.out:
        import torch

        meta = {"torch": torch.__version__, "steps": args.steps, "threads": 1}
        if args.update and args.out.exists():
            measured = {(r["method"], r["tasks"]) for r in rows}
            kept = json.loads(args.out.read_text())["rows"]
            rows = [r for r in kept if (r["method"], r["tasks"]) not in measured] + rows
            order = {m: i for i, m in enumerate(METHODS)}
            rows.sort(key=lambda r: (r["tasks"], order.get(r["method"], len(order))))
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
