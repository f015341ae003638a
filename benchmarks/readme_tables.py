"""Print the compact benchmark tables of the README from ``benchmarks/results/*/results.json``.

Usage::

    python benchmarks/readme_tables.py            # after `make bench-full`
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MAX_METRIC_COLUMNS = 4  # many-task benchmarks show only the summary columns


def table(results: dict) -> str:  # type: ignore[type-arg]
    directions = results["directions"]
    metrics = list(directions) if len(directions) <= MAX_METRIC_COLUMNS else []
    arrows = {True: "↑", False: "↓"}
    header = ["method", *[f"{m} {arrows[directions[m]]}" for m in metrics]]
    header += ["Δm% ↑", "mean rank ↓", "step / ew"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    baselines = [f"{results['baselines'][m]:.4f}" for m in metrics]
    lines.append("| single-task | " + " | ".join([*baselines, "0", "", ""]) + " |")
    for name, row in results["rows"].items():
        cells = [
            f"{row['metrics'][m]['mean']:.4f} ± {row['metrics'][m]['std']:.4f}" for m in metrics
        ]
        ratio = row["step_ratio_to_ew"]
        cells += [
            f"{row['delta_m']['mean']:+.2f} ± {row['delta_m']['std']:.2f}",
            f"{row['mean_rank']:.2f}",
            "" if ratio is None else f"{ratio:.2f}",
        ]
        lines.append(f"| {name}{' *' if row['pareto'] else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


LIBRARIES = [
    ("parameters", "ours, parameters"),
    ("parameters:gramian", 'ours, parameters, Gram-only engine (`engine="gramian"`)'),
    ("representation", "ours, representation"),
    ("torchjd-autojac", "TorchJD autojac"),
    ("torchjd-autogram", "TorchJD autogram"),
    ("libmtl", "LibMTL 1.1.5"),
]


def performance_table(rows: list[dict]) -> str:  # type: ignore[type-arg]
    """Step time / ew step per method, T and library (from step_time.py --compare)."""
    tasks = sorted({r["T"] for r in rows})
    index = {(r["method"], r["level"], r["T"]): r for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] not in ("plain",)))
    lines = []
    for level, label in LIBRARIES:
        header = ["method", *[f"T = {t}" for t in tasks]]
        body = []
        for method in methods:
            cells = []
            for t in tasks:
                row = index.get((method, level, t))
                if row is None:
                    cells.append("")
                    continue
                amortised = "update_every" in method  # a minority of expensive steps: the mean
                text = f"{row['mean_ratio' if amortised else 'ratio']:.2f}"
                if amortised:
                    text += " (mean)"
                if "ratio_to_floor" in row:
                    text += f" ({row['ratio_to_floor']:.2f})"
                if "peak_extra_mib" in row:
                    text += f" [{row['peak_extra_mib']:.0f} MiB]"
                cells.append(text)
            if any(cells):
                body.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += [f"**{label}**", "", "| " + " | ".join(header) + " |"]
        lines += ["|" + "---|" * len(header), *body, ""]
    ew = " / ".join(f"{index[('ew', 'parameters', t)]['ms']:.1f}" for t in tasks)
    lines.append(f"`ew` step (ms) at T = {', '.join(map(str, tasks))}: {ew}.")
    return "\n".join(lines)


def main() -> None:
    for path in sorted(RESULTS.glob("*/results.json")):
        results = json.loads(path.read_text())
        print(f"### {results['benchmark']}\n\n{table(results)}\n")
    compare = RESULTS / "step_time_compare.json"
    if compare.exists():
        print("### step time side by side\n")
        print(performance_table(json.loads(compare.read_text())["rows"]))


if __name__ == "__main__":
    main()
