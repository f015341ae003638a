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


def main() -> None:
    for path in sorted(RESULTS.glob("*/results.json")):
        results = json.loads(path.read_text())
        print(f"### {results['benchmark']}\n\n{table(results)}\n")


if __name__ == "__main__":
    main()
