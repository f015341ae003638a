"""The report's figures (matplotlib, Agg backend), each drawn so that it cannot mislead:

* :func:`pareto_figure`: the Pareto front over **all** metrics (the same front as the table's
  ``*``), as pairwise panels for up to four metrics or parallel coordinates beyond; no front
  line (a projection of a many-metric front is not a curve), labels placed by ``adjustText``.
* :func:`delta_m_figure`: Delta-m% per entry with every seed as a dot, the mean as a bar, the
  zero line, an axis of at least +-1% so that noise does not fill it, and a caption saying
  how many entries are within one seed-std of the best (:func:`close_to_best`).
* :func:`curves_figure`: training curves with y labels, one panel per unit (a validation
  accuracy and an MAE never share an axis), noisy series smoothed with the raw values faint,
  and constant series (``ew``'s weights) replaced by a note.
* :func:`heatmap_figure`: a task x task matrix whose colour scale comes from its off-diagonal
  entries, with the title clear of the colour bar.
"""

from __future__ import annotations

import itertools
import math
import statistics
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from taskbalance.metrics import pareto_front

__all__ = [
    "close_to_best",
    "curves_figure",
    "delta_m_figure",
    "heatmap_figure",
    "noise_caption",
    "pareto_figure",
    "smooth",
]

MAX_PANEL_METRICS = 4  # beyond: parallel coordinates
MIN_DELTA_AXIS = 1.0  # Delta-m% axis spans at least +-1%


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _better(up: bool) -> str:
    return "higher is better" if up else "lower is better"


def _place_labels(ax: Any, texts: list[Any]) -> None:
    """Move overlapping labels apart (adjustText when installed) and keep them in the axes."""
    try:
        from adjustText import adjust_text
    except ImportError:  # pragma: no cover - adjustText comes with the cli extra
        return
    adjust_text(texts, ax=ax, arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5})


def pareto_figure(
    points: Mapping[str, Mapping[str, float]],
    directions: Mapping[str, bool],
    path: Path,
    title: str = "",
) -> list[str]:
    """Draw every entry's metrics with the Pareto front over all metrics highlighted.

    Returns the front (the entries no other entry matches or beats on every metric and beats
    on one), which is what the report's tables star. Nothing is drawn for fewer than two
    metrics.
    """
    metrics = list(directions)
    everything = {name: {m: float(values[m]) for m in metrics} for name, values in points.items()}
    front = pareto_front(everything, dict(directions))
    # an entry with a metric that is not finite (a diverged run) cannot be placed: it is named
    # in the caption instead (a NaN label also throws the label placement off for the others)
    table = {
        name: row for name, row in everything.items() if all(math.isfinite(v) for v in row.values())
    }
    if len(metrics) < 2 or not table:
        return front
    plt = pyplot()
    caption = (
        f"Pareto front over all {len(metrics)} metrics (red: no other entry is at least as "
        "good on every metric and better on one)"
    )
    if len(table) < len(everything):
        missing = ", ".join(name for name in everything if name not in table)
        caption += f"; not drawn, a metric is not finite: {missing}"
    pairs = list(itertools.combinations(metrics, 2))
    if len(metrics) <= MAX_PANEL_METRICS:
        columns = min(3, len(pairs))
        rows = math.ceil(len(pairs) / columns)
        width = max(6.5, 4.6 * columns)
        fig, axes = plt.subplots(rows, columns, figsize=(width, 4.0 * rows + 0.8), squeeze=False)
        for ax, (x_key, y_key) in zip(axes.flat, pairs, strict=False):
            texts = []
            for name, row in table.items():
                on_front = name in front
                ax.scatter(
                    row[x_key],
                    row[y_key],
                    color="tab:red" if on_front else "tab:gray",
                    s=36 if on_front else 22,
                    zorder=3,
                )
                texts.append(ax.text(row[x_key], row[y_key], name, fontsize=7))
            ax.set_xlabel(f"{x_key} ({_better(directions[x_key])})", fontsize=8)
            ax.set_ylabel(f"{y_key} ({_better(directions[y_key])})", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.margins(0.15)
            ax.grid(alpha=0.3)
            _place_labels(ax, texts)
        for ax in list(axes.flat)[len(pairs) :]:
            ax.axis("off")
    else:
        fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(metrics)), 4.8))
        low = {m: min(r[m] for r in table.values()) for m in metrics}
        high = {m: max(r[m] for r in table.values()) for m in metrics}

        def score(row: Mapping[str, float], metric: str) -> float:  # 1 = best entry
            span = high[metric] - low[metric]
            if span == 0:
                return 1.0
            value = (row[metric] - low[metric]) / span
            return value if directions[metric] else 1.0 - value

        for name, row in table.items():
            on_front = name in front
            ax.plot(
                range(len(metrics)),
                [score(row, m) for m in metrics],
                color=None if on_front else "0.75",
                linewidth=1.6 if on_front else 0.8,
                label=name if on_front else None,
                zorder=3 if on_front else 2,
            )
        ax.set_xticks(range(len(metrics)), metrics, rotation=40, ha="right", fontsize=7)
        ax.set_ylabel("position between worst (0) and best (1) entry")
        ax.legend(fontsize=7, title="on the front", title_fontsize=7, loc="best")
        ax.grid(alpha=0.3)
        caption += "; grey: dominated"
    handles = [
        plt.Line2D([], [], marker="o", linestyle="", color="tab:red", label="on the Pareto front"),
        plt.Line2D([], [], marker="o", linestyle="", color="tab:gray", label="dominated"),
    ]
    if len(metrics) <= MAX_PANEL_METRICS:
        fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    heading = f"{title}: {caption}" if title else caption
    characters = int(fig.get_figwidth() * 13)  # about 13 characters per inch at 9 pt
    fig.suptitle(textwrap.fill(heading, characters), fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return front


def close_to_best(means: Sequence[float], stds: Sequence[float]) -> int | None:
    """How many entries' mean lies within one standard deviation (over seeds) of the best
    entry's mean, the best included: 1 means the best is ahead by more than its own seed
    spread; more means those entries are not told apart by this many seeds. ``None`` without a
    spread (one seed)."""
    if not means or all(s == 0 for s in stds):
        return None
    best = max(range(len(means)), key=lambda i: means[i])
    return sum(m >= means[best] - stds[best] for m in means)


def noise_caption(means: Sequence[float], stds: Sequence[float], seeds: int) -> str:
    """One sentence saying whether the best entry stands out from the seed noise."""
    close = close_to_best(means, stds)
    if close is None:
        return "one seed: no estimate of the noise, differences may not be real"
    if close == 1:
        return f"mean of {seeds} seeds: the best entry leads by more than its seed spread"
    return (
        f"mean of {seeds} seeds: {close} of {len(means)} entries are within one std of the "
        "best, not told apart by these seeds"
    )


def delta_m_figure(
    names: Sequence[str],
    per_seed: Sequence[Sequence[float]],
    path: Path,
    title: str,
) -> str:
    """Delta-m% per entry: a bar at the mean, one dot per seed, the zero line; returns the
    caption (also drawn under the title).

    A seed whose Delta-m is not finite (the run diverged, or a baseline is 0) is left out of
    the bar and the dots and named in the caption; an entry with no finite seed gets no bar."""
    plt = pyplot()
    finite = [[v for v in values if math.isfinite(v)] for values in per_seed]
    drawn = [index for index, values in enumerate(finite) if values]
    means = [statistics.fmean(finite[i]) for i in drawn]
    stds = [statistics.stdev(finite[i]) if len(finite[i]) > 1 else 0.0 for i in drawn]
    seeds = max((len(finite[i]) for i in drawn), default=0)
    caption = noise_caption(means, stds, seeds) if drawn else "no entry has a finite Δm%"
    if seeds > 1:
        caption += " (dots: each seed)"
    left_out = [
        f"{name} ({len(values) - len(kept)} of {len(values)} seeds)"
        for name, values, kept in zip(names, per_seed, finite, strict=True)
        if len(kept) < len(values)
    ]
    if left_out:
        caption += "\nnot finite, not drawn: " + ", ".join(left_out)
    width = max(5.5, 0.55 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(width, 4.0))
    colors = ["tab:green" if m >= 0 else "tab:red" for m in means]
    ax.bar(drawn, means, color=colors, alpha=0.55, zorder=2)
    for index, values in enumerate(finite):
        ax.scatter([index] * len(values), values, color="black", s=10, zorder=3)
    ax.axhline(0, color="black", linewidth=0.9)
    values = [v for seed_values in finite for v in seed_values]
    low, high = min([-MIN_DELTA_AXIS, *values]), max([MIN_DELTA_AXIS, *values])
    margin = 0.12 * (high - low)
    ax.set_ylim(low - margin, high + margin)
    ax.set_xticks(range(len(names)), names, rotation=50, ha="right", fontsize=8)
    ax.set_ylabel("Δm% vs single-task (higher is better)", fontsize=9)
    wrapped = "\n".join(textwrap.fill(line, int(width * 11)) for line in caption.split("\n"))
    ax.set_title(f"{title}\n{wrapped}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return caption


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (shorter at the start); NaNs skipped."""
    out = []
    for index in range(len(values)):
        chunk = [v for v in values[max(0, index - window + 1) : index + 1] if not math.isnan(v)]
        out.append(statistics.fmean(chunk) if chunk else math.nan)
    return out


def _is_constant(series: Mapping[str, Sequence[float]]) -> bool:
    finite = [v for values in series.values() for v in values if not math.isnan(v)]
    return bool(finite) and max(finite) - min(finite) <= 1e-9 * max(1.0, abs(finite[0]))


def curves_figure(
    x: Sequence[float],
    panels: Mapping[str, Mapping[str, Sequence[float]]],
    path: Path,
    *,
    title: str,
    x_label: str,
    log: bool = False,
    smooth_window: int = 0,
) -> tuple[bool, str | None]:
    """Line plots, one panel per y label (``panels``: y label -> series name -> values).

    Returns whether a figure was written and a note for the panels whose values are all the
    same, which are not drawn (``None`` when there are none). With ``smooth_window`` the raw
    values are drawn faint under their moving average.
    """
    drawn = {label: series for label, series in panels.items() if not _is_constant(series)}
    constant = [label for label in panels if label not in drawn]
    note = None
    if constant:
        constants = {
            label: next(v for s in panels[label].values() for v in s if not math.isnan(v))
            for label in constant
        }
        note = "; ".join(f"{label}: constant at {value:g}" for label, value in constants.items())
    if not drawn:
        return False, note
    plt = pyplot()
    fig, axes = plt.subplots(1, len(drawn), figsize=(5.2 * len(drawn) + 0.8, 3.6), squeeze=False)
    for ax, (label, series) in zip(axes.flat, drawn.items(), strict=True):
        for index, (name, values) in enumerate(series.items()):
            color = f"C{index % 10}"
            points = [(a, b) for a, b in zip(x, values, strict=True) if not math.isnan(b)]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            if smooth_window > 1 and len(ys) > smooth_window:
                ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.7)
                ax.plot(xs, smooth(ys, smooth_window), color=color, linewidth=1.4, label=name)
            else:
                ax.plot(xs, ys, color=color, linewidth=1.3, label=name)
        ax.set_xlabel(x_label)
        ax.set_ylabel(label)
        if log and all(v > 0 for s in series.values() for v in s if not math.isnan(v)):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if len(series) > 1 or next(iter(series)) != label:
            ax.legend(fontsize=7)
    suffix = (
        f" (smoothed over {smooth_window} points, raw values faint)" if smooth_window > 1 else ""
    )
    fig.suptitle(title + suffix, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True, note


def heatmap_figure(
    matrix: Sequence[Sequence[float]],
    names: Sequence[str],
    path: Path,
    *,
    title: str,
    symmetric_limit: float | None = None,
) -> None:
    """A task x task matrix with its values written in; the colour scale is symmetric around
    zero and set by the off-diagonal entries (a diagonal of self-affinities would wash them
    out), unless ``symmetric_limit`` fixes it (cosines: 1)."""
    plt = pyplot()
    size = len(names)
    off_diagonal = [abs(matrix[i][j]) for i in range(size) for j in range(size) if i != j]
    limit = symmetric_limit or max([*off_diagonal, 1e-12])
    fig, ax = plt.subplots(figsize=(1.1 * size + 2.6, 1.0 * size + 1.8))
    image = ax.imshow(matrix, cmap="coolwarm", vmin=-limit, vmax=limit)
    ax.set_xticks(range(size), names, rotation=45, ha="right")
    ax.set_yticks(range(size), names)
    for i in range(size):
        for j in range(size):
            ax.text(j, i, f"{matrix[i][j]:.2g}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
