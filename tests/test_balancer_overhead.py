"""The stage-ablation benchmark runs, and its patches never outlive a row."""

from __future__ import annotations

import sys
from pathlib import Path

import taskbalance.balancer as balancer_module

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_ablation_rows_are_measured_and_the_balancer_is_restored() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import balancer_overhead
    finally:
        sys.path.remove(str(BENCHMARKS))
    norm = balancer_module.fast_global_norm
    task_params = balancer_module.Balancer._task_params
    rows = balancer_overhead.measure(2, ["ew"], rounds=2, warmup=1)
    assert [r["row"] for r in rows] == ["plain", "ew", "ew - guard", "ew - walk", "ew - both"]
    assert all(r["ms"] > 0 and r["ratio_to_plain"] > 0 for r in rows)
    assert balancer_module.fast_global_norm is norm
    assert balancer_module.Balancer._task_params is task_params
