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
import statistics
from pathlib import Path
from typing import Any, cast

from taskbalance._validation import run_folder
from taskbalance.plots import (
    close_to_best,
    curves_figure,
    heatmap_figure,
    noise_caption,
    pareto_figure,
)

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


def _series(rows: list[dict[str, float]], key: str) -> list[float]:
    return [row.get(key, math.nan) for row in rows]


def _keys(rows: list[dict[str, float]], prefix: str) -> list[str]:
    return sorted({k for row in rows for k in row if k.startswith(prefix)})


def _by_unit(rows: list[dict[str, float]]) -> dict[str, dict[str, list[float]]]:
    """Validation metrics grouped by metric (``digit/accuracy`` and ``parity/accuracy`` share
    the accuracy panel; ``value/mae`` gets its own), losses left out."""
    panels: dict[str, dict[str, list[float]]] = {}
    for key in sorted({k for row in rows for k in row if "/" in k and not k.endswith("/loss")}):
        task, metric = key.split("/", 1)
        panels.setdefault(f"validation {metric}", {})[task] = _series(rows, key)
    return panels


def _run_figures(run_dir: Path) -> tuple[list[Path], list[str]]:
    """The run's figures and the notes for series that were not worth drawing."""
    steps = _read_csv(run_dir / "steps.csv")
    epochs = _read_csv(run_dir / "epochs.csv")
    figures = run_dir / "figures"
    figures.mkdir(exist_ok=True)
    x_steps = _series(steps, "step")
    window = max(5, len(steps) // 40)

    def per_task(prefix: str, label: str) -> dict[str, dict[str, list[float]]]:
        keys = _keys(steps, prefix)
        return {label: {k.removeprefix(prefix): _series(steps, k) for k in keys}} if keys else {}

    plots: list[tuple[str, list[float], dict[str, dict[str, list[float]]], str, bool, int]] = [
        (
            "loss.png",
            x_steps,
            per_task("loss/", "training loss"),
            "training loss per task",
            True,
            0,
        ),
        (
            "validation.png",
            _series(epochs, "epoch"),
            _by_unit(epochs),
            "validation metrics per epoch",
            False,
            0,
        ),
        ("weights.png", x_steps, per_task("weight/", "task weight"), "task weights", False, 0),
        (
            "grad_norms.png",
            x_steps,
            per_task("grad_norm/", "task gradient norm"),
            "task gradient norms",
            True,
            0,
        ),
        (
            "layers.png",
            x_steps,
            per_task("layer_grad_norm/", "gradient norm"),
            "gradient norm per shared layer",
            True,
            0,
        ),
        (
            "conflict.png",
            x_steps,
            {"conflict rate": {"conflict rate": _series(steps, "conflict_rate")}}
            if _keys(steps, "conflict_rate")
            else {},
            "share of task pairs with cos < 0",
            False,
            window,
        ),
    ]
    images, notes = [], []
    for file, x, panels, title, log, smooth_window in plots:
        if not panels or not x:
            continue
        x_label = "epoch" if file == "validation.png" else "optimizer step"
        drawn, note = curves_figure(
            x,
            panels,
            figures / file,
            title=title,
            x_label=x_label,
            log=log,
            smooth_window=smooth_window,
        )
        if drawn:
            images.append(figures / file)
        if note:
            notes.append(f"{note} (not plotted)")
    cosine = _mean_cosines(steps)
    if cosine is not None:
        matrix, tasks = cosine
        heatmap_figure(
            matrix,
            tasks,
            figures / "cosines.png",
            title="mean task-gradient cosine over the logged steps",
            symmetric_limit=1.0,
        )
        images.append(figures / "cosines.png")
    return images, notes


def _mean_cosines(rows: list[dict[str, float]]) -> tuple[list[list[float]], list[str]] | None:
    pairs = _keys(rows, "cosine/")
    if not pairs:
        return None
    tasks: list[str] = []
    for key in pairs:
        for task in key.split("/")[1:]:
            if task not in tasks:
                tasks.append(task)
    matrix = [[1.0 if i == j else 0.0 for j in range(len(tasks))] for i in range(len(tasks))]
    for key in pairs:
        _, a, b = key.split("/")
        values = [v for v in _series(rows, key) if not math.isnan(v)]
        mean = statistics.fmean(values) if values else 0.0
        i, j = tasks.index(a), tasks.index(b)
        matrix[i][j] = matrix[j][i] = mean
    return matrix, tasks


def _run_section(run_dir: Path, title: str, base: Path) -> str:
    for stale in (
        "figures/loss.png",
        "figures/validation.png",
        "figures/weights.png",
        "figures/grad_norms.png",
        "figures/layers.png",
        "figures/conflict.png",
        "figures/cosines.png",
    ):
        (run_dir / stale).unlink(missing_ok=True)
    images, notes = _run_figures(run_dir)
    body = "".join(
        f'<img src="{html.escape(p.relative_to(base).as_posix())}" alt="{html.escape(p.stem)}">'
        for p in images
    )
    extra = "".join(f"<p class='note'>{html.escape(note)}</p>" for note in notes)
    results = run_dir / "results.json"
    if results.exists():
        health = json.loads(results.read_text()).get("health")
        if health:
            extra += f"<pre>{html.escape(health)}</pre>"
    ran = run_dir / "run_config.json"
    if ran.exists():
        extra += (
            "<details><summary>Configuration that ran</summary>"
            f"<pre>{html.escape(ran.read_text())}</pre></details>"
        )
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


STEP_TIME_NOTE = (
    "train step ms: median time of one optimizer step's own work (forward, balancing "
    "backward, optimizer step), without data loading, validation, checkpoints and logging; "
    "runs trained side by side share the CPU, so compare ratios within one table."
)


OLD_STEP_TIME_NOTE = (
    "step / ew in these results: whole fit() time per optimizer step (validation, checkpoints "
    "and logging included; measured before the train-step timer existed), which understates "
    "the gradient methods' cost; `taskbalance bench` now times the train step alone."
)


def step_time_column(results: dict[str, Any]) -> tuple[str, str]:
    """The step-time column's header and its note: train-step time for results written by
    this version, fit time per step for older committed results (said so)."""
    if results.get("step_time") == "train_step":
        return "train step / ew", STEP_TIME_NOTE
    return "fit time per step / ew", OLD_STEP_TIME_NOTE


def _comparison(root: Path, summary: dict[str, Any]) -> str:
    runs = summary["runs"]
    keys = [k for k in runs[0]["test"] if "/" in k and not k.endswith("/loss")]
    directions = {k: runs[0].get("directions", {}).get(k, True) for k in keys}
    columns = [*keys, "mean_loss"]
    up = {**directions, "mean_loss": False}
    best = {}
    for key in columns:
        finite = [v for r in runs if not math.isnan(v := r["test"].get(key, math.nan))]
        if finite:
            best[key] = max(finite) if up[key] else min(finite)
    results_path = root / "results.json"
    if results_path.exists():  # a benchmark: the front of the mean metrics, as its table stars
        rows = json.loads(results_path.read_text())["rows"]
        points = {name: {k: row["metrics"][k]["mean"] for k in keys} for name, row in rows.items()}
        what = "mean test metrics over seeds, as in the benchmark table"
    else:
        points = {run["method"]: {k: run["test"][k] for k in keys} for run in runs}
        what = "test metrics"
    front = pareto_figure(points, directions, root / "pareto.png", title=what)
    header = "".join(f"<th>{html.escape(k)} {'↑' if up[k] else '↓'}</th>" for k in keys)
    lines = []
    for run in runs:
        cells = []
        for key in columns:
            value = run["test"].get(key, math.nan)
            text = f"{value:.4f}"
            cells.append(
                f"<td><b>{text}</b></td>" if value == best.get(key) else f"<td>{text}</td>"
            )
        star = " *" if run["method"] in front else ""
        ms = run.get("ms_per_step", math.nan)
        lines.append(
            f"<tr><td>{html.escape(run['method'])}{star}</td>{''.join(cells)}<td>{ms:.2f}</td></tr>"
        )
    head = f"<tr><th>method</th>{header}<th>mean loss ↓</th><th>train step ms</th></tr>"
    table = f"<table>{head}{''.join(lines)}</table>"
    figure = (
        '<div class="figures"><img class="wide" src="pareto.png" alt="Pareto front"></div>'
        if len(keys) >= 2 and (root / "pareto.png").exists()
        else ""
    )
    return (
        "<section><h2>Test metrics (best validation epoch)</h2>"
        f"{table}<p class='note'>* = on the Pareto front over all {len(keys)} metrics "
        f"({what}). {html.escape(STEP_TIME_NOTE)}</p>{figure}</section>"
    )


def mean_std(stat: dict[str, float], spec: str, seeds: int) -> str:
    """``"mean ± std"`` formatted with ``spec`` (``".4f"``, ``"+.2f"``); just the mean for one
    seed, where a spread of 0 would only look like a measurement."""
    text = format(stat["mean"], spec)
    return text if seeds < 2 else f"{text} ± {format(stat['std'], spec.lstrip('+'))}"


def diverged_seeds(row: dict[str, Any]) -> list[int]:
    """The seeds of a benchmark row whose test metrics are not all finite (a run that
    diverged): its mean and std are over the other seeds, which the tables must say."""
    per_seed: dict[str, list[float]] = row.get("per_seed", {})
    count = max((len(values) for values in per_seed.values()), default=0)
    return [
        seed
        for seed in range(count)
        if any(not math.isfinite(values[seed]) for values in per_seed.values())
    ]


def diverged_label(row: dict[str, Any]) -> str:
    """``" (diverged: seeds 0, 2)"`` for a row with diverged seeds, else ``""``."""
    seeds = diverged_seeds(row)
    return (
        f" (diverged: seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
        if seeds
        else ""
    )


def _best(values: list[float], higher: bool) -> float:
    """The best finite value (NaN where there is none: then nothing is bold)."""
    finite = [v for v in values if math.isfinite(v)]
    return (max if higher else min)(finite) if finite else math.nan


def _benchmark_table(results: dict[str, Any]) -> str:
    """A benchmark's results.json as an HTML table: mean +/- std, Delta-m%, rank, step ratio."""
    directions = results["directions"]
    metrics = list(directions)
    seeds = len(results["seeds"])
    rows_data = results["rows"]
    both = any(
        abs(row["delta_m"]["mean"] - row["delta_m_tasks"]["mean"]) > 1e-9
        for row in rows_data.values()
    )
    arrows = {True: "↑", False: "↓"}
    columns = [f"{m} {arrows[directions[m]]}" for m in metrics]
    columns += ["Δm% (metrics) ↑", "Δm% (tasks) ↑"] if both else ["Δm% ↑"]
    step_header, step_note = step_time_column(results)
    columns += ["mean rank ↓", step_header]
    best = {
        m: _best([row["metrics"][m]["mean"] for row in rows_data.values()], directions[m])
        for m in metrics
    }
    best_delta = _best([row["delta_m"]["mean"] for row in rows_data.values()], True)
    best_rank = _best([row["mean_rank"] for row in rows_data.values()], False)

    def cell(text: str, bold: bool) -> str:
        return f"<td><b>{text}</b></td>" if bold else f"<td>{text}</td>"

    baseline = "".join(f"<td>{results['baselines'][m]:.4f}</td>" for m in metrics)
    zeros = "<td>0</td>" * (2 if both else 1)
    lines = [f"<tr><td>single-task</td>{baseline}{zeros}<td></td><td></td></tr>"]
    for name, row in rows_data.items():
        cells = [
            cell(mean_std(row["metrics"][m], ".4f", seeds), row["metrics"][m]["mean"] == best[m])
            for m in metrics
        ]
        cells.append(
            cell(mean_std(row["delta_m"], "+.2f", seeds), row["delta_m"]["mean"] == best_delta)
        )
        if both:
            cells.append(cell(mean_std(row["delta_m_tasks"], "+.2f", seeds), False))
        cells.append(cell(f"{row['mean_rank']:.2f}", row["mean_rank"] == best_rank))
        ratio = row.get("step_ratio_to_ew")
        cells.append(cell("" if ratio is None else f"{ratio:.2f}", False))
        label = html.escape(name + (" *" if row.get("pareto") else "") + diverged_label(row))
        lines.append(f"<tr><td>{label}</td>{''.join(cells)}</tr>")
    header = (
        "<tr><th>method</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
    )
    spread = f"Mean ± std over {seeds} seeds" if seeds > 1 else "One seed"
    deltas = "Δm% against the single-task baselines (uniform over metrics, Maninis et al. 2019"
    deltas += "; tasks: per task first, as LibMTL)" if both else ")"
    return (
        f"<p>{html.escape(results['description'])}</p><p>{spread}; test metrics at the best "
        f"validation epoch; {deltas}; best value per column in bold; "
        "* = on the Pareto front of the mean metrics. "
        f"{html.escape(noise_verdict(results))} {html.escape(step_note)}</p>"
        f"<table>{header}{''.join(lines)}</table>"
    )


def noise_verdict(results: dict[str, Any]) -> str:
    """One sentence on whether the best entry's Delta-m% stands out from the seeds' spread."""
    rows = list(results["rows"].values())
    means = [row["delta_m"]["mean"] for row in rows]
    stds = [row["delta_m"]["std"] for row in rows]
    return "Δm%: " + noise_caption(means, stds, len(results["seeds"])) + "."


def _benchmark_section(root: Path, base: Path, link: bool) -> str:
    results = json.loads((root / "results.json").read_text())
    prefix = root.relative_to(base).as_posix() + "/" if root != base else ""
    images = f'<img src="{html.escape(prefix)}delta_m.png" alt="delta-m">'
    if (root / "pareto.png").exists():
        images += f'<img src="{html.escape(prefix)}pareto.png" alt="Pareto front">'
    more = (
        f"<p>Training curves, weights, gradient norms and the configuration of every run: "
        f'<a href="{html.escape(prefix)}report.html">{html.escape(prefix)}report.html</a>.</p>'
        if link
        else ""
    )
    return (
        f"<section><h2>Benchmark: {html.escape(results['benchmark'])}</h2>"
        f"{_benchmark_table(results)}<div class='figures'>{images}</div>{more}</section>"
    )


def _toy_section(root: Path, base: Path) -> str:
    summary = json.loads((root / "toy.json").read_text())
    meta = summary["meta"]
    starts = len(meta.get("starts", [None] * 5))
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{r['reached']}/{starts}</td>"
        f"<td>{', '.join(f'{d:.2f}' for d in r['distance'])}</td></tr>"
        for name, r in summary["results"].items()
    )
    prefix = root.relative_to(base).as_posix()
    source = (
        f" Setting of {html.escape(meta['source'])}." if meta.get("setup", "ours") != "ours" else ""
    )
    return (
        "<section><h2>Toy two-objective problem (CAGrad / Nash-MTL / FAMO papers)</h2>"
        f"<p>{meta['steps']} Adam steps (lr 1e-3) from {starts} starts; a start reaches the "
        f"Pareto front (x2 = -8.3552, x1 in [-7, 7]) when it ends within {meta['threshold']} of "
        f"it.{source}</p>"
        "<table><tr><th>method</th><th>starts reaching the front</th>"
        f"<th>final distance per start</th></tr>{rows}</table>"
        f'<div class="figures"><img class="wide" src="{html.escape(prefix)}/toy.png" '
        'alt="toy trajectories"></div></section>'
    )


def suite_summary(root: Path) -> list[str]:
    """One line per benchmark of a suite directory: best Delta-m%, whether it is within noise,
    the fastest entry other than ``ew``; for the toy problem, who reaches the front."""
    suite = json.loads((root / "suite.json").read_text())
    lines = []
    for part in suite["parts"]:
        if part.startswith("toy") and (root / part / "toy.json").exists():
            toy = json.loads((root / part / "toy.json").read_text())["results"]
            starts = max(len(r["distance"]) for r in toy.values())
            every = [name for name, r in toy.items() if r["reached"] == starts]
            lines.append(
                f"{part}: reach the Pareto front from all {starts} starts: "
                + (", ".join(every) if every else "none")
            )
            continue
        path = root / part / "results.json"
        if not path.exists():
            continue
        results = json.loads(path.read_text())
        rows = results["rows"]
        best = max(rows, key=lambda name: rows[name]["delta_m"]["mean"])
        timed = {n: r["step_ratio_to_ew"] for n, r in rows.items() if r["step_ratio_to_ew"]}
        others = {n: v for n, v in timed.items() if rows[n]["method"] != "ew"}
        fastest = min(others, key=lambda n: others[n]) if others else None
        text = f"{part}: best Δm% {best} ({rows[best]['delta_m']['mean']:+.2f}%)"
        close = close_to_best(
            [r["delta_m"]["mean"] for r in rows.values()],
            [r["delta_m"]["std"] for r in rows.values()],
        )
        if close is None:
            text += ", one seed (no noise estimate)"
        elif close > 1:
            text += f", {close} of {len(rows)} entries within one seed-std of it"
        if fastest is not None:
            text += f"; fastest besides ew: {fastest} ({others[fastest]:.2f}x ew's train step)"
        lines.append(text)
    return lines


def _suite_sections(root: Path) -> tuple[str, list[str]]:
    suite = json.loads((root / "suite.json").read_text())
    sections = []
    for part in suite["parts"]:
        if part.startswith("toy"):
            sections.append(_toy_section(root / part, root))
        elif (root / part / "results.json").exists():
            sections.append(_benchmark_section(root / part, root, link=True))
    summary = "".join(f"<li>{html.escape(line)}</li>" for line in suite_summary(root))
    sections.append(f"<section><h2>Summary</h2><ul>{summary}</ul></section>")
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


def _read_summary(path: Path) -> dict[str, Any]:
    """A comparison's ``summary.json``, or a ``ValueError`` that names the file and what is
    wrong with it (a truncated write, a hand edit, a run that recorded nothing)."""
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): was its run interrupted?") from None
    runs = summary.get("runs") if isinstance(summary, dict) else None
    if not isinstance(runs, list) or not runs:
        raise ValueError(f"{path} lists no runs: nothing to report")
    return cast(dict[str, Any], summary)


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
        summary = _read_summary(summary_path)
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
        note = (
            "<p>Machine and versions. <code>config</code> is the benchmark's base "
            "configuration; the configuration each run trained with (its method, model and "
            "seed) is under its own section above.</p>"
            if "config" in meta
            else ""
        )
        sections.append(
            f"<section><h2>Environment</h2>{note}"
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
