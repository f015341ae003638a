"""Run a data benchmark: single-task baselines, every entry x seeds, then the results table.

Layout of ``<out>/<benchmark>/``::

    single_task/<task>/seed<k>/   one run per task and seed (the Delta-m baselines)
    <entry>/seed<k>/              one run per entry and seed (steps.csv, epochs.csv, results.json)
    baselines.json                mean single-task test metric per "task/metric" + directions
    results.json, results.md      per entry: mean +/- std of every test metric over seeds,
                                  Delta-m% (both definitions), mean rank, step-time ratio to ew
    delta_m.png                   Delta-m% per entry with its seed spread
    summary.json                  seed-0 runs, so ``taskbalance report`` renders the directory

Test metrics are those of each run's best validation epoch (model selection never looks at the
test split). Runs are independent, so ``jobs > 1`` trains them in parallel processes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

import torch

import taskbalance
from taskbalance._validation import run_folder, suggest
from taskbalance.bench.suite import BenchmarkSpec, Entry
from taskbalance.config import MethodConfig, RunConfig, TaskConfig
from taskbalance.datasets import MultiTaskData
from taskbalance.metrics import delta_m, mean_rank, pareto_front, seed_mean_std
from taskbalance.report import mean_std

__all__ = ["Job", "Progress", "run_benchmark", "summarise"]

logger = logging.getLogger(__name__)


class Progress(Protocol):
    """Told how many units of work are planned, then told of each unit done: ``__call__``
    for one finished run, ``advance`` for a number of steps (the toy problem's runs)."""

    def planned(self, total: int) -> None: ...

    def __call__(self, message: str) -> None: ...

    def advance(self, count: int, message: str) -> None: ...


slug = run_folder  # one rule for run folders, shared with `taskbalance train`


@dataclass(frozen=True)
class Job:
    """One training run: a config (seed, model, tasks) and the method to train it with."""

    key: str  # entry display name, or "single_task/<task>"
    seed: int
    config: str  # RunConfig as JSON (picklable, exact)
    method: str  # MethodConfig as JSON
    run_dir: str


@lru_cache(maxsize=4)
def _data(config_json: str) -> MultiTaskData:
    from taskbalance.run import load_data

    return load_data(RunConfig.model_validate_json(config_json))


def _data_key(config: RunConfig) -> str:
    """The part of a config the dataset depends on (cache key for the loaded data)."""
    return RunConfig(data=config.data, seed=config.seed).model_dump_json()


def _execute(job: Job) -> dict[str, Any]:
    from taskbalance.run import run_one

    config = RunConfig.model_validate_json(job.config)
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ran = json.loads(job.config)  # the configuration this run trained with; its method is
    ran.pop("methods", None)  # the job's own (the base config's method list did not run)
    ran["method"] = json.loads(job.method)
    (run_dir / "run_config.json").write_text(json.dumps(ran, indent=1))
    summary = run_one(
        config, MethodConfig.model_validate_json(job.method), _data(_data_key(config)), run_dir
    )
    return {k: v for k, v in summary.items() if k != "history"}


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _jobs(spec: BenchmarkSpec, entries: Sequence[Entry], seeds: int, root: Path) -> list[Job]:
    jobs = []
    for seed in range(seeds):
        base = spec.run_config(seed)
        data = _data(_data_key(base))
        for task in data.tasks:
            config = base.model_copy(update={"tasks": [TaskConfig(name=task.name)]})
            jobs.append(
                Job(
                    f"single_task/{task.name}",
                    seed,
                    config.model_dump_json(),
                    MethodConfig(name="ew").model_dump_json(),
                    str(root / "single_task" / slug(task.name) / f"seed{seed}"),
                )
            )
        for entry in entries:
            method = MethodConfig(
                name=entry.method,
                hparams=entry.hparams,
                level=entry.level,
                update_every=entry.update_every,
                label=entry.display,
            )
            jobs.append(
                Job(
                    entry.display,
                    seed,
                    spec.run_config(seed, entry).model_dump_json(),
                    method.model_dump_json(),
                    str(root / slug(entry.display) / f"seed{seed}"),
                )
            )
    return jobs


def undefined_baselines(baselines: dict[str, float]) -> list[str]:
    """Metrics whose single-task baseline is 0 or not finite: Delta-m% divides by it."""
    return sorted(m for m, b in baselines.items() if b == 0 or not math.isfinite(b))


def _delta_m(
    test: dict[str, float], baselines: dict[str, float], directions: dict[str, bool], average: str
) -> float:
    """:func:`taskbalance.metrics.delta_m`, or NaN where a baseline makes it undefined (the
    summary says which): one bad single-task run must not lose the rest of a comparison."""
    if undefined_baselines(baselines):
        return math.nan
    return delta_m(test, baselines, directions, average=average)


def summarise(
    spec: BenchmarkSpec,
    entries: Sequence[Entry],
    results: dict[tuple[str, int], dict[str, Any]],
    seeds: int,
) -> dict[str, Any]:
    """Baselines, per-entry mean/std of each metric, Delta-m% (both), mean rank, step ratios."""
    any_run = next(r for (key, _), r in results.items() if not key.startswith("single_task/"))
    directions: dict[str, bool] = any_run["directions"]
    baselines: dict[str, float] = {}
    for metric in directions:
        task = metric.split("/")[0]
        values = [results[(f"single_task/{task}", s)]["test"][metric] for s in range(seeds)]
        baselines[metric] = seed_mean_std(values)[0]
    ew_time: dict[str, float] = {}
    for entry in entries:
        if entry.method == "ew":
            ew_time[json.dumps(entry.model, sort_keys=True)] = statistics.fmean(
                results[(entry.display, s)]["ms_per_step"] for s in range(seeds)
            )
    undefined = undefined_baselines(baselines)
    if undefined:
        logger.warning(
            "Δm%% is undefined (NaN in every row): the single-task baseline of %s is %s; the "
            "metrics, mean ranks and Pareto front are still reported",
            ", ".join(undefined),
            ", ".join(str(baselines[m]) for m in undefined),
        )
    rows: dict[str, dict[str, Any]] = {}
    for entry in entries:
        runs = [results[(entry.display, s)] for s in range(seeds)]
        metrics = {m: seed_mean_std([r["test"][m] for r in runs]) for m in directions}
        per_seed_deltas = {
            average: [_delta_m(r["test"], baselines, directions, average) for r in runs]
            for average in ("metrics", "tasks")
        }
        deltas = {average: seed_mean_std(values) for average, values in per_seed_deltas.items()}
        ms = statistics.fmean(r["ms_per_step"] for r in runs)
        reference = ew_time.get(json.dumps(entry.model, sort_keys=True))
        rows[entry.display] = {
            "method": entry.method,
            "level": entry.level or "parameters",
            "hparams": entry.hparams,
            "model": entry.model,
            "metrics": {m: {"mean": v[0], "std": v[1]} for m, v in metrics.items()},
            "per_seed": {m: [r["test"][m] for r in runs] for m in directions},
            "delta_m": {"mean": deltas["metrics"][0], "std": deltas["metrics"][1]},
            "delta_m_per_seed": per_seed_deltas["metrics"],
            "delta_m_tasks": {"mean": deltas["tasks"][0], "std": deltas["tasks"][1]},
            "ms_per_step": round(ms, 3),
            "step_ratio_to_ew": round(ms / reference, 3) if reference else None,
            "epochs_run": [r["epochs_run"] for r in runs],
        }
    table = {name: {m: row["metrics"][m]["mean"] for m in directions} for name, row in rows.items()}
    ranks = mean_rank(table, directions)
    front = set(pareto_front(table, directions))
    for name, row in rows.items():
        row["mean_rank"] = ranks[name]
        row["pareto"] = name in front
    return {
        "benchmark": spec.name,
        "description": spec.description,
        "seeds": list(range(seeds)),
        "step_time": "train_step",  # ms_per_step: Trainer.step_time_ms (older: fit time)
        "directions": directions,
        "baselines": baselines,
        "delta_m_undefined": undefined,
        "rows": rows,
    }


def _markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    from taskbalance.report import diverged_label, noise_verdict, step_time_column

    directions = summary["directions"]
    metrics = list(directions)
    rows = summary["rows"]
    both = any(
        abs(row["delta_m"]["mean"] - row["delta_m_tasks"]["mean"]) > 1e-9 for row in rows.values()
    )
    header = ["method", *[f"{m} {'↑' if directions[m] else '↓'}" for m in metrics]]
    header += ["Δm% (metrics) ↑", "Δm% (tasks) ↑"] if both else ["Δm% ↑"]
    step_header, step_note = step_time_column(summary)
    header += ["mean rank ↓", step_header]
    averages = (
        "Δm% (metrics) averages over every metric (Maninis et al. 2019), Δm% (tasks) first "
        "within each task (LibMTL)"
        if both
        else "Δm% averages over every metric (Maninis et al. 2019; with one metric per task "
        "the same as LibMTL's per-task average)"
    )
    lines = [
        f"# Benchmark `{summary['benchmark']}`",
        "",
        summary["description"],
        "",
        f"Seeds {summary['seeds']} (mean ± std); test metrics at the best validation epoch. "
        f"Δm% against the single-task baselines (first row); {averages}. "
        f"Pareto-optimal rows (mean metrics) are marked *. {noise_verdict(summary)} "
        f"{step_note}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    undefined = summary.get("delta_m_undefined") or undefined_baselines(summary["baselines"])
    if undefined:
        lines[-2:-2] = [
            f"**Δm% is undefined** (nan in every row): the single-task baseline of "
            f"{', '.join(f'`{m}`' for m in undefined)} is 0 or not finite, and Δm% divides by "
            "it. The metrics, mean ranks and the Pareto front below do not depend on it.",
            "",
        ]
    baselines = " | ".join(f"{summary['baselines'][m]:.4f}" for m in metrics)
    lines.append(f"| single-task | {baselines} | {'0 | ' * (2 if both else 1)}| |")
    seeds = len(summary["seeds"])
    for name, row in rows.items():
        cells = [mean_std(row["metrics"][m], ".4f", seeds) for m in metrics]
        cells.append(mean_std(row["delta_m"], "+.2f", seeds))
        if both:
            cells.append(mean_std(row["delta_m_tasks"], "+.2f", seeds))
        cells.append(f"{row['mean_rank']:.2f}")
        ratio = row["step_ratio_to_ew"]
        cells.append("" if ratio is None else f"{ratio:.2f}")
        label = f"{name}{' *' if row['pareto'] else ''}{diverged_label(row)}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "![Delta-m per method](delta_m.png)", "", "```", json.dumps(meta, indent=1)]
    lines.append("```")
    return "\n".join(lines) + "\n"


def render_results(root: Path) -> None:
    """Rewrite ``results.md`` and ``delta_m.png`` of a benchmark directory from its
    ``results.json`` (for committed results after the report format changes; per-seed Delta-m
    is recomputed from the per-seed metrics where an older file lacks it)."""
    summary = json.loads((root / "results.json").read_text())
    for row in summary["rows"].values():
        if "delta_m_per_seed" not in row:
            seeds = len(next(iter(row["per_seed"].values())))
            row["delta_m_per_seed"] = [
                _delta_m(
                    {m: values[s] for m, values in row["per_seed"].items()},
                    summary["baselines"],
                    summary["directions"],
                    "metrics",
                )
                for s in range(seeds)
            ]
    (root / "results.json").write_text(json.dumps(summary, indent=1))
    (root / "results.md").write_text(_markdown(summary, summary.get("meta", {})))
    _delta_plot(summary, root / "delta_m.png")


def _delta_plot(summary: dict[str, Any], path: Path) -> str:
    """Delta-m% per entry, every seed shown (:func:`taskbalance.plots.delta_m_figure`)."""
    from taskbalance.plots import delta_m_figure

    rows = summary["rows"]
    per_seed = [row.get("delta_m_per_seed") or [row["delta_m"]["mean"]] for row in rows.values()]
    return delta_m_figure(list(rows), per_seed, path, title=f"{summary['benchmark']}: Δm%")


def machine_info() -> dict[str, Any]:
    return {
        "taskbalance": taskbalance.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }


def entry_names(spec: BenchmarkSpec) -> list[str]:
    """The names ``--methods`` can choose from: every entry's method and display name."""
    return sorted({name for e in (*spec.full, *spec.quick) for name in (e.method, e.display)})


def unknown_methods(spec: BenchmarkSpec, methods: Sequence[str]) -> list[str]:
    """The names in ``methods`` that choose no entry of ``spec`` (in their order)."""
    known = set(entry_names(spec))
    return list(dict.fromkeys(name for name in methods if name not in known))


def run_benchmark(
    spec: BenchmarkSpec,
    out: Path,
    *,
    full: bool = False,
    seeds: int | None = None,
    methods: Sequence[str] | None = None,
    jobs: int = 1,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run ``spec`` into ``out / spec.name``; returns the summary written to results.json."""
    if seeds is not None and seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    entries = list(spec.full if full or methods else spec.quick)
    if methods:  # chosen from every entry of the benchmark
        unknown = unknown_methods(spec, methods)
        if unknown:
            known = entry_names(spec)
            hints = "".join(suggest(name, known) for name in unknown)
            raise ValueError(
                f"{', '.join(map(repr, unknown))}: not a method of benchmark {spec.name!r}."
                f"{hints} Its methods: {', '.join(known)}."
            )
        wanted = set(methods)
        entries = [e for e in entries if e.method in wanted or e.display in wanted]
        if not any(e.method == "ew" for e in entries):
            entries.insert(0, Entry("ew"))  # the step-time reference
    seeds = seeds or (spec.seeds if full else 1)
    root = out / spec.name
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    planned = _jobs(spec, entries, seeds, root)
    if progress:
        progress.planned(len(planned))
    results: dict[tuple[str, int], dict[str, Any]] = {}
    cores = os.cpu_count() or 1
    if jobs <= 1:
        for job in planned:
            results[(job.key, job.seed)] = _execute(job)
            if progress:
                progress(f"{spec.name}: {job.key} seed {job.seed}")
    else:
        with ProcessPoolExecutor(
            jobs,
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(max(1, cores // jobs),),
        ) as pool:
            futures = {pool.submit(_execute, job): job for job in planned}
            for future in as_completed(futures):
                job = futures[future]
                results[(job.key, job.seed)] = future.result()
                if progress:
                    progress(f"{spec.name}: {job.key} seed {job.seed}")
    summary = summarise(spec, entries, results, seeds)
    meta = {
        **machine_info(),
        "seeds": list(range(seeds)),
        "jobs": jobs,
        "full": full,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "config": json.loads(spec.run_config(0).model_dump_json()),
    }
    summary["meta"] = meta
    (root / "baselines.json").write_text(
        json.dumps(
            {"baselines": summary["baselines"], "directions": summary["directions"]}, indent=1
        )
    )
    (root / "results.json").write_text(json.dumps(summary, indent=1))
    (root / "results.md").write_text(_markdown(summary, meta))
    _delta_plot(summary, root / "delta_m.png")
    seed0 = [
        {**results[(e.display, 0)], "method": e.display, "dir": f"{slug(e.display)}/seed0"}
        for e in entries
    ]
    (root / "summary.json").write_text(
        json.dumps({"name": spec.name, "meta": meta, "runs": seed0, "benchmark": True}, indent=1)
    )
    return summary
