"""The two-objective toy problem of the CAGrad / Nash-MTL / FAMO papers.

Two losses of ``x = (x1, x2)`` built from ``log|.|`` terms for ``x2 > 0`` and quadratics for
``x2 < 0`` (gated by ``tanh(+-x2 / 2)``), the first scaled by 0.1 so that the tasks' gradient
magnitudes differ (the reference code's ``Toy(scale=0.1)``). The Pareto front is the segment
``x2 = -8.3552, x1 in [-7, 7]`` (of the quadratic branch, where the two parabolas' minima are
at ``x1 = -7`` and ``x1 = 7``). Five starts, ``(-8.5, 7.5), (0, 0), (9, 9), (-7.5, -0.5),
(9, -1)``, Adam with lr 1e-3 on ``x``, 35,000 steps (``--steps``).

Each method runs from all five starts (one method instance per start; the per-start task
Jacobians come from one backward, and ``taskbalance.aggregate`` combines them). A start
"reaches the front" when its final point is within ``--threshold`` (default 0.1) of the
front segment. Writes ``toy.png`` (trajectories over the loss contours, one panel per
method), ``toy.json`` and ``toy.md`` (the table) into ``--out``.

Per-method results are cached in ``<out>/toy/toy_runs/`` (reused unless ``--fresh``);
``--jobs`` runs methods in parallel processes.

Usage::

    taskbalance bench toy                                    # all methods, ~25 min on one core
    taskbalance bench toy --methods ew mgda --jobs 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import Manager, get_context
from pathlib import Path
from typing import Any

import torch

import taskbalance
from taskbalance import methods
from taskbalance.aggregate import combine_jacobian
from taskbalance.bench.runner import Progress, slug
from taskbalance.bench.toy_setups import OURS, PAPERS, SETTINGS, ToySetup, setup

LOWER = 5e-6
FRONT_X2 = -8.3552
FRONT_X1 = (-7.0, 7.0)

# updates clipped to a norm by the reference code (Nash-MTL's is the method's own max_norm;
# FAMO's script calls clip_grad_norm_ before backward, i.e. it clips nothing)
CLIP: dict[str, float] = {}


def toy_losses(x: torch.Tensor, scale: float = 0.1) -> torch.Tensor:
    """``(n, 2)`` losses of ``n`` points ``x`` (``(n, 2)``)."""
    x1, x2 = x[:, 0], x[:, 1]
    f1 = torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), LOWER).log() + 6
    f2 = torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), LOWER).log() + 6
    c1 = torch.clamp(torch.tanh(x2 * 0.5), 0)
    f1_sq = ((-x1 + 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    f2_sq = ((-x1 - 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    c2 = torch.clamp(torch.tanh(-x2 * 0.5), 0)
    f1 = (f1 * c1 + f1_sq * c2) * scale
    f2 = f2 * c1 + f2_sq * c2
    return torch.stack([f1, f2], dim=1)


def distance_to_front(point: torch.Tensor) -> float:
    x1 = float(point[0].clamp(*FRONT_X1))
    return float(torch.hypot(point[0] - x1, point[1] - FRONT_X2))


def parse_amortised(name: str) -> tuple[str, int]:
    """``"mgda+k5"`` -> ``("mgda", 5)``: the method, and how often its weights are recomputed
    (as ``update_every``; in between the last weights are reused)."""
    base, _, every = name.partition("+k")
    if every and not every.isdigit():
        raise ValueError(f"toy: {name!r} is not a method or METHOD+kN (e.g. mgda+k5)")
    return base, int(every) if every else 1


def run(
    name: str,
    steps: int,
    record_every: int,
    report: Callable[[int], None] | None = None,
    toy: ToySetup = OURS,
) -> dict[str, Any]:
    """Run entry ``name`` of ``toy`` from every start for ``steps`` Adam steps (lr 1e-3);
    ``report(k)`` is called after every ``k`` further steps (about a hundred times per run)."""
    label, update_every = parse_amortised(name)
    base, hparams = toy.method(label)
    chunk, reported = max(1, steps // 100), 0
    instances = [methods.create(base, **hparams) for _ in toy.starts]
    last_weights: list[torch.Tensor | None] = [None] * len(toy.starts)
    x = torch.tensor(toy.starts, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([x], lr=1e-3)
    trajectory = [x.detach().clone()]
    for step in range(steps):
        losses = toy_losses(x, toy.scale)
        g1, g2 = (
            torch.autograd.grad(losses[:, i].sum(), x, retain_graph=i == 0)[0] for i in range(2)
        )
        directions = []
        for s, method in enumerate(instances):
            jacobian = torch.stack([g1[s], g2[s]])
            reused = last_weights[s]
            if reused is None or step % update_every == 0:
                combination = combine_jacobian(method, jacobian, losses=losses[s].detach())
                reused = last_weights[s] = combination.weights
                if combination.direction is not None:
                    directions.append(combination.direction.to(jacobian.dtype))
                    continue
            assert reused is not None
            directions.append(reused.to(jacobian.dtype) @ jacobian)
        if base in CLIP:
            directions = [
                d * torch.clamp(CLIP[base] / (d.norm() + 1e-12), max=1.0) for d in directions
            ]
        optimizer.zero_grad()
        x.grad = torch.stack(directions)
        optimizer.step()
        if (step + 1) % record_every == 0:
            trajectory.append(x.detach().clone())
        if report is not None and ((step + 1) % chunk == 0 or step + 1 == steps):
            report(step + 1 - reported)
            reported = step + 1
    final = x.detach()
    distances = [distance_to_front(point) for point in final]
    return {
        "trajectory": torch.stack(trajectory).tolist(),
        "final": final.tolist(),
        "distance": distances,
        "final_losses": toy_losses(final, toy.scale).tolist(),
    }


def plot(
    results: dict[str, dict[str, Any]], threshold: float, path: Path, scale: float = 0.1
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    grid = torch.linspace(-10, 10, 300, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    values = toy_losses(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1), scale)
    total = values.sum(dim=1).reshape(xx.shape)
    columns = min(4, len(results))
    rows = (len(results) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.2 * rows), squeeze=False)
    for ax, (name, result) in zip(axes.flat, results.items(), strict=False):
        ax.contour(xx, yy, total, levels=30, cmap="Greys", linewidths=0.5)
        ax.plot(FRONT_X1, [FRONT_X2, FRONT_X2], color="gold", linewidth=4, label="Pareto front")
        trajectory = torch.tensor(result["trajectory"])  # (points, starts, 2)
        for s in range(trajectory.shape[1]):
            reached = result["distance"][s] <= threshold
            ax.plot(
                trajectory[:, s, 0],
                trajectory[:, s, 1],
                color="tab:green" if reached else "tab:red",
                linewidth=1.5,
            )
            ax.scatter(*trajectory[0, s], color="black", s=12, zorder=3)
            ax.scatter(
                *trajectory[-1, s],
                color="tab:green" if reached else "tab:red",
                marker="*",
                s=60,
                zorder=4,
            )
        hits = sum(d <= threshold for d in result["distance"])
        starts = len(result["distance"])
        ax.set_title(f"{name}: {hits}/{starts} reach the front", fontsize=10)
        ax.set_xlim(-10, 10)
        ax.set_ylim(-10, 10)
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
    for ax in list(axes.flat)[len(results) :]:
        ax.axis("off")
    legend = [
        Line2D([], [], color="0.5", linewidth=0.6, label="contours of f1 + f2"),
        Line2D([], [], color="gold", linewidth=4, label="Pareto front (x2 = -8.3552, |x1| <= 7)"),
        Line2D([], [], color="black", marker="o", linestyle="", markersize=4, label="start"),
        Line2D(
            [],
            [],
            color="tab:green",
            linewidth=1.5,
            marker="*",
            markersize=9,
            label=f"trajectory and end: reaches the front (within {threshold})",
        ),
        Line2D(
            [],
            [],
            color="tab:red",
            linewidth=1.5,
            marker="*",
            markersize=9,
            label="trajectory and end: does not reach it",
        ),
    ]
    fig.legend(handles=legend, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if rows > 1 else 0.1, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fingerprint(name: str, steps: int, toy: ToySetup = OURS) -> str:
    """What a run's result depends on: its name and settings, the step count, the torch version
    and the source of this module, of ``aggregate`` and of every method and solver. A cached
    run is reused only when its fingerprint matches, so a changed method is never reported
    with an old result."""
    package = Path(taskbalance.__file__).parent
    files = [Path(__file__), package / "bench" / "toy_setups.py", package / "aggregate.py"]
    files += sorted((package / "methods").rglob("*.py")) + sorted(
        (package / "solvers").rglob("*.py")
    )
    digest = hashlib.sha256()
    method = toy.method(parse_amortised(name)[0])
    settings = [name, steps, toy.name, toy.starts, toy.scale, method, CLIP, torch.__version__]
    digest.update(json.dumps(settings).encode())
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()[:20]


def _run_cached(
    name: str, steps: int, cache: Path, fresh: bool, queue: Any = None, paper: str | None = None
) -> dict[str, Any]:
    torch.set_num_threads(1)
    toy = setup(paper)
    cached = cache / f"{slug(name)}_{steps}.json"
    key = fingerprint(name, steps, toy)
    if cached.exists() and not fresh:
        result: dict[str, Any] = json.loads(cached.read_text())
        if result.get("fingerprint") == key:
            if queue is not None:
                queue.put((name, steps))
            return result

    def report(count: int) -> None:
        if queue is not None:
            queue.put((name, count))

    result = run(name, steps, record_every=max(1, steps // 500), report=report, toy=toy)
    result["fingerprint"] = key
    cached.write_text(json.dumps(result))
    return result


class _LocalQueue:
    """The queue interface for runs in this process: forwards progress at once."""

    def __init__(self, forward: Callable[[str, int], None]) -> None:
        self.forward = forward

    def put(self, item: tuple[str, int]) -> None:
        self.forward(*item)


def run_toy(
    out: Path,
    methods: Sequence[str] | None = None,
    *,
    steps: int | None = None,
    threshold: float = 0.1,
    jobs: int = 1,
    fresh: bool = False,
    progress: Progress | None = None,
    paper: str | None = None,
) -> dict[str, Any]:
    """Run every entry from the setup's starts into ``out/toy`` (``out/toy_<paper>`` for a
    paper's own setting, :mod:`taskbalance.bench.toy_setups`); returns the summary
    (toy.json)."""
    toy = setup(paper)
    methods = list(methods or (toy.entries or SETTINGS))
    steps = steps or toy.steps
    root = out / ("toy" if paper is None else f"toy_{paper}")
    cache = root / "toy_runs"
    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    done: dict[str, int] = dict.fromkeys(methods, 0)
    if progress:
        progress.planned(len(methods) * steps)

    def advance(name: str, count: int) -> None:
        done[name] += count
        if progress:
            running = [n for n in methods if 0 < done[n] < steps]
            progress.advance(count, "toy: " + (", ".join(running) or name))

    if jobs <= 1:
        for name in methods:
            results[name] = _run_cached(name, steps, cache, fresh, _LocalQueue(advance), paper)
    else:
        with (
            Manager() as manager,
            ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool,
        ):
            queue = manager.Queue()
            futures = {
                pool.submit(_run_cached, n, steps, cache, fresh, queue, paper): n for n in methods
            }
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                while not queue.empty():
                    advance(*queue.get())
                for future in finished:
                    results[futures[future]] = future.result()
    results = {name: results[name] for name in methods}
    starts = len(toy.starts)
    header = [
        "method",
        f"starts reaching the front (distance <= {threshold})",
        "final distance per start",
        "final x per start",
        "final (f1, f2) per start",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|---|---|"]
    for name, result in results.items():
        hits = sum(d <= threshold for d in result["distance"])
        distances = ", ".join(f"{d:.2f}" for d in result["distance"])
        points = ", ".join(f"({a:.2f}, {b:.2f})" for a, b in result["final"])
        finals = ", ".join(f"({a:.2f}, {b:.2f})" for a, b in result["final_losses"])
        lines.append(f"| {name} | {hits}/{starts} | {distances} | {points} | {finals} |")
    table = "\n".join(lines)
    plot(results, threshold, root / "toy.png", toy.scale)
    meta = {
        "taskbalance": taskbalance.__version__,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "setup": toy.name,
        "source": toy.source,
        "steps": steps,
        "starts": toy.starts,
        "f1_scale": toy.scale,
        "settings": {name: toy.method(parse_amortised(name)[0]) for name in methods},
        "update_clipped_to": CLIP,
        "threshold": threshold,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    summary = {
        "meta": meta,
        "results": {
            name: {k: v for k, v in r.items() if k != "trajectory"}
            | {"reached": sum(d <= threshold for d in r["distance"])}
            for name, r in results.items()
        },
    }
    (root / "toy.json").write_text(json.dumps(summary, indent=1))
    settings = "; ".join(
        f"{name}: {method} {hparams or ''}".strip()
        for name, (method, hparams) in (
            (name, toy.method(parse_amortised(name)[0])) for name in methods
        )
    )
    source = "" if paper is None else f" Setting of {toy.source}."
    (root / "toy.md").write_text(
        f"# Toy two-objective problem ({toy.name})\n\n{steps} Adam steps (lr 1e-3) from "
        f"{starts} starts {list(toy.starts)}, f1 scaled by {toy.scale:g}.{source} "
        f"Methods: {settings}.\n\n{table}\n\n![trajectories](toy.png)\n"
    )
    return summary


class _PrintProgress:
    def __init__(self) -> None:
        self.total, self.done, self.shown = 0, 0, -1

    def planned(self, total: int) -> None:
        self.total = total

    def __call__(self, message: str) -> None:
        print(message, flush=True)

    def advance(self, count: int, message: str) -> None:
        self.done += count
        percent = 100 * self.done // max(self.total, 1)
        if percent // 10 != self.shown:
            self.shown = percent // 10
            print(f"{percent:3d}% {message}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=None, help="default: the setup's")
    parser.add_argument("--steps", type=int, default=None, help="default: the setup's")
    parser.add_argument(
        "--paper", choices=sorted(PAPERS), default=None, help="a paper's own toy setting"
    )
    parser.add_argument("--threshold", type=float, default=0.1)
    parser.add_argument("--jobs", type=int, default=1, help="methods run in parallel processes")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--fresh", action="store_true", help="ignore per-method results cached in toy_runs/"
    )
    args = parser.parse_args(argv)
    summary = run_toy(
        args.out,
        args.methods,
        steps=args.steps,
        threshold=args.threshold,
        jobs=args.jobs,
        fresh=args.fresh,
        progress=_PrintProgress(),
        paper=args.paper,
    )
    starts = len(summary["meta"]["starts"])
    for name, result in summary["results"].items():
        print(f"{name}: {result['reached']}/{starts} starts reach the front")
    print(f"wrote {args.out / ('toy' if args.paper is None else f'toy_{args.paper}')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
