"""Time one combination step of each gradient method at many tasks (default T = 1000).

The ``(T, P)`` Jacobian is random with a common component (so the task gradients correlate);
``P < T`` makes the Gram matrix singular, the hard case for the dual-cone methods. Each method
runs in its own process with a time limit, and prints its time or its error (UPGrad refuses
singular problems whose exact solution would take minutes).

    python benchmarks/many_tasks.py --tasks 1000 --dims 8 64 2000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

GRADIENT_METHODS = [
    "mgda", "upgrad", "dualproj", "cagrad", "nash_mtl", "fairgrad", "imtl_g", "imtl",
    "aligned_mtl", "config", "pcgrad", "gradvac", "gradnorm", "graddrop", "moco", "db_mtl",
]  # fmt: skip

ONE_RUN = """
import sys, time, torch
torch.set_num_threads(1)
from taskbalance import methods
from taskbalance.aggregate import combine_jacobian
name, T, P = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
generator = torch.Generator().manual_seed(0)
J = torch.randn(T, P, generator=generator) + 0.3 * torch.randn(1, P, generator=generator)
kwargs = {"weights": [1.0] * T} if name == "fixed" else {}
begin = time.perf_counter()
try:
    combine_jacobian(methods.create(name, **kwargs), J, losses=torch.rand(T) + 0.1)
    print(f"{time.perf_counter() - begin:.3f}")
except ValueError as error:
    print("refused: " + str(error).splitlines()[0][:90])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 64, 2000])
    parser.add_argument("--methods", nargs="+", default=GRADIENT_METHODS)
    parser.add_argument("--limit", type=float, default=120.0, help="seconds per run")
    parser.add_argument("--out", default="benchmarks/results/many_tasks.json")
    args = parser.parse_args()
    rows = []
    print(f"T = {args.tasks}, one combination step, seconds (one thread)")
    print(f"{'method':<12}" + "".join(f"{f'P = {p}':>14}" for p in args.dims))
    for name in args.methods:
        cells = []
        for dim in args.dims:
            try:
                result = subprocess.run(
                    [sys.executable, "-c", ONE_RUN, name, str(args.tasks), str(dim)],
                    capture_output=True,
                    text=True,
                    timeout=args.limit,
                    check=True,
                ).stdout.strip()
            except subprocess.TimeoutExpired:
                result = f"> {args.limit:g} s"
            rows.append({"method": name, "tasks": args.tasks, "dim": dim, "result": result})
            cells.append(result if not result.startswith("refused") else "refused")
        print(f"{name:<12}" + "".join(f"{c:>14}" for c in cells))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
