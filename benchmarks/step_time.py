"""Step time of every method relative to equal weighting (``ew``), measured in one process.

Model (as specified in the foundation issue): shared MLP 128-512-512-256 with ReLU, one
``Linear(256, 10)`` head per task, cross-entropy losses, batch 256, Adam, one CPU thread.
A step is ``zero_grad`` + forward + ``Balancer.backward`` + ``optimizer.step``. For each
configuration the median over ``--repeats`` timed steps (after ``--warmup`` steps) is divided by
the median ``ew`` step of the same T. ``plain`` is a hand-written ``sum(losses).backward()``
step without the Balancer, to show the Balancer's own overhead.

Usage::

    python benchmarks/step_time.py                       # T = 2, 3, 10, both levels
    python benchmarks/step_time.py --tasks 2 10 --out benchmarks/results/step_time.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import taskbalance
from taskbalance import Balancer, methods
from taskbalance.engine.needs import Need

DEFAULT_HPARAMS: dict[str, Callable[[int], dict[str, Any]]] = {
    "fixed": lambda t: {"weights": [1.0] * t},
}


class Net(nn.Module):
    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(128, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 256),
            nn.ReLU(),
        )
        self.heads = nn.ModuleList(nn.Linear(256, 10) for _ in range(num_tasks))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        z = self.trunk(x)
        return z, [head(z) for head in self.heads]


def make_step(
    num_tasks: int, method: str | None, level: str, update_every: int = 1
) -> Callable[[], None]:
    """One training step of the benchmark model with ``method`` (``None``: plain backward)."""
    torch.manual_seed(0)
    model = Net(num_tasks)
    x = torch.randn(256, 128)
    ys = [torch.randint(0, 10, (256,)) for _ in range(num_tasks)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    balancer = None
    if method is not None:
        hparams = DEFAULT_HPARAMS.get(method, lambda t: {})(num_tasks)
        balancer = Balancer(
            methods.create(method, **hparams),
            model.trunk.parameters(),
            level=level,  # type: ignore[arg-type]
            update_every=update_every,
        )

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        z, outputs = model(x)
        losses = [nn.functional.cross_entropy(o, y) for o, y in zip(outputs, ys, strict=True)]
        if balancer is None:
            torch.stack(losses).sum().backward()
        else:
            balancer.backward(losses, representation=z)
        optimizer.step()

    return step


def measure_interleaved(
    steps: dict[tuple[str, str], Callable[[], None]], warmup: int, repeats: int
) -> dict[tuple[str, str], tuple[float, float]]:
    """(median, mean) seconds per step, configurations interleaved round by round to cancel
    drift. The mean matters for amortised configurations (``update_every``), whose expensive
    steps are a minority."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            begin = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - begin)
    return {key: (statistics.median(v), statistics.mean(v)) for key, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 3, 10])
    parser.add_argument("--methods", nargs="+", default=methods.available())
    parser.add_argument(
        "--amortised", nargs="*", default=["mgda"], help="also time with update_every=5"
    )
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows: list[dict[str, Any]] = []
    for num_tasks in args.tasks:
        configs: dict[tuple[str, str], Callable[[], None]] = {
            ("plain", "-"): make_step(num_tasks, None, "parameters"),
            ("ew", "parameters"): make_step(num_tasks, "ew", "parameters"),
        }
        for name in args.methods:
            cls = methods.get(name)
            both = cls.needs > Need.LOSSES and cls.representation_level
            for level in ["parameters", "representation"] if both else ["parameters"]:
                if (name, level) not in configs:
                    configs[(name, level)] = make_step(num_tasks, name, level)
        for name in args.amortised:
            configs[(f"{name} (update_every=5)", "parameters")] = make_step(
                num_tasks, name, "parameters", update_every=5
            )
        timings = measure_interleaved(configs, args.warmup, args.repeats)
        ew_median, ew_mean = timings[("ew", "parameters")]
        for (name, level), (median, mean) in timings.items():
            rows.append(
                {
                    "T": num_tasks,
                    "method": name,
                    "level": level,
                    "ms": 1e3 * median,
                    "ratio": median / ew_median,
                    "mean_ms": 1e3 * mean,
                    "mean_ratio": mean / ew_mean,
                }
            )

    print("| T | method | level | median step (ms) | ratio to ew | mean ratio to ew |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        cells = [
            str(row["T"]),
            row["method"],
            row["level"],
            f"{row['ms']:.2f}",
            f"{row['ratio']:.2f}",
            f"{row['mean_ratio']:.2f}",
        ]
        print("| " + " | ".join(cells) + " |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "taskbalance": taskbalance.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.platform(),
            "processor": platform.processor(),
            "threads": torch.get_num_threads(),
            "warmup": args.warmup,
            "repeats": args.repeats,
        }
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
