"""A/B of the Gram-based methods against an earlier commit, in one process.

Timing two versions in two processes one after the other is not reliable on a shared machine
(run-to-run drift of 20-40% was seen here); this script imports the earlier version of the
package from ``git archive REF`` under the name ``taskbalance_old`` and calls both versions'
methods alternately on the same Gram matrices (random task gradients with a conflicting
pair), reporting the median time of each (a fresh method per call: cold), their ratio and
the largest difference between their weights::

    python benchmarks/method_ab.py --against 3dcad9d --tasks 2 3 10 40 \\
        --methods mgda upgrad cagrad nash_mtl fairgrad imtl_g
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def import_old(ref: str, into: Path) -> ModuleType:
    """The package as of ``ref``, importable as ``taskbalance_old``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "src/taskbalance"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    package = into / "taskbalance_old"
    (into / "src" / "taskbalance").rename(package)
    for source in package.rglob("*.py"):
        text = source.read_text()
        source.write_text(re.sub(r"\btaskbalance\b", "taskbalance_old", text))
    sys.path.insert(0, str(into))
    return importlib.import_module("taskbalance_old")


def _gramian(num_tasks: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(num_tasks, 500, generator=generator, dtype=torch.float64) + 0.2
    if num_tasks > 1:
        J[1] = -0.5 * J[0] + 0.3 * J[1]
    return J @ J.T


def _call(package: Any, name: str, gramian: torch.Tensor) -> tuple[float, torch.Tensor]:
    method = package.methods.create(name)
    context = package.methods.base.Context(num_tasks=gramian.shape[0], gramian=gramian)
    begin = time.perf_counter()
    weights = method(context).weights
    return time.perf_counter() - begin, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--against", required=True, help="a commit, tag or branch")
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 3, 10, 40])
    parser.add_argument(
        "--methods", nargs="+", default=["mgda", "upgrad", "cagrad", "nash_mtl", "imtl_g"]
    )
    parser.add_argument("--calls", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import taskbalance

    with tempfile.TemporaryDirectory() as scratch:
        old = import_old(args.against, Path(scratch))
        print(f"{'T':>5}  {'method':<12}{'old ms':>9}{'new ms':>9}{'new/old':>9}{'max diff':>11}")
        for num_tasks in args.tasks:
            gramian = _gramian(num_tasks, num_tasks)
            for name in args.methods:
                times: dict[str, list[float]] = {"old": [], "new": []}
                for _ in range(args.calls):
                    seconds, before = _call(old, name, gramian)
                    times["old"].append(seconds)
                    seconds, after = _call(taskbalance, name, gramian)
                    times["new"].append(seconds)
                past, now = statistics.median(times["old"]), statistics.median(times["new"])
                difference = float((before.to(after) - after).abs().max())
                print(
                    f"{num_tasks:>5}  {name:<12}{1e3 * past:>9.3f}{1e3 * now:>9.3f}"
                    f"{now / past:>9.2f}{difference:>11.1e}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
