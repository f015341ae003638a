"""``make bench-gpu`` (benchmarks/gpu.py): a clear message and status 2 without CUDA; the
device plumbing it relies on (``--device``) runs the same code on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_it_says_what_it_needs_and_writes_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu.py"), str(tmp_path / "gpu")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr
    assert "make bench" in result.stderr
    assert not (tmp_path / "gpu").exists()


def test_gpu_commands_use_cuda_and_write_into_the_folder(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu
    finally:
        sys.path.remove(str(BENCHMARKS))
    for command in gpu.commands(tmp_path):
        assert command[command.index("--device") + 1] == "cuda"
        assert Path(command[command.index("--out") + 1]).parent == tmp_path


def test_step_and_solver_benchmarks_run_with_an_explicit_device(tmp_path: Path) -> None:
    step = tmp_path / "step.json"
    subprocess.run(
        [
            sys.executable, str(BENCHMARKS / "step_time.py"), "--device", "cpu", "--tasks", "2",
            "--methods", "ew", "mgda", "--amortised", "--warmup", "1", "--repeats", "2",
            "--out", str(step),
        ],
        check=True, capture_output=True, cwd=BENCHMARKS,
    )  # fmt: skip
    rows = json.loads(step.read_text())["rows"]
    assert {row["method"] for row in rows} >= {"plain", "ew", "mgda"}
    assert json.loads(step.read_text())["meta"]["device"] == "cpu"
    solver = tmp_path / "solver.json"
    subprocess.run(
        [
            sys.executable, str(BENCHMARKS / "solver_time.py"), "--device", "cpu", "--tasks", "2",
            "3", "--methods", "mgda", "nash_mtl", "--repeats", "1", "--out", str(solver),
        ],
        check=True, capture_output=True, cwd=BENCHMARKS,
    )  # fmt: skip
    assert [row["method"] for row in json.loads(solver.read_text())["rows"]] == ["mgda", "nash_mtl"]
