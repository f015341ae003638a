"""Time of each gradient method's own computation (solver), without any backward pass.

For T tasks, a random Jacobian ``J`` (T x P, Gaussian, with every other task pulled towards the
negative of its neighbour so that conflicts exist) and its Gram matrix are built once; each
method's ``combine`` is then timed alone (median over repeats, a fresh method each repeat so
stateful methods do the same work). Methods that need only the Gram matrix never see ``J``.

Usage::

    python benchmarks/solver_time.py                          # T = 2, 10, 40, 128
    python benchmarks/solver_time.py --tasks 10 --out benchmarks/results/solver_time.json
    python benchmarks/solver_time.py --compare     # TorchJD side by side (taskbalance[bench])

With ``--compare`` each cell reads ``ours / TorchJD ms (speed-up, cosine of the two
directions)``; TorchJD runs its fastest path (its ``Weighting`` on the Gramian where it has one).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

import taskbalance
from bench_device import device, set_device, timed
from taskbalance import methods
from taskbalance.engine.needs import Need
from taskbalance.methods.base import Context


def problem(num_tasks: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(num_tasks, dim, generator=generator)
    J[1::2] = -0.5 * J[0::2][: J[1::2].shape[0]] + 0.5 * J[1::2]
    J = J.to(device())
    return J, (J.double() @ J.double().T)


def time_method(
    name: str, num_tasks: int, dim: int, repeats: int, hparams: dict[str, Any] | None = None
) -> tuple[float, torch.Tensor]:
    """Median seconds of our method's combine, and the direction it gives (float64)."""
    J, G = problem(num_tasks, dim)
    losses = (
        torch.rand(num_tasks, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.1
    ).to(device())
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
        method = methods.create(name, **(hparams or {}))
        seconds, combination = timed(lambda method=method: method(ctx))
        times.append(seconds)
    if combination.weights is not None:
        direction = combination.weights.double() @ J.double()
    else:
        assert combination.direction is not None
        direction = combination.direction.double()
    return statistics.median(times), direction


def time_torchjd(
    name: str, num_tasks: int, dim: int, repeats: int
) -> tuple[float, torch.Tensor, str]:
    """TorchJD's fastest path for the same method: its Weighting on the Gramian when it has one
    (what its autogram engine uses), else its Aggregator on the Jacobian."""
    from torchjd_equivalents import available

    equivalent = available()[name]
    J, G = problem(num_tasks, dim)
    times = []
    for _ in range(repeats):
        if equivalent.weighting is not None:
            weighting = equivalent.weighting(num_tasks)
            gram = G.float()
            seconds, weights = timed(lambda weighting=weighting, gram=gram: weighting(gram))
            times.append(seconds)
            direction = weights.double() @ J.double()
            path = "weighting(G)"
        else:
            aggregator = equivalent.aggregator(num_tasks)
            seconds, out = timed(lambda aggregator=aggregator: aggregator(J))
            times.append(seconds)
            direction = out.double()
            path = "aggregator(J)"
    return statistics.median(times), direction, path


def agreement(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float]:
    """(cosine, norm ratio ours/theirs) of two directions."""
    norms = ours.norm() * theirs.norm()
    cosine = float(ours @ theirs / norms) if norms > 0 else float("nan")
    ratio = float(ours.norm() / theirs.norm()) if theirs.norm() > 0 else float("nan")
    return cosine, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10, 40, 128])
    parser.add_argument("--dim", type=int, default=10_000, help="P, for methods needing J")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also time TorchJD's same method and report the agreement of the directions",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (timed with CUDA events)")
    args = parser.parse_args()
    if set_device(args.device).type == "cpu":
        torch.set_num_threads(1)
    names = args.methods or [n for n in methods.available() if methods.get(n).needs > Need.LOSSES]
    equivalents: dict[str, Any] = {}
    if args.compare:
        sys.path.insert(0, str(Path(__file__).parent))
        from torchjd_equivalents import available

        equivalents = available()
        if not equivalents:
            raise SystemExit("--compare needs TorchJD: pip install 'taskbalance[bench]'")
        names = [n for n in names if n in equivalents]
    rows: list[dict[str, Any]] = []
    for name in names:
        row: dict[str, Any] = {"method": name, "needs": methods.get(name).needs.name.lower()}
        cells = [name, row["needs"]]
        hparams = equivalents[name].ours if name in equivalents else None
        for num_tasks in args.tasks:
            seconds, ours = time_method(name, num_tasks, args.dim, args.repeats, hparams)
            row[f"T={num_tasks}"] = 1e3 * seconds
            cell = f"{1e3 * seconds:.2f}"
            if name in equivalents:
                theirs_s, theirs, path = time_torchjd(name, num_tasks, args.dim, args.repeats)
                cosine, ratio = agreement(ours, theirs)
                row[f"torchjd T={num_tasks}"] = {
                    "ms": 1e3 * theirs_s,
                    "path": path,
                    "speedup": theirs_s / seconds,
                    "cosine": cosine,
                    "norm_ratio": ratio,
                }
                cell += f" / {1e3 * theirs_s:.2f} ({theirs_s / seconds:.1f}x, cos {cosine:.4f})"
            cells.append(cell)
        rows.append(row)
        print("| " + " | ".join(cells) + " |", flush=True)
    if args.out is not None:
        meta = {
            "taskbalance": taskbalance.__version__,
            "torch": torch.__version__,
            "machine": platform.platform(),
            "processor": platform.processor(),
            "dim": args.dim,
            "device": str(device()),
            "repeats": args.repeats,
            "unit": "ms",
        }
        if args.compare:
            import torchjd

            meta["torchjd"] = getattr(torchjd, "__version__", "0.18.0")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
