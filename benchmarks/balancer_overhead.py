"""What the Balancer adds to a plain ``sum(losses).backward()`` step, stage by stage.

The step is the one ``step_time.py`` times (benchmark MLP, batch 256, Adam, one thread). Rows,
interleaved round by round in one process, each divided by the plain step's median:

* ``plain``: ``torch.stack(losses).sum().backward()``;
* ``<method>``: ``Balancer(<method>).backward(losses, representation=z)``;
* ``<method> - guard``: the same with the non-finite guard's norm of the update replaced by
  a constant (what the guard costs: every entry of every gradient is read once);
* ``<method> - walk``: the same with the heads' parameters found once and reused instead of
  walking the autograd graph every step (what the walk costs);
* ``<method> - both``: both removed; what remains is the rest of the pipeline (validation,
  packing the losses, the method, writing ``.grad``, ``StepInfo``);
* ``lean ew`` (with ``ew``): a hand-written minimal equal-weighting step that keeps the guard
  and the walk (stack, walk to the heads, one ``autograd.grad``, the update's norm read on the
  host, ``.grad`` written): what a special-cased fast path could at best save over the
  pipeline.

The ablated rows are diagnostics, not options: without the guard a non-finite update could
be written, and a cached walk would miss a head that appears later. ``--level
representation`` times the methods at representation level (``floor:gramian``: the engine's
per-task representation gradients and nothing else); ``--head-width W`` gives every task a
two-layer head ``256 -> W -> 10`` (where a second pass through the heads would cost real
work); ``--no-ablations`` keeps only the full rows. ``--against REF`` adds a row
``<method> @REF`` per method: the same step with the Balancer of an earlier commit (imported
beside the current one, as in ``method_ab.py``), interleaved with the others. Usage::

    python benchmarks/balancer_overhead.py --tasks 10 --methods ew uw --rounds 60 \\
        --out benchmarks/results/balancer_overhead.json
    python benchmarks/balancer_overhead.py --tasks 10 --methods floor:gramian mgda \\
        --level representation
    python benchmarks/balancer_overhead.py --tasks 10 --methods ew --against HEAD~1
    python benchmarks/balancer_overhead.py --tasks 3 10 --methods floor:gramian mgda \
        --level representation --head-width 1024 --no-ablations --against HEAD~1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

import taskbalance.balancer as balancer_module
from method_ab import import_old
from step_time import make_step, problem

ABLATIONS = ("", " - guard", " - walk", " - both")


@contextmanager
def _ablated(kind: str, cache: dict[int, Any]) -> Iterator[None]:
    """Patch the Balancer module for one ablated row (restored on exit)."""
    original_norm = balancer_module.fast_global_norm
    original_params = balancer_module.Balancer._task_params
    zero = torch.zeros((), dtype=torch.float64)

    def cached_params(self: Any, losses: Any, representation: Any, need: Any) -> Any:
        if id(self) not in cache:
            cache[id(self)] = original_params(self, losses, representation, need)
        return cache[id(self)]

    if kind in (" - guard", " - both"):
        balancer_module.fast_global_norm = lambda tensors: zero  # type: ignore[assignment]
    if kind in (" - walk", " - both"):
        balancer_module.Balancer._task_params = cached_params  # type: ignore[method-assign]
    try:
        yield
    finally:
        balancer_module.fast_global_norm = original_norm
        balancer_module.Balancer._task_params = original_params  # type: ignore[method-assign]


def make_step_with(
    package: ModuleType, num_tasks: int, method: str, level: str, head_width: int | None = None
) -> Callable[[], None]:
    """``step_time.make_step``'s step with ``package``'s Balancer (an earlier version)."""
    model, x, ys, optimizer = problem(num_tasks, head_width)
    balancer = package.Balancer(method, model.trunk.parameters(), level=level)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        z, outputs = model(x)
        losses = [nn.functional.cross_entropy(o, y) for o, y in zip(outputs, ys, strict=True)]
        balancer.backward(losses, representation=z)
        optimizer.step()

    return step


def make_lean_ew_step(num_tasks: int) -> Callable[[], None]:
    """The minimal equal-weighting step with the non-finite guard and the heads' walk."""
    import math

    from taskbalance.engine.graph import reachable_leaves
    from taskbalance.transforms.base import fast_global_norm

    model, x, ys, optimizer = problem(num_tasks)
    shared = list(model.trunk.parameters())
    shared_ids = {id(p) for p in shared}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        z, outputs = model(x)
        losses = [nn.functional.cross_entropy(o, y) for o, y in zip(outputs, ys, strict=True)]
        stacked = torch.stack(losses)
        heads = [p for p in reachable_leaves(losses, stop_at=(z,)) if id(p) not in shared_ids]
        params = shared + heads
        grads = torch.autograd.grad(stacked.sum(), params)
        norm = float(fast_global_norm(list(grads)))
        if not (math.isfinite(norm) and all(math.isfinite(v) for v in stacked.tolist())):
            return
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        optimizer.step()

    return step


def measure(
    num_tasks: int,
    methods: list[str],
    rounds: int,
    warmup: int,
    level: str = "parameters",
    against: tuple[str, ModuleType] | None = None,
    head_width: int | None = None,
    *,
    ablations: bool = True,
) -> list[dict[str, Any]]:
    rows: dict[str, Callable[[], None]] = {
        "plain": make_step(num_tasks, None, "parameters", head_width=head_width)
    }
    for method in methods:
        for kind in ABLATIONS if ablations else ("",):
            rows[method + kind] = make_step(num_tasks, method, level, head_width=head_width)
        if against is not None and not method.startswith("floor:"):
            rows[f"{method} @{against[0]}"] = make_step_with(
                against[1], num_tasks, method, level, head_width
            )
        if method == "ew" and level == "parameters" and head_width is None:
            rows["lean ew"] = make_lean_ew_step(num_tasks)
    cache: dict[int, Any] = {}
    kinds = {name: next((k for k in ABLATIONS[1:] if name.endswith(k)), "") for name in rows}
    seconds: dict[str, list[float]] = {name: [] for name in rows}
    for index in range(warmup + rounds):
        for name, step in rows.items():
            with _ablated(kinds[name], cache):
                begin = time.perf_counter()
                step()
                elapsed = time.perf_counter() - begin
            if index >= warmup:
                seconds[name].append(elapsed)
    plain = statistics.median(seconds["plain"])
    return [
        {
            "T": num_tasks,
            "level": "-" if name == "plain" else level,
            "row": name,
            "ms": 1e3 * statistics.median(values),
            "ratio_to_plain": statistics.median(values) / plain,
        }
        for name, values in seconds.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10])
    parser.add_argument("--methods", nargs="+", default=["ew", "uw"])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--level", default="parameters", help="as in step_time.py (e.g. representation)"
    )
    parser.add_argument("--against", help="a git commit: add its Balancer's rows")
    parser.add_argument(
        "--head-width",
        type=int,
        help="two-layer heads 256 -> WIDTH -> 10 instead of one linear layer (heavier heads)",
    )
    parser.add_argument(
        "--no-ablations", action="store_true", help="only the full rows (and --against's)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    against = None
    if args.against:
        against = (args.against, import_old(args.against, Path(tempfile.mkdtemp())))
    results = []
    print(f"{'T':>4}  {'row':<24}{'ms':>9}{'x plain':>10}")
    for num_tasks in args.tasks:
        rows = measure(
            num_tasks,
            args.methods,
            args.rounds,
            args.warmup,
            args.level,
            against,
            args.head_width,
            ablations=not args.no_ablations,
        )
        for row in rows:
            results.append(row)
            print(f"{row['T']:>4}  {row['row']:<24}{row['ms']:>9.3f}{row['ratio_to_plain']:>10.3f}")
    if args.out:
        meta = {
            "torch": torch.__version__,
            "threads": 1,
            "rounds": args.rounds,
            "against": args.against,
            "level": args.level,
            "head_width": args.head_width,
        }
        args.out.write_text(json.dumps({"meta": meta, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
