"""Does ``update_every=5`` change the outcome? Gradient methods with weights recomputed every
step vs every 5th step (reused in between, one ordinary backward), on the digits demo problem
(the README's "Digits demo"), 3 seeds, with single-task baselines and Delta-m.

Usage::

    python benchmarks/amortised.py     # ~3 minutes; writes benchmarks/results/amortised/
"""

from __future__ import annotations

from pathlib import Path

from taskbalance.bench.runner import run_benchmark
from taskbalance.bench.suite import BenchmarkSpec, Entry

METHODS = ("mgda", "pcgrad", "nash_mtl", "upgrad")

SPEC = BenchmarkSpec(
    name="amortised",
    description=(
        "Digits demo problem (scikit-learn digits: digit, parity, value), MLP 64-128-64, Adam "
        "1e-3, batch 64, 30 epochs: each gradient method with its weights recomputed every step "
        "and every 5th step (update_every=5)."
    ),
    config={
        "data": {"dataset": "digits", "batch_size": 64},
        "model": {"kind": "hard_sharing", "hidden": [128, 64]},
        "training": {"epochs": 30, "optimizer": {"name": "adam", "lr": 1e-3}},
    },
    quick=(),
    full=(
        Entry("ew"),
        *(Entry(m, update_every=k) for m in METHODS for k in (1, 5)),
    ),
)


def main() -> None:
    summary = run_benchmark(SPEC, Path("benchmarks/results"), full=True, seeds=3, jobs=2)
    for name, row in summary["rows"].items():
        delta = row["delta_m"]
        print(f"{name:<14} delta-m {delta['mean']:+.2f} ± {delta['std']:.2f}")


if __name__ == "__main__":
    main()
