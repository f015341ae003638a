"""Step time of distributed balancing against plain DDP, with real gloo processes.

Each rank trains the benchmark MLP of ``step_time.py`` (128-512-512-256 trunk, one linear head
per task) on its own batch. Configurations, timed interleaved round by round on every rank:

* ``ddp:sum``: the baseline, ``DistributedDataParallel`` and ``sum(losses).backward()``;
* ``METHOD`` / ``METHOD@repr``: ``Balancer(METHOD)`` balancing the global batch (the default);
* ``METHOD~local``: ``distributed="local"`` (each rank balances its own batch).

Prints, per process count and task count, the median step time and its ratio to
``ddp:sum`` measured in the same run, and the floats each rank sends per step with ring
algorithms (from the collectives the balancer issues; see ``taskbalance.distributed``).
Writes JSON.

    python benchmarks/distributed_step.py --processes 2 4 --tasks 3 10 \
        --out benchmarks/results/distributed_step.json

On this 2-core machine 4 processes share 2 cores, so the 4-process rows measure contention
as much as communication; the ratios within one row group are what to read.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).parent))
from step_time import Net
from taskbalance import Balancer

CONFIGS = ["ddp:sum", "ew", "mgda", "upgrad", "graddrop", "mgda@repr", "mgda~local"]
BATCH = 64  # per rank


def floats_sent(
    config: str, tasks: int, shared: int, heads: int, world: int, sharded: bool = False
) -> int:
    """Floats one rank sends per step with ring algorithms: an all-reduce of ``n`` floats
    sends ``2 (R-1)/R n``, a reduce-scatter of ``n`` or an all-gather into ``n`` sends
    ``(R-1)/R n``, a broadcast of ``n`` about ``n``."""
    share = (world - 1) / world

    def all_reduce(n: int) -> float:
        return 2 * share * n

    if config == "ddp:sum":
        total = all_reduce(shared + heads)
    elif config.endswith("~local"):
        # the averaged gradient (+ a skip flag), whether the method raised on a rank
        total = all_reduce(shared + heads + 1) + all_reduce(1)
    elif config == "ew":
        total = all_reduce(tasks) + all_reduce(shared + heads)
    elif config.endswith("@repr"):  # losses, Gram matrix, weights, gradients
        total = all_reduce(tasks) + all_reduce(tasks * tasks) + tasks + all_reduce(shared + heads)
    elif config == "graddrop":  # needs the Jacobian itself: all-reduced
        total = all_reduce(tasks) + all_reduce(tasks * shared) + all_reduce(heads)
    elif not sharded:  # Gram methods on gloo: the Jacobian all-reduced, weights, heads
        total = all_reduce(tasks) + all_reduce(tasks * shared) + tasks + all_reduce(heads)
    else:  # Gram methods on NCCL: reduce-scatter of the Jacobian, T x T Gram, all-gather
        total = (
            all_reduce(tasks)
            + share * tasks * shared
            + all_reduce(1 + tasks * tasks)
            + tasks
            + share * shared
            + all_reduce(heads)
        )
    return round(total)


def make_step(config: str, tasks: int, rank: int) -> Any:
    torch.manual_seed(0)
    net = Net(tasks)
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(BATCH, 128, generator=generator)
    y = torch.randint(0, 10, (BATCH, tasks), generator=generator)
    loss = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    if config == "ddp:sum":
        model = DistributedDataParallel(net)

        def plain() -> None:
            optimizer.zero_grad()
            _, outputs = model(x)
            sum(loss(o, y[:, i]) for i, o in enumerate(outputs)).backward()  # type: ignore[union-attr]
            optimizer.step()

        return plain
    name, _, mode = config.partition("~")
    name, _, level = name.partition("@")
    balancer = Balancer(
        name,
        net.trunk.parameters(),
        level="representation" if level else "parameters",
        distributed="local" if mode else "global",
    )

    def balanced() -> None:
        optimizer.zero_grad()
        z, outputs = net(x)
        balancer.backward([loss(o, y[:, i]) for i, o in enumerate(outputs)], representation=z)
        optimizer.step()

    return balanced


def worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results: dict[str, Any] = {}
    for tasks in args.tasks:
        steps = {c: make_step(c, tasks, rank) for c in CONFIGS}
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        times: dict[str, list[float]] = {c: [] for c in CONFIGS}
        for _ in range(args.repeats):
            for config, step in steps.items():
                dist.barrier()
                begin = time.perf_counter()
                step()
                times[config].append(time.perf_counter() - begin)
        results[str(tasks)] = {c: statistics.median(v) for c, v in times.items()}
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--tasks", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default="benchmarks/results/distributed_step.json")
    args = parser.parse_args()
    shared = sum(p.numel() for p in Net(1).trunk.parameters())
    report: dict[str, Any] = {"batch_per_rank": BATCH, "shared_parameters": shared, "rows": []}
    print(f"benchmark MLP: {shared:,} shared parameters, {BATCH} samples per rank, gloo, CPU")
    print(f"{'R':>2} {'T':>3}  {'config':<11} {'ms/step':>8} {'x ddp:sum':>9} {'floats sent':>12}")
    for world in args.processes:
        out = Path(args.out).with_suffix(f".R{world}.tmp.json")
        mp.spawn(worker, args=(world, free_port(), args, str(out)), nprocs=world, join=True)
        measured = json.loads(out.read_text())
        out.unlink()
        for tasks in args.tasks:
            times = measured[str(tasks)]
            heads = sum(p.numel() for p in Net(tasks).heads.parameters())
            for config in CONFIGS:
                ratio = times[config] / times["ddp:sum"]
                floats = floats_sent(config, tasks, shared, heads, world)
                print(
                    f"{world:>2} {tasks:>3}  {config:<11} {1000 * times[config]:>8.2f} "
                    f"{ratio:>9.2f} {floats:>12,}"
                )
                report["rows"].append(
                    {
                        "processes": world,
                        "tasks": tasks,
                        "config": config,
                        "ms": 1000 * times[config],
                        "ratio_to_ddp_sum": ratio,
                        "floats_sent": floats,
                    }
                )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
