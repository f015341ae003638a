"""Markdown tables of the committed benchmark results (``benchmarks/results/``).

The documentation site's Benchmarks and Performance pages are built from these functions
(``docs/gen_pages.py``), so every number there is read from a results file, never copied.

Usage::

    python benchmarks/tables.py            # print every table (after `make bench` / `bench-full`)
"""

from __future__ import annotations

import json
from pathlib import Path

from taskbalance.plots import close_to_best

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
    plain = [index.get(("plain", "-", t)) for t in tasks]
    if all(row is not None for row in plain):
        cells = " | ".join(f"{row['ratio']:.2f}" for row in plain if row is not None)
        lines += [
            "**plain PyTorch** (`sum(losses).backward()`, no balancer)",
            "",
            "| | " + " | ".join(f"T = {t}" for t in tasks) + " |",
            "|" + "---|" * (len(tasks) + 1),
            f"| plain / ew | {cells} |",
            "",
        ]
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


def memory_table(rows: list[dict]) -> str:  # type: ignore[type-arg]
    """Extra peak memory per model and T, ours on both paths beside TorchJD (gram_memory.py)."""
    index = {(r["model"], r["T"], r["path"]): r for r in rows}
    paths = [
        ("gramian", 'ours, `engine="gramian"`'),
        ("jacobian", 'ours, `engine="jacobian"`'),
        ("torchjd-autogram", "TorchJD autogram"),
        ("ew", "`ew`"),
    ]
    header = ["model", "T", "Jacobian", *[label for _, label in paths]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, tasks in dict.fromkeys((r["model"], r["T"]) for r in rows):
        cells = [model, str(tasks), f"{index[(model, tasks, 'ew')]['jacobian_mib']:.0f} MiB"]
        for path, _ in paths:
            row = index.get((model, tasks, path))
            if row is None:
                cells.append("")
                continue
            ratio = "" if path == "ew" else f" ({row['ratio_to_ew']:.2f}x ew)"
            cells.append(f"{row['peak_extra_mib']:.0f} MiB{ratio}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _task_columns(rows: list[dict]) -> list[str]:  # type: ignore[type-arg]
    return [key for key in rows[0] if key.startswith("T=")]


def solver_table(rows: list[dict]) -> str:  # type: ignore[type-arg]
    """Solver milliseconds per method and T (solver_time.py)."""
    columns = _task_columns(rows)
    header = ["method", "needs", *[c.replace("=", " = ") for c in columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        needs = {"gramian": "Gram", "jacobian": "Jacobian"}.get(row["needs"], row["needs"])
        cells = [row["method"], needs, *[f"{row[c]:.2f}" for c in columns]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def solver_compare_table(rows: list[dict]) -> str:  # type: ignore[type-arg]
    """Ours / TorchJD ms per method and T, speed-up and cosine (solver_time.py --compare)."""
    columns = _task_columns(rows)
    header = ["method", *[c.replace("=", " = ") for c in columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"]]
        for column in columns:
            theirs = row.get(f"torchjd {column}")
            if theirs is None:
                cells.append(f"{row[column]:.2f} / -")
                continue
            cells.append(
                f"{row[column]:.2f} / {theirs['ms']:.2f} "
                f"({theirs['speedup']:.1f}x, cos {theirs['cosine']:.4f})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _load(name: str) -> dict:  # type: ignore[type-arg]
    return json.loads((RESULTS / name).read_text())  # type: ignore[no-any-return]


def evidence_table() -> str:
    """Per data benchmark: the best three entries by Δm%, ``ew``'s Δm%, and the spread."""
    lines = [
        "| benchmark | seeds | best Δm% (mean ± std over seeds) | `ew` "
        "| within one std of the best |",
        "|---|---|---|---|---|",
    ]
    for path in sorted(RESULTS.glob("*/results.json")):
        results = json.loads(path.read_text())
        rows = results["rows"]
        ranked = sorted(rows.items(), key=lambda item: -item[1]["delta_m"]["mean"])
        top = ", ".join(
            f"{name} {row['delta_m']['mean']:+.2f} ± {row['delta_m']['std']:.2f}"
            for name, row in ranked[:3]
        )
        ew = next((row for name, row in rows.items() if name.split(" / ")[-1] == "ew"), None)
        ew_text = "" if ew is None else f"{ew['delta_m']['mean']:+.2f}"
        close = close_to_best(
            [row["delta_m"]["mean"] for row in rows.values()],
            [row["delta_m"]["std"] for row in rows.values()],
        )
        cells = [results["benchmark"], str(len(results["seeds"])), top, ew_text]
        lines.append("| " + " | ".join([*cells, f"{close or 1} of {len(rows)}"]) + " |")
    return "\n".join(lines)


def host_sync_table(rows: list[dict]) -> str:  # type: ignore[type-arg]
    """Host syncs per Balancer.backward per method and level (host_syncs.py)."""
    columns = _task_columns(rows)
    header = ["method", "level", *[c.replace("=", " = ") for c in columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append(
            "| " + " | ".join([row["method"], row["level"], *[str(row[c]) for c in columns]]) + " |"
        )
    return "\n".join(lines)


def reproduction_table() -> str:
    """Per paper setting and method: starts reaching the front and where each run ends."""
    lines = [
        "| setting | method | starts reaching the front | final x1 per start (front: -7 to 7) |",
        "|---|---|---|---|",
    ]
    for path in sorted(RESULTS.glob("toy_*/toy.json")):
        summary = json.loads(path.read_text())
        starts = len(summary["meta"]["starts"])
        for name, result in summary["results"].items():
            ends = ", ".join(f"{x1:.2f}" for x1, _ in result["final"])
            lines.append(
                f"| {summary['meta']['setup']} | {name} | {result['reached']}/{starts} | {ends} |"
            )
    return "\n".join(lines)


def large_tasks_table(rows: list[dict]) -> str:  # type: ignore[type-arg]
    """Solver time and share of the step at hundreds of tasks, beside TorchJD (large_tasks.py)."""
    sizes = sorted({r["tasks"] for r in rows})
    header = ["method", *[f"T = {t}: solver warm / cold (share of step)" for t in sizes]]
    header.append("TorchJD's weighting, same matrices")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    index = {(r["method"], r["tasks"]): r for r in rows}
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = [f"`{method}`"]
        theirs = []
        for tasks in sizes:
            row = index.get((method, tasks))
            if row is None:
                cells.append("not run")
            elif "error" in row:
                cells.append(row["error"])
            else:
                cells.append(
                    f"{row['solver_warm_ms']:.1f} / {row['solver_cold_ms']:.1f} ms "
                    f"({row['warm_share']:.0%} / {row['cold_share']:.0%} of "
                    f"{row['step_ms']:.0f} ms)"
                )
                if row.get("torchjd_ms") is not None:
                    theirs.append(f"T = {tasks}: {row['torchjd_ms']:.1f} ms")
                elif "torchjd_error" in row:
                    theirs.append(f"T = {tasks}: {row['torchjd_error']}")
        cells.append(", ".join(theirs) or "none")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


GENERATORS = {
    "large-tasks": lambda: large_tasks_table(_load("large_tasks.json")["rows"]),
    "reproductions-summary": reproduction_table,
    "host-syncs": lambda: host_sync_table(_load("host_syncs.json")["rows"]),
    "method-evidence": evidence_table,
    "step-time": lambda: performance_table(_load("step_time_compare.json")["rows"]),
    "gram-memory": lambda: memory_table(_load("gram_memory.json")["rows"]),
    "solver-time": lambda: solver_table(_load("solver_time.json")["rows"]),
    "solver-compare": lambda: solver_compare_table(_load("solver_time_compare.json")["rows"]),
}


def main() -> None:
    for path in sorted(RESULTS.glob("*/results.json")):
        results = json.loads(path.read_text())
        print(f"### {results['benchmark']}\n\n{table(results)}\n")
    for name, generate in GENERATORS.items():
        print(f"### {name}\n\n{generate()}\n")


if __name__ == "__main__":
    main()
