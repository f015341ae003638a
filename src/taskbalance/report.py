"""HTML reports with PNG plots (matplotlib, Agg) from run directories.

A run directory (written by the trainer) holds ``steps.csv`` and ``epochs.csv``; a comparison
directory (written by ``taskbalance train``) holds ``summary.json`` and one run directory per
method. :func:`write_report` renders either into ``report.html`` next to the data:

* per run: per-task training loss, validation metrics per epoch, task weights over time,
  per-task gradient norms, and the mean task-gradient cosine heatmap (when recorded);
* for a comparison: the table of test metrics per method (best value per column in bold,
  with the step time), the Pareto front of two task metrics, and every run's page;
* for a benchmark (``taskbalance bench``): the multi-seed table (mean +/- std, Delta-m%, mean
  rank, step-time ratio) and the Delta-m plot first; for a suite of benchmarks (``suite.json``),
  one section per benchmark and the toy problem's trajectories.
"""

from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path
from typing import Any

from taskbalance._validation import run_folder

__all__ = ["write_report"]


def _read_csv(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    rows = []
    with path.open() as stream:
        for row in csv.DictReader(stream):
            parsed = {}
            for key, value in row.items():
                try:
                    parsed[key] = float(value) if value not in ("", None) else math.nan
                except ValueError:
                    continue
            rows.append(parsed)
    return rows


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _line_plot(
    rows: list[dict[str, float]], prefix: str, x_key: str, title: str, path: Path, log: bool = False
) -> bool:
    keys = sorted({k for row in rows for k in row if k.startswith(prefix) and k != x_key})
    if not keys:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key in keys:
        points = [(row[x_key], row[key]) for row in rows if key in row and not math.isnan(row[key])]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, label=key.removeprefix(prefix) or key, linewidth=1.2)
    ax.set_title(title)
    ax.set_xlabel(x_key)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _cosine_heatmap(rows: list[dict[str, float]], path: Path) -> bool:
    pairs = sorted({k for row in rows for k in row if k.startswith("cosine/")})
    if not pairs:
        return False
    tasks: list[str] = []
    for key in pairs:
        _, a, b = key.split("/")
        for t in (a, b):
            if t not in tasks:
                tasks.append(t)
    import numpy as np

    matrix = np.eye(len(tasks))
    for key in pairs:
        _, a, b = key.split("/")
        values = [row[key] for row in rows if key in row and not math.isnan(row[key])]
        mean = float(np.mean(values)) if values else 0.0
        matrix[tasks.index(a), tasks.index(b)] = matrix[tasks.index(b), tasks.index(a)] = mean
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 * len(tasks) + 2, 1.0 * len(tasks) + 1.5))
    image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="coolwarm")
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    for i in range(len(tasks)):
        for j in range(len(tasks)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title("mean task-gradient cosine")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _run_section(run_dir: Path, title: str, base: Path) -> str:
    steps = _read_csv(run_dir / "steps.csv")
    epochs = _read_csv(run_dir / "epochs.csv")
    figures = run_dir / "figures"
    figures.mkdir(exist_ok=True)
    images = []
    plots = [
        (steps, "loss/", "step", "training loss per task", "loss.png", True),
        (epochs, "", "epoch", "validation metrics per epoch", "validation.png", False),
        (steps, "weight/", "step", "task weights", "weights.png", False),
        (steps, "grad_norm/", "step", "task gradient norms", "grad_norms.png", True),
        (steps, "layer_grad_norm/", "step", "gradient norm per shared layer", "layers.png", True),
        (
            steps,
            "conflict_rate",
            "step",
            "conflict rate (share of task pairs with cos < 0)",
            "conflict.png",
            False,
        ),
    ]
    for rows, prefix, x_key, name, file, log in plots:
        if prefix == "":  # validation metrics (losses are in the training plot)
            rows = [
                {k: v for k, v in row.items() if "/" in k and not k.endswith("/loss")}
                | {"epoch": row.get("epoch", math.nan)}
                for row in rows
            ]
        if rows and _line_plot(rows, prefix, x_key, name, figures / file, log):
            images.append(figures / file)
    if _cosine_heatmap(steps, figures / "cosines.png"):
        images.append(figures / "cosines.png")

    body = "".join(
        f'<img src="{html.escape(p.relative_to(base).as_posix())}" alt="{html.escape(p.stem)}">'
        for p in images
    )
    results = run_dir / "results.json"
    extra = ""
    if results.exists():
        health = json.loads(results.read_text()).get("health")
        if health:
            extra = f"<pre>{html.escape(health)}</pre>"

    return (
        f"<section><h2>{html.escape(title)}</h2><div class='figures'>{body}</div>{extra}</section>"
    )


def _affinity_section(directory: Path, base: Path) -> str:
    """Affinity heatmaps and suggested groups written by ``taskbalance affinity``."""
    if not directory.is_dir():
        return ""
    images = "".join(
        f'<img src="{html.escape(p.relative_to(base).as_posix())}" alt="{html.escape(p.stem)}">'
        for p in sorted(directory.glob("affinity_*.png"))
    )
    groups = directory / "groups.txt"
    text = f"<pre>{html.escape(groups.read_text())}</pre>" if groups.exists() else ""
    return (
        "<section><h2>Task affinity and suggested groups</h2>"
        f"<div class='figures'>{images}</div>{text}</section>"
    )


def _comparison(root: Path, summary: dict[str, Any]) -> str:
    runs = summary["runs"]
    keys = [k for k in runs[0]["test"] if "/" in k and not k.endswith("/loss")]
    directions = runs[0].get("directions", {})
    best = {}
    for key in keys:
        values = [r["test"].get(key, math.nan) for r in runs]
        finite = [v for v in values if not math.isnan(v)]
        if finite:
            best[key] = max(finite) if directions.get(key, True) else min(finite)
    header = "".join(
        f"<th>{html.escape(k)} {'↑' if directions.get(k, True) else '↓'}</th>" for k in keys
    )
    rows = []
    for run in runs:
        cells = []
        for key in keys:
            value = run["test"].get(key, math.nan)
            text = f"{value:.4f}"
            cells.append(
                f"<td><b>{text}</b></td>" if value == best.get(key) else f"<td>{text}</td>"
            )
        rows.append(
            f"<tr><td>{html.escape(run['method'])}</td>{''.join(cells)}"
            f"<td>{run['test'].get('mean_loss', math.nan):.4f}</td>"
            f"<td>{run['ms_per_step']:.2f}</td></tr>"
        )
    head = f"<tr><th>method</th>{header}<th>mean loss ↓</th><th>ms / step</th></tr>"
    table = f"<table>{head}{''.join(rows)}</table>"
    pareto = ""
    if len(keys) >= 2:
        pareto_path = root / "pareto.png"
        _pareto_plot(runs, keys[0], keys[1], directions, pareto_path)
        pareto = '<img src="pareto.png" alt="pareto">'
    return f"<section><h2>Test metrics (best validation epoch)</h2>{table}{pareto}</section>"


def _pareto_plot(
    runs: list[dict[str, Any]], x_key: str, y_key: str, directions: dict[str, bool], path: Path
) -> None:
    points = [(r["test"][x_key], r["test"][y_key], r["method"]) for r in runs]
    sign_x = 1 if directions.get(x_key, True) else -1
    sign_y = 1 if directions.get(y_key, True) else -1
    front = [
        p
        for p in points
        if not any(
            sign_x * q[0] >= sign_x * p[0]
            and sign_y * q[1] >= sign_y * p[1]
            and (q[0], q[1]) != (p[0], p[1])
            for q in points
        )
    ]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for x, y, label in points:
        ax.scatter(x, y, color="tab:red" if (x, y, label) in front else "tab:gray", zorder=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ordered = sorted(front, key=lambda p: p[0])
    ax.plot(
        [p[0] for p in ordered],
        [p[1] for p in ordered],
        color="tab:red",
        alpha=0.5,
        label="Pareto front",
    )
    ax.set_xlabel(f"{x_key} ({'higher' if sign_x > 0 else 'lower'} is better)")
    ax.set_ylabel(f"{y_key} ({'higher' if sign_y > 0 else 'lower'} is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def mean_std(stat: dict[str, float], spec: str, seeds: int) -> str:
    """``"mean ± std"`` formatted with ``spec`` (``".4f"``, ``"+.2f"``); just the mean for one
    seed, where a spread of 0 would only look like a measurement."""
    text = format(stat["mean"], spec)
    return text if seeds < 2 else f"{text} ± {format(stat['std'], spec.lstrip('+'))}"


def _benchmark_table(results: dict[str, Any]) -> str:
    """A benchmark's results.json as an HTML table: mean +/- std, Delta-m%, rank, step ratio."""
    directions = results["directions"]
    metrics = list(directions)
    arrows = {True: "↑", False: "↓"}
    head = "".join(f"<th>{html.escape(m)} {arrows[directions[m]]}</th>" for m in metrics)
    rows = [
        "<tr><td>single-task</td>"
        + "".join(f"<td>{results['baselines'][m]:.4f}</td>" for m in metrics)
        + "<td>0</td><td>0</td><td></td><td></td></tr>"
    ]
    seeds = len(results["seeds"])
    for name, row in results["rows"].items():
        cells = "".join(f"<td>{mean_std(row['metrics'][m], '.4f', seeds)}</td>" for m in metrics)
        ratio = row.get("step_ratio_to_ew")
        label = html.escape(name) + (" *" if row.get("pareto") else "")
        rows.append(
            f"<tr><td>{label}</td>{cells}"
            f"<td>{mean_std(row['delta_m'], '+.2f', seeds)}</td>"
            f"<td>{mean_std(row['delta_m_tasks'], '+.2f', seeds)}</td>"
            f"<td>{row['mean_rank']:.2f}</td>"
            f"<td>{'' if ratio is None else f'{ratio:.2f}'}</td></tr>"
        )
    header = (
        f"<tr><th>method</th>{head}<th>Δm% (metrics) ↑</th><th>Δm% (tasks) ↑</th>"
        "<th>mean rank ↓</th><th>step / ew</th></tr>"
    )
    return (
        f"<p>{html.escape(results['description'])}</p><p>Mean ± std over {seeds} seed(s); test "
        "metrics at the best validation epoch; Δm% against the single-task baselines "
        "(metrics: uniform over metrics, Maninis et al.; tasks: per task first, LibMTL); "
        f"* = Pareto-optimal.</p><table>{header}{''.join(rows)}</table>"
    )


def _benchmark_section(root: Path, base: Path, link: bool) -> str:
    results = json.loads((root / "results.json").read_text())
    prefix = root.relative_to(base).as_posix() + "/" if root != base else ""
    image = f'<img src="{html.escape(prefix)}delta_m.png" alt="delta-m">'
    more = f'<p><a href="{html.escape(prefix)}report.html">per-run pages</a></p>' if link else ""
    return (
        f"<section><h2>Benchmark: {html.escape(results['benchmark'])}</h2>"
        f"{_benchmark_table(results)}<div class='figures'>{image}</div>{more}</section>"
    )


def _toy_section(root: Path, base: Path) -> str:
    summary = json.loads((root / "toy.json").read_text())
    meta = summary["meta"]
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{r['reached']}/5</td>"
        f"<td>{', '.join(f'{d:.2f}' for d in r['distance'])}</td></tr>"
        for name, r in summary["results"].items()
    )
    prefix = root.relative_to(base).as_posix()
    return (
        "<section><h2>Toy two-objective problem (CAGrad / Nash-MTL / FAMO papers)</h2>"
        f"<p>{meta['steps']} Adam steps (lr 1e-3) from 5 starts; a start reaches the Pareto "
        f"front (x2 = -8.3552, x1 in [-7, 7]) when it ends within {meta['threshold']} of it.</p>"
        "<table><tr><th>method</th><th>starts reaching the front</th>"
        f"<th>final distance per start</th></tr>{rows}</table>"
        f'<div class="figures"><img class="wide" src="{html.escape(prefix)}/toy.png" '
        'alt="toy trajectories"></div></section>'
    )


def _suite_sections(root: Path) -> tuple[str, list[str]]:
    suite = json.loads((root / "suite.json").read_text())
    sections = []
    for part in suite["parts"]:
        if part == "toy":
            sections.append(_toy_section(root / "toy", root))
        elif (root / part / "results.json").exists():
            sections.append(_benchmark_section(root / part, root, link=True))
    sections.append(
        "<section><h2>Environment</h2>"
        f"<pre>{html.escape(json.dumps(suite['meta'], indent=1))}</pre></section>"
    )
    return "benchmarks: " + ", ".join(suite["parts"]), sections


_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.figures img { max-width: 48%; margin: 0.5%; border: 1px solid #eee; }
.figures img.wide { max-width: 98%; }
pre { background: #f6f6f6; padding: 0.8em; }
"""


def write_report(run_dir: str | Path) -> Path:
    """Render ``report.html`` for a run or comparison directory; returns its path."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    summary_path = root / "summary.json"
    sections: list[str] = []
    title = root.name
    if (root / "suite.json").exists():
        title, sections = _suite_sections(root)
    elif summary_path.exists():
        summary = json.loads(summary_path.read_text())
        title = summary.get("name", title)
        if (root / "results.json").exists() and summary.get("benchmark"):
            sections.append(_benchmark_section(root, root, link=False))
        sections.append(_comparison(root, summary))
        for run in summary["runs"]:
            sub = root / run.get("dir", run_folder(run["method"]))
            if sub.is_dir():
                sections.append(_run_section(sub, run["method"], root))
        sections.append(_affinity_section(root / "affinity", root))
        meta = summary.get("meta", {})
        sections.append(
            "<section><h2>Environment</h2>"
            f"<pre>{html.escape(json.dumps(meta, indent=1))}</pre></section>"
        )
    elif (root / "steps.csv").exists():
        sections.append(_run_section(root, root.name, root))
        sections.append(_affinity_section(root / "affinity", root))
    else:
        raise FileNotFoundError(
            f"{root} has neither summary.json nor steps.csv: is it a run directory?"
        )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>taskbalance report: {html.escape(title)}</h1>"
        f"{''.join(sections)}</body></html>"
    )
    output = root / "report.html"
    output.write_text(page)
    return output
