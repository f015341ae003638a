"""Peak memory of the Gram-only engine path against the Jacobian path, as T grows.

For a Gram-only method (UPGrad here) at parameter level, the Balancer can either materialise
the ``T x P`` Jacobian (``engine="jacobian"``) or fold each parameter's ``T`` gradient rows into
the Gram matrix during the batched backward and drop them (``engine="gramian"``, see
``taskbalance.engine.layerwise``). Each configuration runs in a fresh process: one warm-up step,
then the peak resident memory over 2 steps above the level after warm-up (Linux ``clear_refs``
/ ``VmHWM``), with glibc told to map every allocation above 64 KiB separately
(``MALLOC_MMAP_THRESHOLD_``) so that freed tensors leave the resident set at once and the peak
counts live tensors, not allocator caching. Step times are medians of 10 steps in the same
process, as ratios to ``ew``.

Models: ``issue`` is the benchmark MLP of the foundation issue (128-512-512-256, batch 256);
``deep`` is 12 ReLU layers of width 256, batch 64 (many layers of similar size, as in most
deep trunks). TorchJD 0.18's autogram engine (``Engine(trunk, batch_dim=None)``) is measured on
the same step when installed (``pip install 'taskbalance[bench]'``).

Usage::

    python benchmarks/gram_memory.py --out benchmarks/results/gram_memory.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from step_time import _status_kib, run_fresh
from taskbalance import Balancer
from taskbalance.bench.runner import machine_info

MODELS: dict[str, dict[str, int]] = {
    "issue": {"depth": 3, "batch": 256},
    "deep": {"depth": 12, "batch": 64},
}
PATHS = ("ew", "gramian", "jacobian", "torchjd-autogram")


def make_trunk(model: str) -> nn.Sequential:
    deep = [128] + [256] * MODELS[model]["depth"]
    widths = [128, 512, 512, 256] if model == "issue" else deep
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(widths):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers)


def make_step(model: str, num_tasks: int, path: str) -> Callable[[], None]:
    torch.manual_seed(0)
    batch = MODELS[model]["batch"]
    trunk = make_trunk(model)
    heads = nn.ModuleList(nn.Linear(256, 10) for _ in range(num_tasks))
    x = torch.randn(batch, 128)
    ys = [torch.randint(0, 10, (batch,)) for _ in range(num_tasks)]
    optimizer = torch.optim.Adam([*trunk.parameters(), *heads.parameters()], lr=1e-4)

    def losses_of(z: Tensor) -> list[Tensor]:
        return [nn.functional.cross_entropy(h(z), y) for h, y in zip(heads, ys, strict=True)]

    if path == "torchjd-autogram":
        from torchjd.aggregation import UPGradWeighting
        from torchjd.autogram import Engine

        engine = Engine(trunk, batch_dim=None)
        weighting = UPGradWeighting()

        def torchjd_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            losses = torch.stack(losses_of(trunk(x)))
            losses.backward(weighting(engine.compute_gramian(losses)))
            optimizer.step()

        return torchjd_step

    balancer = Balancer(
        "ew" if path == "ew" else "upgrad",
        trunk.parameters(),
        engine="jacobian" if path == "ew" else path,  # type: ignore[arg-type]
    )

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        z = trunk(x)
        balancer.backward(losses_of(z), representation=z)
        optimizer.step()

    return step


def probe(model: str, num_tasks: int, path: str) -> dict[str, float]:
    """In a fresh process: extra peak MiB over 2 steps after a warm-up, and the median step."""
    torch.set_num_threads(1)
    step = make_step(model, num_tasks, path)
    step()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    base = _status_kib("VmRSS")
    for _ in range(2):
        step()
    peak = (_status_kib("VmHWM") - base) / 1024
    times = []
    for _ in range(10):
        begin = time.perf_counter()
        step()
        times.append(time.perf_counter() - begin)
    return {"peak_extra_mib": peak, "ms": 1e3 * statistics.median(times)}


def run_probe(model: str, num_tasks: int, path: str) -> dict[str, float]:
    """:func:`probe` in a fresh process."""
    parsed: dict[str, float] = json.loads(
        run_fresh("gram_memory", f"json.dumps(gram_memory.probe({model!r}, {num_tasks}, {path!r}))")
    )
    return parsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10, 40, 80, 128])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    try:
        import torchjd  # noqa: F401

        paths = list(PATHS)
    except ImportError:
        paths = [p for p in PATHS if not p.startswith("torchjd")]
        print("TorchJD not installed (pip install 'taskbalance[bench]'): no TorchJD rows")
    rows: list[dict[str, Any]] = []
    print("| model | T | Jacobian MiB | path | extra peak MiB | step ratio to ew |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        params = sum(p.numel() for p in make_trunk(model).parameters())
        for num_tasks in args.tasks:
            results = {path: run_probe(model, num_tasks, path) for path in paths}
            jacobian_mib = num_tasks * params * 4 / 2**20
            for path, result in results.items():
                ratio = result["ms"] / results["ew"]["ms"]
                rows.append(
                    {"model": model, "T": num_tasks, "path": path, "jacobian_mib": jacobian_mib}
                    | result
                    | {"ratio_to_ew": ratio}
                )
                print(
                    f"| {model} | {num_tasks} | {jacobian_mib:.0f} | {path} | "
                    f"{result['peak_extra_mib']:.0f} | {ratio:.2f} |"
                )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = machine_info() | {
            "models": MODELS,
            "method": "upgrad (ew: plain weighted backward)",
        }
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
