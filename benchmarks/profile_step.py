"""Where a step's time goes: ``torch.profiler`` table of one benchmark configuration.

The step is the one ``step_time.py`` times (benchmark MLP, batch 256, Adam, one thread); the
table groups the time of 10 steps by operator, so the share of the backward passes
(``mm``/``addmm``/``bmm``), of the solver and of the Balancer's bookkeeping can be read off.

Usage::

    python benchmarks/profile_step.py nash_mtl --tasks 10
    python benchmarks/profile_step.py ew floor:gramian upgrad --tasks 40 --level parameters:gramian
"""

from __future__ import annotations

import argparse

import torch

from step_time import make_step


def profile(method: str, num_tasks: int, level: str, rows: int) -> str:
    step = make_step(num_tasks, None if method == "plain" else method, level)
    for _ in range(3):
        step()
    with torch.profiler.profile() as prof:
        for _ in range(10):
            step()
    table: str = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("methods", nargs="+", help="method names, floor:gramian, or plain")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--level", default="parameters", help="as in step_time.py")
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for method in args.methods:
        print(f"## {method}, T = {args.tasks}, {args.level} (10 steps)\n")
        print(profile(method, args.tasks, args.level, args.rows))


if __name__ == "__main__":
    main()
