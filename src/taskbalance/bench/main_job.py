"""``taskbalance bench NAME``: one benchmark, or the main job (several, one HTML report).

* ``main``: the README's main job - the toy problem (6 methods), ``multimnist`` and ``census``
  (their curated entries), one seed, in parallel processes; ``--full`` runs all five
  benchmarks with every entry and 3 seeds.
* ``toy``, ``multimnist``, ``census``, ``yeast``, ``text``: one benchmark.

Writes ``<out>/suite.json`` and ``<out>/report.html`` (every benchmark's table and plots, linking
to each benchmark's own report with the per-run pages).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taskbalance._validation import suggest
from taskbalance.bench.runner import entry_names, machine_info, run_benchmark
from taskbalance.bench.suite import BENCHMARKS
from taskbalance.bench.toy import run_toy
from taskbalance.bench.toy_setups import SETTINGS, setup
from taskbalance.data_sources import require
from taskbalance.methods.registry import available

__all__ = ["MAIN_TOY_METHODS", "run_named"]

MAIN_TOY_METHODS = ("ew", "mgda", "pcgrad", "famo", "nash_mtl", "upgrad")


class _Progress:
    """A tqdm bar per benchmark when tqdm is installed, else one line per finished run."""

    def __init__(self, label: str) -> None:
        self.label, self.total, self.done = label, 0, 0
        self.bar: Any = None

    def planned(self, total: int) -> None:
        self.total = total
        try:
            from tqdm import tqdm

            unit = "step" if self.label.startswith("toy") else "run"
            self.bar = tqdm(
                total=total, desc=self.label, unit=unit, unit_scale=unit == "step", file=sys.stderr
            )
        except ImportError:  # pragma: no cover - tqdm is in the cli extra
            self.bar = None

    def __call__(self, message: str) -> None:
        self.advance(1, message)

    def advance(self, count: int, message: str) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.set_postfix_str(message.split(": ", 1)[-1][:40], refresh=False)
            self.bar.update(count)
        elif count == 1 or self.done == self.total:  # pragma: no cover
            print(f"[{self.done}/{self.total}] {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _methods_per_part(
    parts: Sequence[str], methods: Sequence[str] | None, paper: str | None
) -> dict[str, list[str] | None]:
    """``--methods`` split by benchmark, checked before anything runs: a name that no part
    knows raises (with "did you mean"); in the main job, a name that some parts lack runs
    in the others, and a line says so. ``None``: the part's own choice."""
    if not methods:
        return dict.fromkeys(parts)
    known = {part: _known_methods(part, paper) for part in parts}
    nowhere = [m for m in dict.fromkeys(methods) if not any(m in k for k in known.values())]
    if nowhere:
        choices = sorted(set().union(*known.values()))
        hints = "".join(suggest(name, choices) for name in nowhere)
        where = f"benchmark {parts[0]!r}" if len(parts) == 1 else f"any of {', '.join(parts)}"
        raise ValueError(
            f"{', '.join(map(repr, nowhere))}: not a method of {where}.{hints} "
            f"Its methods: {', '.join(choices)}."
        )
    chosen: dict[str, list[str] | None] = {}
    for part in parts:
        chosen[part] = [m for m in methods if m in known[part]]
        missing = [m for m in methods if m not in known[part]]
        if missing:
            print(f"{part}: has no entry {', '.join(missing)} (runs in the other parts)")
    return chosen


def _known_methods(part: str, paper: str | None) -> set[str]:
    """What ``--methods`` may name in one part: the toy runs any registered method (and a
    paper setting's labels), a benchmark its entries."""
    if part.startswith("toy"):
        return set(available()) | set(setup(paper).entries)
    return set(entry_names(BENCHMARKS[part]))


def _check_data(names: Sequence[str]) -> None:
    """Verify every benchmark's data before the first run starts (missing or damaged files
    raise :class:`~taskbalance.data_sources.DataCacheError` with the command that fixes them)."""
    for name in names:
        source = BENCHMARKS[name].data_source
        if source is not None:
            require(source, name)


def run_named(
    name: str,
    out: Path,
    *,
    full: bool = False,
    seeds: int | None = None,
    methods: Sequence[str] | None = None,
    jobs: int = 2,
    steps: int | None = None,
    paper: str | None = None,
) -> Path:
    """Run benchmark ``name`` (or ``main``) into ``out``; returns the report's path."""
    from taskbalance.report import write_report

    if paper is not None and name != "toy":
        raise ValueError(f"--paper applies to the toy benchmark only, not to {name!r}")
    if name == "main":
        parts = ["toy", "multimnist", "census"] + (["yeast", "text"] if full else [])
    else:
        parts = [name if paper is None else f"toy_{paper}"]
    _check_data([p for p in parts if not p.startswith("toy")])
    chosen = _methods_per_part(parts, methods, paper)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for part in parts:
        progress = _Progress(part)
        if part.startswith("toy"):
            if paper is not None:
                run_toy(out, chosen[part], steps=steps, jobs=jobs, progress=progress, paper=paper)
            else:
                toy_methods = chosen[part] or list(SETTINGS if full else MAIN_TOY_METHODS)
                run_toy(out, toy_methods, steps=steps, jobs=jobs, progress=progress)
        else:
            spec = BENCHMARKS[part]
            run_benchmark(
                spec,
                out,
                full=full,
                seeds=seeds,
                methods=chosen[part],
                jobs=jobs,
                progress=progress,
            )
            write_report(out / part)
        progress.close()
    suite = {
        "parts": parts,
        "full": full,
        "meta": {**machine_info(), "jobs": jobs, "wall_seconds": time.perf_counter() - started},
    }
    (out / "suite.json").write_text(json.dumps(suite, indent=1))
    report = write_report(out)
    from taskbalance.report import suite_summary

    print("\nsummary:\n  " + "\n  ".join(suite_summary(out)), flush=True)
    return report
