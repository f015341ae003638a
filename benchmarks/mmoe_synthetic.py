"""Reproduction of the MMoE paper's synthetic experiment (Ma et al., KDD 2018, section 3.2).

Two regression tasks whose correlation is set by the cosine ``p`` between their generating
weight vectors: with orthogonal unit vectors ``u1, u2`` in R^d and scale ``c``,
``w1 = c u1``, ``w2 = c (p u1 + sqrt(1 - p^2) u2)``, inputs ``x ~ N(0, I)``, and labels
``y_i = w_i^T x + sum_{j=1}^m sin(alpha_j w_i^T x + beta_j) + eps`` with shared
``alpha_j, beta_j ~ N(0, 1)`` and ``eps ~ N(0, 0.01)``; d = 100, m = 10, c = 1 as in the paper.

Models (``taskbalance.models``, equal weighting through ``Balancer``): a shared-bottom
network (``HardSharing``) and an ``MMoE`` with 8 single-layer experts, with similar numbers
of parameters; both with one small tower per task, Adam. For each correlation in
``--correlations`` and each seed, the script records the training loss (sum of the two
MSEs) every step and reports the mean loss over the last 10% of steps.

Usage::

    python benchmarks/mmoe_synthetic.py                      # 5 seeds, 5000 steps, ~5 minutes
    python benchmarks/mmoe_synthetic.py --seeds 5 --steps 5000
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import taskbalance
from taskbalance import Balancer
from taskbalance.models import HardSharing, MMoE, MultiTaskModel


def synthetic(
    correlation: float, n: int, seed: int, d: int = 100, m: int = 10, c: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, 2, generator=generator))
    u1, u2 = basis[:, 0], basis[:, 1]
    w1 = c * u1
    w2 = c * (correlation * u1 + (1 - correlation**2) ** 0.5 * u2)
    alpha = torch.randn(m, generator=generator)
    beta = torch.randn(m, generator=generator)
    x = torch.randn(n, d, generator=generator)
    labels = []
    for w in (w1, w2):
        projection = x @ w
        waves = torch.sin(alpha.unsqueeze(0) * projection.unsqueeze(1) + beta.unsqueeze(0)).sum(
            dim=1
        )
        labels.append(projection + waves + 0.1 * torch.randn(n, generator=generator))
    return x, torch.stack(labels, dim=1)


def tower(inputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, 8), nn.ReLU(), nn.Linear(8, 1))


def build(kind: str, d: int) -> MultiTaskModel:
    """The paper's sizes: a one-layer shared bottom of 113 units vs 8 one-layer experts of 16
    units (about the same number of parameters), towers of 8 hidden units."""
    if kind == "shared-bottom":
        bottom = nn.Sequential(nn.Linear(d, 113), nn.ReLU())
        return HardSharing(bottom, {"task1": tower(113), "task2": tower(113)})
    experts = [nn.Sequential(nn.Linear(d, 16), nn.ReLU()) for _ in range(8)]
    return MMoE(experts, {"task1": tower(16), "task2": tower(16)}, gate_features=d)


def run(kind: str, correlation: float, seed: int, steps: int, batch: int) -> list[float]:
    x, y = synthetic(correlation, 10_000, seed)
    torch.manual_seed(seed)
    model = build(kind, x.shape[1])
    balancer = Balancer.for_model("ew", model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed + 1)
    curve = []
    for _ in range(steps):
        index = torch.randint(0, x.shape[0], (batch,), generator=generator)
        optimizer.zero_grad()
        predictions = model(x[index])
        losses = {
            f"task{i + 1}": nn.functional.mse_loss(
                predictions[f"task{i + 1}"].squeeze(-1), y[index, i]
            )
            for i in range(2)
        }
        info = balancer.backward(losses)
        optimizer.step()
        curve.append(float(info.losses.sum()))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--correlations", type=float, nargs="+", default=[1.0, 0.5, 0.0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    kinds = ["shared-bottom", "mmoe"]
    curves: dict[str, dict[str, list[list[float]]]] = {}
    for correlation in args.correlations:
        for kind in kinds:
            key = f"{correlation:g}"
            curves.setdefault(key, {})[kind] = [
                run(kind, correlation, seed, args.steps, args.batch) for seed in range(args.seeds)
            ]
            print(f"correlation {key}, {kind}: done", flush=True)
    tail = max(1, args.steps // 10)
    rows: list[dict[str, Any]] = []
    for key, by_kind in curves.items():
        row: dict[str, Any] = {"correlation": float(key)}
        for kind, runs in by_kind.items():
            finals = [statistics.mean(curve[-tail:]) for curve in runs]
            row[kind] = statistics.mean(finals)
            row[f"{kind}_std"] = statistics.stdev(finals) if len(finals) > 1 else 0.0
        rows.append(row)
    lines = [
        "| correlation | shared-bottom final loss | MMoE final loss | MMoE better |",
        "|---|---|---|---|",
    ]
    for row in rows:
        better = "yes" if row["mmoe"] <= row["shared-bottom"] else "no"
        cells = [
            f"{row['correlation']:g}",
            f"{row['shared-bottom']:.4f} ± {row['shared-bottom_std']:.4f}",
            f"{row['mmoe']:.4f} ± {row['mmoe_std']:.4f}",
            better,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), sharey=True)
    axes = axes if len(curves) > 1 else [axes]
    window = max(1, args.steps // 100)
    for ax, (key, by_kind) in zip(axes, curves.items(), strict=True):
        for kind, runs in by_kind.items():
            mean = torch.tensor(runs).mean(dim=0)
            smooth = torch.nn.functional.avg_pool1d(
                mean.view(1, 1, -1), window, stride=window
            ).flatten()
            ax.plot([window * (i + 1) for i in range(len(smooth))], smooth.tolist(), label=kind)
        ax.set_title(f"task correlation {key}")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("training loss (sum of MSEs)")
    axes[0].legend()
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "mmoe_synthetic.png", dpi=110)
    meta = {
        "taskbalance": taskbalance.__version__,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "seeds": list(range(args.seeds)),
        "steps": args.steps,
        "batch": args.batch,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    (args.out / "mmoe_synthetic.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=1)
    )
    (args.out / "mmoe_synthetic.md").write_text(
        "# MMoE synthetic experiment (Ma et al. 2018)\n\n"
        f"Mean training loss over the last 10% of {args.steps} steps, mean ± std over "
        f"{args.seeds} seeds.\n\n{table}\n\n![loss curves](mmoe_synthetic.png)\n"
    )
    print(f"wrote {args.out / 'mmoe_synthetic.md'} ({meta['wall_seconds']} s)")


if __name__ == "__main__":
    main()
