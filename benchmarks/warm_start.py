"""Warm-started solvers on a slowly moving Jacobian, as in training.

``solver_time.py`` times each method on a fresh instance (a cold start). In training the Gram
matrices of consecutive steps are close, and MGDA and UPGrad start each solve from the
previous step's solution. This script feeds one instance 12 Gram matrices of a Jacobian that
moves by 2% noise per step (the conflicting random problem of ``solver_time.py``) and prints
the median time per step and the number of batched active-set solves, warm against cold, and
the largest difference between the two solutions (0: the warm start changes only the work).

Usage::

    python benchmarks/warm_start.py --tasks 10 128
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import taskbalance.solvers.nonneg_qp as dual_cone_solver
from solver_time import problem
from taskbalance import methods
from taskbalance.methods.base import Context


def moving_gramians(num_tasks: int, steps: int = 12) -> list[torch.Tensor]:
    J, _ = problem(num_tasks, 10_000)
    generator = torch.Generator().manual_seed(5)
    gramians = []
    for _ in range(steps):
        J = J + 0.02 * torch.randn(J.shape, generator=generator)
        gramians.append(J.double() @ J.double().T)
    return gramians


def run(name: str, gramians: list[torch.Tensor], warm: bool) -> tuple[float, float, list]:  # type: ignore[type-arg]
    solves = {"count": 0}
    original = dual_cone_solver._solve_on_free_sets

    def counting(*args):  # type: ignore[no-untyped-def]
        solves["count"] += 1
        return original(*args)

    dual_cone_solver._solve_on_free_sets = counting
    try:
        method = methods.create(name)
        times, weights = [], []
        for gramian in gramians:
            if not warm:
                method = methods.create(name)
            begin = time.perf_counter()
            combination = method(Context(num_tasks=gramian.shape[0], gramian=gramian))
            times.append(time.perf_counter() - begin)
            weights.append(combination.weights)
    finally:
        dual_cone_solver._solve_on_free_sets = original
    return 1e3 * statistics.median(times[2:]), solves["count"] / len(gramians), weights


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10, 128])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| method | T | cold ms | warm ms | cold solves/step | warm solves/step | max diff |")
    print("|---|---|---|---|---|---|---|")
    for num_tasks in args.tasks:
        gramians = moving_gramians(num_tasks)
        for name in ("upgrad", "mgda"):
            cold_ms, cold_solves, cold = run(name, gramians, warm=False)
            warm_ms, warm_solves, warm = run(name, gramians, warm=True)
            diff = max(float((a - b).abs().max()) for a, b in zip(warm, cold, strict=True))
            solves = (
                f"{cold_solves:.1f} | {warm_solves:.1f}" if name == "upgrad" else "- | -"
            )  # MGDA's Wolfe solver is not the dual-cone one
            print(
                f"| {name} | {num_tasks} | {cold_ms:.2f} | {warm_ms:.2f} | {solves} | {diff:.1e} |"
            )


if __name__ == "__main__":
    main()
