"""What ``torch.compile`` of the trunk gains (or costs) with balancing: median step time,
eager vs compiled trunk, on the benchmark MLP of ``step_time.py``, interleaved in one run.

Under compilation the per-task backward cannot be batched with ``vmap`` (it falls back to one
backward per task), so gradient methods at parameter level pay ``T`` backward passes;
loss weighting and the representation level are unaffected by that.

    python benchmarks/compile_speed.py --tasks 3 --out benchmarks/results/compile_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch._functorch.config
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from step_time import Net
from taskbalance import Balancer

CONFIGS = [("ew", "parameters"), ("mgda", "representation"), ("pcgrad", "parameters")]


def make_step(method: str, level: str, compiled: bool, tasks: int) -> Any:
    torch.manual_seed(0)
    net = Net(tasks)
    trunk: nn.Module = torch.compile(net.trunk) if compiled else net.trunk
    balancer = Balancer(method, net.trunk.parameters(), level=level)  # type: ignore[arg-type]
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.randn(64, 128)
    y = torch.randint(0, 10, (64, tasks))
    loss = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad()
        z = trunk(x)
        losses = [loss(head(z), y[:, i]) for i, head in enumerate(net.heads)]
        balancer.backward(losses, representation=z)
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default="benchmarks/results/compile_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch._functorch.config.donated_buffer = False  # balancing runs several backward passes
    steps = {
        (method, level, compiled): make_step(method, level, compiled, args.tasks)
        for method, level in CONFIGS
        for compiled in (False, True)
    }
    for step in steps.values():
        for _ in range(3):  # warm-up (and compilation)
            step()
    times: dict[Any, list[float]] = {key: [] for key in steps}
    for _ in range(args.repeats):
        for key, step in steps.items():
            begin = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - begin)
    rows = []
    print(f"T = {args.tasks}, benchmark MLP, one thread; median ms per step")
    print(f"{'method':<8} {'level':<15} {'eager':>7} {'compiled':>9} {'ratio':>6}")
    for method, level in CONFIGS:
        eager = 1000 * statistics.median(times[(method, level, False)])
        compiled = 1000 * statistics.median(times[(method, level, True)])
        rows.append({"method": method, "level": level, "eager_ms": eager, "compiled_ms": compiled})
        print(f"{method:<8} {level:<15} {eager:>7.2f} {compiled:>9.2f} {compiled / eager:>6.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
