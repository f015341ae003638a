"""Build-time pages of the documentation site (run by the mkdocs-gen-files plugin).

* ``<!-- generated: KEY -->`` markers in the hand-written pages are replaced by tables read
  from ``benchmarks/results/`` (``benchmarks/tables.py``) or by the method catalog, and a
  ``<!-- generated: NAME/results.md -->`` marker includes the results page a benchmark wrote,
  with its figures: no number on the site is copied by hand.
* One page per method, from its class (``taskbalance.methods.catalog``) and its docstring.
* One API reference page per public module (mkdocstrings).
* The navigation (``SUMMARY.md``, read by mkdocs-literate-nav).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

import tables  # noqa: E402  (benchmarks/tables.py)
from taskbalance.methods.catalog import MethodCard, catalog, markdown_table  # noqa: E402

MARKER = re.compile(r"<!-- generated: (\S+) -->")
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")

GUIDE = [
    ("Your model and the architectures", "guide/models.md"),
    ("Configs, the CLI and reports", "guide/config-and-report.md"),
    ("Transforms (gradient clipping)", "guide/transforms.md"),
    ("Gradient health and task relations", "guide/health.md"),
    ("AMP, torch.compile, Lightning, Transformers", "guide/integrations.md"),
    ("Distributed training", "guide/distributed.md"),
    ("The digits demo", "guide/digits-demo.md"),
]

REFERENCE = [
    "taskbalance",
    "taskbalance.balancer",
    "taskbalance.aggregate",
    "taskbalance.step_info",
    "taskbalance.engine.needs",
    "taskbalance.methods.base",
    "taskbalance.methods.registry",
    "taskbalance.methods.catalog",
    "taskbalance.transforms",
    "taskbalance.optim",
    "taskbalance.models",
    "taskbalance.health",
    "taskbalance.train",
    "taskbalance.distributed",
    "taskbalance.metrics",
    "taskbalance.datasets",
    "taskbalance.config",
    "taskbalance.integrations.lightning",
    "taskbalance.integrations.transformers",
]


def include_results(key: str) -> str:
    """A benchmark's own results page, headings demoted, its figures copied beside it."""
    source = RESULTS / key
    lines = source.read_text().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    text = "\n".join("##" + line if line.startswith("#") else line for line in lines)

    def image(match: re.Match[str]) -> str:
        figure = source.parent / match.group(2)
        target = f"results/{source.parent.name}/{figure.name}"
        with mkdocs_gen_files.open(target, "wb") as handle:
            handle.write(figure.read_bytes())
        return f"![{match.group(1)}]({target})"

    return IMAGE.sub(image, text)


def expand(page: str) -> None:
    """Replace the page's markers with generated content."""

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key == "method-table":
            return markdown_table(link="{name}.md")
        if key in tables.GENERATORS:
            return tables.GENERATORS[key]()
        if key.endswith(".md"):
            return include_results(key)
        raise KeyError(f"{page}: unknown generated block {key!r}")

    text = (DOCS / page).read_text()
    if MARKER.search(text):
        with mkdocs_gen_files.open(page, "w") as handle:
            handle.write(MARKER.sub(replace, text))


def solver_cost(name: str) -> str:
    """The method's solver time from the committed solver benchmark, if it was measured."""
    path = RESULTS / "solver_time.json"
    rows = {row["method"]: row for row in json.loads(path.read_text())["rows"]}
    row = rows.get(name)
    if row is None:
        return "no solver beyond the weighted backward" if name else ""
    columns = [key for key in row if key.startswith("T=")]
    times = ", ".join(f"{column.replace('=', ' = ')}: {row[column]:.2f} ms" for column in columns)
    return f"{times} ([solver benchmark](../performance.md#solver-time-alone))"


def degree_text(card: MethodCard) -> str:
    if card.family == "loss weighting":
        return "weights come from the losses, never from the gradients"
    if card.scale_degree is None:
        return "no fixed degree (state in gradient units, or a stochastic / per-coordinate rule)"
    return f"`d(sJ) = s^{card.scale_degree:g} d(J)`"


def escape(cell: str) -> str:
    return cell.replace("|", "\\|")


def method_page(card: MethodCard) -> str:
    defaults = ", ".join(f"`{key}={value!r}`" for key, value in card.defaults.items())
    rows = [
        ("family", card.family),
        ("needs", card.needs),
        ("scale", card.scale),
        ("scale degree", degree_text(card)),
        ("paper", card.reference),
        ("defaults", defaults or "no hyperparameters"),
        ("create", f'`methods.create("{card.name}")` or `Balancer("{card.name}", shared_params)`'),
        ("cost", solver_cost(card.name)),
    ]
    table = "\n".join(f"| {key} | {escape(value)} |" for key, value in rows)
    return (
        f"# `{card.name}`\n\n| | |\n|---|---|\n{table}\n\n"
        f"::: {card.qualname}\n    options:\n      show_root_heading: false\n"
        "      members: false\n      show_bases: false\n"
    )


def main() -> None:
    for page in DOCS.rglob("*.md"):
        expand(str(page.relative_to(DOCS)))
    cards = catalog()
    for card in cards:
        with mkdocs_gen_files.open(f"methods/{card.name}.md", "w") as handle:
            handle.write(method_page(card))
    for module in REFERENCE:
        with mkdocs_gen_files.open(f"reference/{module}.md", "w") as handle:
            handle.write(f"# `{module}`\n\n::: {module}\n")
    nav = ["* [Home](index.md)", "* [Getting started](getting-started.md)", "* User guide"]
    nav += [f"    * [{title}]({path})" for title, path in GUIDE]
    nav += ["* Methods", "    * [Overview](methods/index.md)"]
    nav += [f"    * [{card.name}](methods/{card.name}.md)" for card in cards]
    nav += [
        "* [Benchmarks](benchmarks.md)",
        "* [Reproductions](reproductions.md)",
        "* [Performance](performance.md)",
        "* [Design: how a step flows](design.md)",
        "* [FAQ](faq.md)",
        "* API reference",
    ]
    nav += [f"    * [{module}](reference/{module}.md)" for module in REFERENCE]
    nav.append("* [Development](development.md)")
    with mkdocs_gen_files.open("SUMMARY.md", "w") as handle:
        handle.write("\n".join(nav) + "\n")


main()
