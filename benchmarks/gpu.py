"""``make bench-gpu``: step time, memory and solver time on CUDA, beside TorchJD and LibMTL.

Runs unattended in well under 10 minutes on one GPU and writes
``benchmarks/results/gpu/{step_time,solver_time,host_syncs}.json`` (and prints the tables):

* ``step_time.py --device cuda --compare``: steps of the benchmark MLP at T = 2, 3, 10, 40,
  timed with CUDA events, ours beside TorchJD (autojac, autogram) and LibMTL, plain PyTorch and
  our engine floors included; peak ``torch.cuda.max_memory_allocated`` above the set-up for
  ``ew``, ``mgda``, ``upgrad``, ``graddrop`` and the floors;
* ``solver_time.py --device cuda --compare``: each method's own computation at T = 2 .. 128;
* ``host_syncs.py --device cuda``: synchronising calls per step as CUDA reports them
  (``torch.cuda.set_sync_debug_mode``), to compare with the CPU audit's counts.

Without a CUDA device it prints what it needs and exits with status 2 (nothing is written):
use ``make bench`` for the CPU numbers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
NO_GPU = (
    "make bench-gpu measures on CUDA, and torch sees no CUDA device here "
    "(torch {version}, torch.cuda.is_available() is False). Run it on a machine with an "
    "NVIDIA GPU and a CUDA build of torch; `make bench` gives the CPU numbers."
)


def commands(out: Path) -> list[list[str]]:
    python = sys.executable
    return [
        [
            python, str(HERE / "step_time.py"), "--device", "cuda", "--compare",
            "--tasks", "2", "3", "10", "40", "--warmup", "5", "--repeats", "20",
            "--memory", "ew", "mgda", "upgrad", "graddrop", "floor:gramian", "floor:jacobian",
            "--out", str(out / "step_time.json"),
        ],
        [
            python, str(HERE / "solver_time.py"), "--device", "cuda", "--compare",
            "--repeats", "10", "--out", str(out / "solver_time.json"),
        ],
        [
            python, str(HERE / "host_syncs.py"), "--device", "cuda",
            "--out", str(out / "host_syncs.json"),
        ],
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    out = Path(argv[0]) if argv else HERE / "results" / "gpu"
    if not torch.cuda.is_available():
        print(NO_GPU.format(version=torch.__version__), file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    print(f"GPU: {torch.cuda.get_device_name()}; writing {out}", flush=True)
    for command in commands(out):
        print("$ " + " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
