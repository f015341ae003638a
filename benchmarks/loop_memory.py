"""Resident memory of a training loop that keeps its last tensors until the next forward.

A loop usually holds its last losses and features until the next forward has built a new
graph (``for batch in loader: z = trunk(x); losses = ...``), so whatever the step leaves
alive is held twice at the next forward's end. ``gram_memory.py`` cannot see this: its
step's locals go away when the step returns. Here each configuration runs in a fresh
process, with glibc mapping every allocation above 64 KiB on its own
(``MALLOC_MMAP_THRESHOLD_=65536``) so that freed tensors leave the resident set at once:
two warm-up steps, then the resident memory between steps and the peak over four more
(absolute, Linux ``VmRSS`` / ``VmHWM``). The trunk is 12 ReLU layers of width 256 at batch
2048 (activations ~25 MiB), one linear head per task. ``--against REF`` adds the same rows
for the package as of an earlier commit. Usage::

    python benchmarks/loop_memory.py --methods mgda graddrop --tasks 3 --against HEAD~1 \\
        --out benchmarks/results/loop_memory.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def probe(
    method: str, num_tasks: int, with_representation: bool, old: str | None
) -> dict[str, Any]:
    """In this (fresh) process: resident MiB between steps and the peak over four steps."""
    import torch
    from torch import nn

    from step_time import _status_kib

    if old is None:
        import taskbalance as package
    else:
        from method_ab import import_old

        package = import_old(old, Path(tempfile.mkdtemp()))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(128, 256), nn.ReLU()]
    for _ in range(12):
        layers += [nn.Linear(256, 256), nn.ReLU()]
    trunk = nn.Sequential(*layers)
    heads = nn.ModuleList(nn.Linear(256, 10) for _ in range(num_tasks))
    x = torch.randn(2048, 128)
    ys = [torch.randint(0, 10, (2048,)) for _ in range(num_tasks)]
    optimizer = torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=1e-3)
    balancer = package.Balancer(method, trunk.parameters())

    def loop(steps: int) -> Iterator[None]:
        for _ in range(steps):  # the loop's variables live on until reassigned, as in a script
            optimizer.zero_grad(set_to_none=True)
            z = trunk(x)
            losses = [nn.functional.cross_entropy(h(z), y) for h, y in zip(heads, ys, strict=True)]
            balancer.backward(losses, representation=z if with_representation else None)
            optimizer.step()
            yield

    steps = loop(6)
    next(steps)
    next(steps)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    between = _status_kib("VmRSS") / 1024
    for _ in steps:
        pass
    return {"between_steps_mib": between, "peak_mib": _status_kib("VmHWM") / 1024}


def run_probe(method: str, num_tasks: int, with_representation: bool, old: str | None) -> Any:
    """:func:`probe` in a fresh process."""
    from step_time import run_fresh

    call = f"loop_memory.probe({method!r}, {num_tasks}, {with_representation}, {old!r})"
    return json.loads(run_fresh("loop_memory", f"json.dumps({call})"))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["mgda", "graddrop"])
    parser.add_argument("--tasks", type=int, nargs="+", default=[3])
    parser.add_argument("--against", help="a git commit: the same rows for its package")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    print(f"{'method':<10}{'T':>4}  {'representation':<15}{'version':<10}{'between':>9}{'peak':>8}")
    for method in args.methods:
        for num_tasks in args.tasks:
            for with_representation in (True, False):
                for version in [None, args.against] if args.against else [None]:
                    measured = run_probe(method, num_tasks, with_representation, version)
                    row = {
                        "method": method,
                        "T": num_tasks,
                        "representation": with_representation,
                        "version": version or "HEAD",
                        **measured,
                    }
                    rows.append(row)
                    print(
                        f"{method:<10}{num_tasks:>4}  {with_representation!s:<15}"
                        f"{row['version']:<10}{row['between_steps_mib']:>9.0f}"
                        f"{row['peak_mib']:>8.0f}"
                    )
    if args.out:
        args.out.write_text(json.dumps({"meta": {"threads": 1}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
