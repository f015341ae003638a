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
    python benchmarks/step_time.py --compare --memory ew mgda upgrad --tasks 2 3 10 40

``--compare`` adds LibMTL 1.1.5's steps (``pip install --no-deps LibMTL==1.1.5``, see
``libmtl_equivalents.py``) and TorchJD's for the same methods (``taskbalance[bench]``):
``torchjd-autojac`` (its Jacobian of the shared parameters + Aggregator; ``mean`` is its floor)
and ``torchjd-autogram`` (its Gramian engine + Weighting). TorchJD weights the heads' gradients
too, we leave them unweighted for direction methods: the trunk work is the same. ``--memory``
adds the extra peak resident memory of a step over its set-up (a fresh process per row).
``--engines gramian jacobian`` adds the Gram-only methods with the Balancer's engine path forced
(layer-wise Gram matrix, or materialised Jacobian); ``gram_memory.py`` sweeps their memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench_device import cuda_peak_mib, device, set_device, timed
from taskbalance import Balancer, methods
from taskbalance.bench.runner import machine_info
from taskbalance.engine.needs import Need
from taskbalance.methods.base import Combination, Context, Method

DEFAULT_HPARAMS: dict[str, Callable[[int], dict[str, Any]]] = {
    "fixed": lambda t: {"weights": [1.0] * t},
}


class Net(nn.Module):
    """The benchmark MLP: a 3-layer trunk and one linear head per task, or with
    ``head_width`` a two-layer head ``256 -> head_width -> 10`` (heavier heads, as in dense
    prediction or recommendation towers)."""

    def __init__(self, num_tasks: int, head_width: int | None = None) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(128, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 256),
            nn.ReLU(),
        )
        self.heads = nn.ModuleList(
            nn.Linear(256, 10)
            if head_width is None
            else nn.Sequential(nn.Linear(256, head_width), nn.ReLU(), nn.Linear(head_width, 10))
            for _ in range(num_tasks)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        z = self.trunk(x)
        return z, [head(z) for head in self.heads]


class Floor(Method):
    """The engine's floor: computes what a method needs (Gram matrix or Jacobian) and returns
    equal weights, so a step costs the engine + one optimizer step and no solver."""

    name = "floor"
    family = "benchmark"
    reference = "-"

    def __init__(self, needs: Need = Need.GRAMIAN) -> None:
        self.needs = needs  # type: ignore[misc]

    def hparams(self) -> dict[str, Any]:
        return {"needs": self.needs}

    def combine(self, ctx: Context) -> Combination:
        if self.needs == Need.JACOBIAN:
            ctx.require_jacobian(self.name)
        else:
            ctx.require_gramian(self.name)
        return Combination(weights=torch.ones(ctx.num_tasks, dtype=torch.float64))


FLOORS = {"floor:gramian": Need.GRAMIAN, "floor:jacobian": Need.JACOBIAN}


def problem(
    num_tasks: int, head_width: int | None = None
) -> tuple[Net, Tensor, list[Tensor], torch.optim.Optimizer]:
    """The benchmark model, batch, labels and optimizer on the benchmark device (seed 0)."""
    torch.manual_seed(0)
    model = Net(num_tasks, head_width)
    x = torch.randn(256, 128)
    ys = [torch.randint(0, 10, (256,)) for _ in range(num_tasks)]
    model = model.to(device())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    return model, x.to(device()), [y.to(device()) for y in ys], optimizer


def make_step(
    num_tasks: int,
    method: str | None,
    level: str,
    update_every: int = 1,
    head_width: int | None = None,
) -> Callable[[], None]:
    """One training step of the benchmark model with ``method`` (``None``: plain backward).

    ``level`` may name the Balancer's engine path after a colon: ``"parameters:jacobian"``
    materialises the Jacobian, ``"parameters:gramian"`` takes the layer-wise Gram path
    (``"parameters"`` alone: the ``auto`` choice)."""
    level, _, engine = level.partition(":")
    model, x, ys, optimizer = problem(num_tasks, head_width)
    balancer = None
    if method is not None:
        hparams = DEFAULT_HPARAMS.get(method, lambda t: {})(num_tasks)
        balancer = Balancer(
            Floor(FLOORS[method]) if method in FLOORS else methods.create(method, **hparams),
            model.trunk.parameters(),
            level=level,  # type: ignore[arg-type]
            update_every=update_every,
            engine=engine or "auto",  # type: ignore[arg-type]
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


def make_torchjd_step(num_tasks: int, method: str, path: str) -> Callable[[], None]:
    """The same step with TorchJD (``pip install 'taskbalance[bench]'``).

    ``path="autojac"``: ``mtl_backward`` (Jacobian of the shared parameters through the
    features) + ``jac_to_grad`` with the method's Aggregator. ``path="autogram"``: its Gramian
    engine on the trunk + the method's Weighting, then one backward of the weighted losses
    (TorchJD's fastest path; only for methods with a Gramian Weighting).
    """
    import torchjd

    from torchjd_equivalents import available

    equivalent = available()[method] if method != "mean" else None
    model, x, ys, optimizer = problem(num_tasks)
    shared = list(model.trunk.parameters())
    if path == "autojac":
        from torchjd.aggregation import Mean

        aggregator = equivalent.aggregator(num_tasks) if equivalent else Mean()

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            z, outputs = model(x)
            losses = [nn.functional.cross_entropy(o, y) for o, y in zip(outputs, ys, strict=True)]
            torchjd.autojac.mtl_backward(losses, features=z)
            torchjd.autojac.jac_to_grad(shared, aggregator)
            optimizer.step()

        return step
    from torchjd.aggregation import MeanWeighting
    from torchjd.autogram import Engine

    weighting = (equivalent.weighting if equivalent else lambda t: MeanWeighting())(num_tasks)
    engine = Engine(model.trunk, batch_dim=None)

    def gram_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        _, outputs = model(x)
        losses = torch.stack(
            [nn.functional.cross_entropy(o, y) for o, y in zip(outputs, ys, strict=True)]
        )
        gramian = engine.compute_gramian(losses)
        losses.backward(weighting(gramian))
        optimizer.step()

    return gram_step


def make_libmtl_step(num_tasks: int, method: str) -> Callable[[], None]:
    """The same step with LibMTL 1.1.5's weighting (``pip install --no-deps LibMTL==1.1.5``):
    its per-task ``loss.backward(retain_graph=True)`` loop, its solver, its ``.grad`` reset."""
    from libmtl_equivalents import harness

    model, x, ys, optimizer = problem(num_tasks)
    weighting, kwargs = harness(method, model.trunk, num_tasks)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        _, outputs = model(x)
        losses = torch.stack(
            [nn.functional.cross_entropy(o, y) for o, y in zip(outputs, ys, strict=True)]
        )
        weighting.backward(losses, **kwargs)
        optimizer.step()

    return step


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def probe_peak(num_tasks: int, method: str, level: str, library: str) -> float:
    """Run in a fresh process: reset the peak-RSS mark after set-up (Linux ``clear_refs``),
    run 3 steps, return the peak resident memory above the set-up level (MiB)."""
    torch.set_num_threads(1)
    step = build(num_tasks, method, level, library)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    base = _status_kib("VmRSS")
    for _ in range(3):
        step()
    return (_status_kib("VmHWM") - base) / 1024


def peak_memory_mb(num_tasks: int, method: str, level: str, library: str) -> float:
    """:func:`probe_peak` in a fresh Python process (so configurations do not share caches);
    on CUDA, the peak allocated device memory of 3 steps in this process."""
    if device().type == "cuda":
        step = build(num_tasks, method, level, library)
        step()  # warm-up: optimizer state and cached kernels exist before the peak is taken
        return cuda_peak_mib(step)

    call = f"step_time.probe_peak({num_tasks}, {method!r}, {level!r}, {library!r})"
    return float(run_fresh("step_time", call))


def run_fresh(module: str, call: str) -> str:
    """``print(<call>)`` in a fresh Python process that has imported ``json`` and the benchmark
    module ``module`` (e.g. ``run_fresh("gram_memory", "json.dumps(gram_memory.probe(...))")``);
    the last line printed.
    Every allocation above 64 KiB is mapped on its own there (``MALLOC_MMAP_THRESHOLD_``):
    freed tensors leave the resident set at once, so a peak counts live tensors rather than
    glibc's caching."""
    import subprocess

    here = str(Path(__file__).parent)
    code = f"import sys; sys.path.insert(0, {here!r}); import json, {module}; print({call})"
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env
    )
    return result.stdout.strip().splitlines()[-1]


def build(num_tasks: int, method: str, level: str, library: str) -> Callable[[], None]:
    if library == "ours":
        return make_step(num_tasks, None if method == "plain" else method, level)
    if library == "libmtl":
        return make_libmtl_step(num_tasks, method)
    return make_torchjd_step(num_tasks, method, library.removeprefix("torchjd-"))


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
            times[key].append(timed(step)[0])
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
    parser.add_argument("--device", default="cpu", help="cpu or cuda (timed with CUDA events)")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="add TorchJD's steps for the same methods (autojac and autogram paths)",
    )
    parser.add_argument(
        "--engines",
        nargs="*",
        default=[],
        choices=["gramian", "jacobian"],
        help="also time Gram-only methods at parameter level with this engine path forced",
    )
    parser.add_argument(
        "--memory",
        nargs="*",
        default=None,
        help="also measure extra peak memory (fresh process per configuration) for these methods",
    )
    args = parser.parse_args()
    if set_device(args.device).type == "cpu":
        torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    equivalents: dict[str, Any] = {}
    libmtl: dict[str, Any] = {}
    if args.compare:
        from torchjd_equivalents import available

        equivalents = available()
        if not equivalents:
            raise SystemExit("--compare needs TorchJD: pip install 'taskbalance[bench]'")
        from libmtl_equivalents import available as libmtl_available

        libmtl = libmtl_available()
        if not libmtl:
            print("LibMTL not installed (pip install --no-deps LibMTL==1.1.5): no LibMTL rows")

    rows: list[dict[str, Any]] = []
    for num_tasks in args.tasks:
        configs: dict[tuple[str, str], Callable[[], None]] = {
            ("plain", "-"): make_step(num_tasks, None, "parameters"),
            ("ew", "parameters"): make_step(num_tasks, "ew", "parameters"),
        }
        for floor in FLOORS:  # the engine's own cost: what a method needs, no solver
            for level in ("parameters", "representation"):
                configs[(floor, level)] = make_step(num_tasks, floor, level)
        for name in args.methods:
            cls = methods.get(name)
            both = cls.needs > Need.LOSSES and cls.representation_level
            for level in ["parameters", "representation"] if both else ["parameters"]:
                if (name, level) not in configs:
                    configs[(name, level)] = make_step(num_tasks, name, level)
        for engine in args.engines:
            level = f"parameters:{engine}"
            configs[("floor:gramian", level)] = make_step(num_tasks, "floor:gramian", level)
            for name in args.methods:
                if methods.get(name).needs == Need.GRAMIAN:
                    configs[(name, level)] = make_step(num_tasks, name, level)
        if args.compare:
            for name in args.methods:
                if name in libmtl:
                    configs[(name, "libmtl")] = make_libmtl_step(num_tasks, name)
            configs[("mean", "torchjd-autojac")] = make_torchjd_step(num_tasks, "mean", "autojac")
            for name in args.methods:
                if name not in equivalents:
                    continue
                configs[(name, "torchjd-autojac")] = make_torchjd_step(num_tasks, name, "autojac")
                if equivalents[name].weighting is not None:
                    configs[(name, "torchjd-autogram")] = make_torchjd_step(
                        num_tasks, name, "autogram"
                    )
        for name in args.amortised:
            configs[(f"{name} (update_every=5)", "parameters")] = make_step(
                num_tasks, name, "parameters", update_every=5
            )
        timings = measure_interleaved(configs, args.warmup, args.repeats)
        ew_median, ew_mean = timings[("ew", "parameters")]
        for (name, level), (median, mean) in timings.items():
            row = {
                "T": num_tasks,
                "method": name,
                "level": level,
                "ms": 1e3 * median,
                "ratio": median / ew_median,
                "mean_ms": 1e3 * mean,
                "mean_ratio": mean / ew_mean,
            }
            base = name.split(" ")[0]
            if level.startswith(("parameters", "representation")) and base in methods.available():
                needs = methods.get(base).needs
                if needs > Need.LOSSES:
                    floor = "floor:jacobian" if needs == Need.JACOBIAN else "floor:gramian"
                    row["ratio_to_floor"] = median / timings[(floor, level)][0]
            if args.memory is not None and (name in args.memory or name in ("plain", "ew")):
                library = level if level.startswith(("torchjd", "libmtl")) else "ours"
                lvl = "parameters" if library != "ours" or level == "-" else level
                row["peak_extra_mib"] = peak_memory_mb(num_tasks, name, lvl, library)
            rows.append(row)

    print(
        "| T | method | level / library | median step (ms) | ratio to ew | mean ratio to ew "
        "| ratio to engine floor | extra peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        cells = [
            str(row["T"]),
            row["method"],
            row["level"],
            f"{row['ms']:.2f}",
            f"{row['ratio']:.2f}",
            f"{row['mean_ratio']:.2f}",
            f"{row['ratio_to_floor']:.2f}" if "ratio_to_floor" in row else "",
            f"{row['peak_extra_mib']:.0f}" if "peak_extra_mib" in row else "",
        ]
        print("| " + " | ".join(cells) + " |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = machine_info() | {
            "device": str(device()),
            "gpu": torch.cuda.get_device_name(device()) if device().type == "cuda" else None,
            "threads": torch.get_num_threads(),
            "warmup": args.warmup,
            "repeats": args.repeats,
        }
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
