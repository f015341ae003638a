"""The diagnostic benchmarks run (stage ablation, A/B against a commit) and leave nothing behind."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

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
    assert [r["row"] for r in rows] == [
        "plain",
        "ew",
        "ew - guard",
        "ew - walk",
        "ew - both",
        "lean ew",
    ]
    assert all(r["ms"] > 0 and r["ratio_to_plain"] > 0 for r in rows)
    assert balancer_module.fast_global_norm is norm
    assert balancer_module.Balancer._task_params is task_params
    heavy = balancer_overhead.measure(
        2, ["mgda"], rounds=1, warmup=0, level="representation", head_width=16, ablations=False
    )
    assert [r["row"] for r in heavy] == ["plain", "mgda"]
    assert all(r["ms"] > 0 for r in heavy)


@pytest.mark.skipif(
    shutil.which("git") is None or not (BENCHMARKS.parent / ".git").exists(),
    reason="needs a git checkout (git archive)",
)
def test_method_ab_imports_an_earlier_version_beside_this_one(tmp_path: Path) -> None:
    import torch

    import taskbalance

    sys.path.insert(0, str(BENCHMARKS))
    try:
        import method_ab
    finally:
        sys.path.remove(str(BENCHMARKS))
    old = method_ab.import_old("HEAD", tmp_path)
    try:
        assert old.__name__ == "taskbalance_old"
        assert old is not taskbalance
        gramian = method_ab._gramian(3, 0)
        _, before = method_ab._call(old, "upgrad", gramian)
        _, after = method_ab._call(taskbalance, "upgrad", gramian)
        torch.testing.assert_close(before, after)
        sys.path.insert(0, str(BENCHMARKS))
        try:
            import balancer_overhead
        finally:
            sys.path.remove(str(BENCHMARKS))
        rows = balancer_overhead.measure(2, ["uw"], rounds=1, warmup=0, against=("HEAD", old))
        assert "uw @HEAD" in [r["row"] for r in rows]  # the earlier Balancer's step runs too
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == "taskbalance_old"]:
            del sys.modules[name]


def test_loop_memory_probe_measures_a_loop_that_keeps_its_tensors() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import loop_memory
    finally:
        sys.path.remove(str(BENCHMARKS))
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc")
    row = loop_memory.run_probe("ew", 2, True, None)
    assert row["peak_mib"] >= row["between_steps_mib"] > 0
