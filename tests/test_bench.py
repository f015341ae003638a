"""The benchmark runner: baselines, seeds, Delta-m, ranks, tables and the suite report."""

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from taskbalance.bench.runner import run_benchmark
from taskbalance.bench.suite import BENCHMARKS, BenchmarkSpec, Entry
from taskbalance.bench.toy import parse_amortised, run, run_toy, toy_losses
from taskbalance.metrics import delta_m
from taskbalance.report import write_report

TINY = BenchmarkSpec(
    name="tiny",
    description="two synthetic regression tasks",
    config={
        "data": {"dataset": "synthetic", "batch_size": 64, "options": {"num_tasks": 2}},
        "model": {"kind": "hard_sharing", "hidden": [16]},
        "training": {"epochs": 2},
    },
    quick=(Entry("ew"), Entry("pcgrad")),
    full=(Entry("ew"), Entry("pcgrad"), Entry("mgda", level="representation")),
)


class _Count:
    def __init__(self) -> None:
        self.total, self.calls = 0, 0

    def planned(self, total: int) -> None:
        self.total = total

    def __call__(self, message: str) -> None:
        self.calls += 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp("bench")
    progress = _Count()
    summary = run_benchmark(TINY, out, full=True, seeds=2, progress=progress)
    assert progress.total == progress.calls == 2 * (2 + 3)  # (baselines + entries) per seed
    return out / "tiny", summary


def test_results_table_has_every_entry_and_statistic(tiny_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    root, summary = tiny_run
    assert list(summary["rows"]) == ["ew", "pcgrad", "mgda@repr"]
    for row in summary["rows"].values():
        assert set(row["metrics"]) == {"task0/mae", "task1/mae"}
        assert len(row["per_seed"]["task0/mae"]) == 2
        assert row["mean_rank"] >= 1
        assert row["step_ratio_to_ew"] > 0
    assert summary["rows"]["ew"]["step_ratio_to_ew"] == 1.0
    saved = json.loads((root / "results.json").read_text())
    assert saved["meta"]["seeds"] == [0, 1]
    assert "torch" in saved["meta"]
    markdown = (root / "results.md").read_text()
    assert "| single-task |" in markdown
    assert "mgda@repr" in markdown
    assert (root / "delta_m.png").stat().st_size > 0


def _rerendered(source: Path, tmp_path: Path, edit: Callable[[dict], None]) -> Path:  # type: ignore[type-arg]
    """A copy of a benchmark folder whose results.json ``edit`` changed, tables re-rendered."""
    import shutil

    from taskbalance.bench.runner import render_results

    root = tmp_path / source.name
    shutil.copytree(source, root)
    results = json.loads((root / "results.json").read_text())
    edit(results)
    (root / "results.json").write_text(json.dumps(results))
    render_results(root)
    return root


def test_a_seed_that_diverged_is_named_in_the_tables(
    tiny_run: tuple[Path, dict],  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    # the means skip a NaN seed: without a word the row read as a mean over every seed
    def edit(results: dict) -> None:  # type: ignore[type-arg]
        results["rows"]["pcgrad"]["per_seed"]["task0/mae"][1] = float("nan")
        results["rows"]["ew"]["metrics"]["task0/mae"]["mean"] = float("nan")  # every seed

    root = _rerendered(tiny_run[0], tmp_path, edit)
    markdown = (root / "results.md").read_text()
    assert "| pcgrad (diverged: seed 1)" in markdown or "| pcgrad * (diverged: seed 1)" in markdown
    page = write_report(root).read_text()
    assert "(diverged: seed 1)" in page
    assert "<b>nan" not in page  # the best of a column is the best finite value


def _run_result(test: dict[str, float]) -> dict[str, object]:
    return {
        "test": test,
        "directions": {"task0/mae": False, "task1/mae": False},
        "ms_per_step": 1.0,
        "epochs_run": 2,
    }


def test_a_zero_baseline_leaves_delta_m_undefined_not_the_comparison_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Delta-m divides by the baseline: a single-task metric of 0 raised at the very end of a
    # benchmark, after every run had trained, and nothing of the comparison was written
    from taskbalance.bench.runner import _delta_plot, _markdown, summarise

    good, zero = {"task0/mae": 0.5, "task1/mae": 0.2}, {"task0/mae": 0.0, "task1/mae": 0.2}
    results = {
        ("single_task/task0", 0): _run_result(zero),
        ("single_task/task1", 0): _run_result(good),
        ("ew", 0): _run_result(good),
        ("pcgrad", 0): _run_result({"task0/mae": math.nan, "task1/mae": math.nan}),
    }
    with caplog.at_level("WARNING", logger="taskbalance.bench.runner"):
        summary = summarise(TINY, TINY.quick, results, seeds=1)
    assert summary["delta_m_undefined"] == ["task0/mae"]
    assert "task0/mae" in caplog.text
    assert "undefined" in caplog.text
    assert all(math.isnan(row["delta_m"]["mean"]) for row in summary["rows"].values())
    assert summary["rows"]["ew"]["mean_rank"] == 1.0  # ranks do not need the baselines
    assert "**Δm% is undefined**" in _markdown(summary, {})
    caption = _delta_plot(summary, tmp_path / "delta_m.png")
    assert "no entry has a finite Δm%" in caption
    with pytest.raises(ValueError, match=r"baseline of 'task0/mae' is 0\.0"):
        delta_m(good, {"task0/mae": 0.0}, {"task0/mae": False})
    with pytest.raises(ValueError, match="is nan"):
        delta_m(good, {"task0/mae": math.nan}, {"task0/mae": False})


def test_results_with_a_zero_baseline_render_and_report(
    tiny_run: tuple[Path, dict],  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    def edit(results: dict) -> None:  # type: ignore[type-arg]
        results["baselines"]["task0/mae"] = 0.0
        results.pop("delta_m_undefined", None)  # a file written before the field existed
        for row in results["rows"].values():
            row.pop("delta_m_per_seed")  # recomputed from the per-seed metrics

    root = _rerendered(tiny_run[0], tmp_path, edit)
    assert "**Δm% is undefined**" in (root / "results.md").read_text()
    assert write_report(root).exists()


def test_the_delta_m_figure_leaves_out_a_diverged_seed_and_names_it(tmp_path: Path) -> None:
    # a NaN seed made statistics.stdev raise, so a run with one diverged seed lost its figure
    from taskbalance.plots import delta_m_figure

    path = tmp_path / "delta.png"
    caption = delta_m_figure(
        ["ew", "pcgrad", "mgda"], [[1.0, 2.0], [3.0, math.nan], [math.nan, math.inf]], path, "t"
    )
    assert path.stat().st_size > 0
    assert "not finite, not drawn: pcgrad (1 of 2 seeds), mgda (2 of 2 seeds)" in caption
    assert "mean of 2 seeds" in caption


def test_delta_m_uses_single_task_runs_of_each_seed(tiny_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    root, summary = tiny_run
    baselines = {}
    for task in ("task0", "task1"):
        values = [
            json.loads((root / "single_task" / task / f"seed{s}" / "results.json").read_text())[
                "test"
            ][f"{task}/mae"]
            for s in range(2)
        ]
        baselines[f"{task}/mae"] = sum(values) / 2
    assert summary["baselines"] == pytest.approx(baselines)
    runs = [
        json.loads((root / "pcgrad" / f"seed{s}" / "results.json").read_text())["test"]
        for s in range(2)
    ]
    directions = {"task0/mae": False, "task1/mae": False}
    expected = sum(delta_m(r, baselines, directions) for r in runs) / 2
    assert summary["rows"]["pcgrad"]["delta_m"]["mean"] == pytest.approx(expected)


def test_benchmark_directory_renders_with_per_run_pages(tiny_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    root, _ = tiny_run
    page = write_report(root).read_text()
    assert "Benchmark: tiny" in page
    assert "Δm%" in page
    assert "pcgrad/seed0/figures/loss.png" in page


def test_unknown_method_filter_lists_the_entries(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Its methods: ew, mgda, mgda@repr, pcgrad"):
        run_benchmark(TINY, tmp_path, methods=["nash"], full=True)
    with pytest.raises(ValueError, match="Did you mean 'pcgrad'"):
        run_benchmark(TINY, tmp_path, methods=["pcgard"])
    # one unknown name among known ones was dropped without a word
    with pytest.raises(ValueError, match="'pcgard': not a method of benchmark 'tiny'"):
        run_benchmark(TINY, tmp_path, methods=["mgda", "pcgard"])
    assert not (tmp_path / "tiny").exists()


def test_named_benchmarks_check_the_methods_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from taskbalance.bench.main_job import _methods_per_part, run_named

    # the toy's progress bar started, and its worker processes, before 'nosuch' was refused
    with pytest.raises(ValueError, match="'nosuch': not a method of benchmark 'toy'"):
        run_named("toy", tmp_path / "toy", methods=["ew", "nosuch"], steps=10, jobs=1)
    assert not (tmp_path / "toy").exists()
    assert "toy:" not in capsys.readouterr().err  # (no progress bar)
    with pytest.raises(ValueError, match="Did you mean 'pcgrad'"):
        run_named("main", tmp_path / "main", methods=["pcgard"], steps=10, jobs=1)
    # in the main job, a name that one part lacks runs in the others, and a line says so
    chosen = _methods_per_part(["toy", "census"], ["ew", "cagrad", "ple / famo"], None)
    assert chosen == {"toy": ["ew", "cagrad"], "census": ["ew", "ple / famo"]}
    out = capsys.readouterr().out
    assert "toy: has no entry ple / famo" in out
    assert "census: has no entry cagrad" in out


def test_toy_run_and_suite_report(tmp_path: Path, tiny_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    summary = run_toy(tmp_path, ["ew", "mgda"], steps=300)
    assert set(summary["results"]) == {"ew", "mgda"}
    assert all(r["reached"] == 0 for r in summary["results"].values())  # 300 steps: too few
    assert (tmp_path / "toy" / "toy.png").exists()
    # a suite directory: the toy plus one benchmark
    root, _ = tiny_run
    (tmp_path / "tiny").symlink_to(root, target_is_directory=True)
    (tmp_path / "suite.json").write_text(json.dumps({"parts": ["toy", "tiny"], "meta": {}}))
    page = write_report(tmp_path).read_text()
    assert "toy/toy.png" in page
    assert "Benchmark: tiny" in page
    assert 'href="tiny/report.html"' in page


def test_toy_amortised_runs_reuse_weights_between_updates() -> None:
    assert parse_amortised("mgda+k5") == ("mgda", 5)
    assert parse_amortised("upgrad") == ("upgrad", 1)
    with pytest.raises(ValueError, match="METHOD\\+kN"):
        parse_amortised("mgda+kfive")
    every_step = run("mgda", 40, record_every=40)
    assert run("mgda+k1", 40, record_every=40)["final"] == every_step["final"]
    amortised = run("mgda+k4", 40, record_every=40)
    assert amortised["final"] != every_step["final"]  # weights held for 3 of every 4 steps
    moved = torch.tensor(amortised["final"]) - torch.tensor(amortised["trajectory"][0])
    assert bool((moved.norm(dim=1) > 0).all())


def test_toy_losses_match_the_papers_front() -> None:

    # on the front (x2 = -8.3552) the two quadratic branches are minimised at x1 = +-7
    ends = toy_losses(torch.tensor([[7.0, -8.3552], [-7.0, -8.3552]], dtype=torch.float64))
    assert ends[0, 0] < ends[1, 0]
    assert ends[1, 1] < ends[0, 1]


def test_shipped_benchmarks_validate() -> None:
    for spec in BENCHMARKS.values():
        for entry in (*spec.full, *spec.quick):
            config = spec.run_config(0, entry)
            assert config.data.dataset == spec.name or spec.name == "census"
        assert any(e.method == "ew" for e in spec.quick)


def test_named_toy_benchmark_writes_a_suite_report(tmp_path: Path) -> None:
    from taskbalance.bench.main_job import run_named

    report = run_named("toy", tmp_path, methods=["ew"], steps=200, jobs=1)
    assert report == tmp_path / "report.html"
    assert "Toy two-objective problem" in report.read_text()
    assert json.loads((tmp_path / "suite.json").read_text())["parts"] == ["toy"]


@pytest.mark.slow
def test_main_job_end_to_end(tmp_path: Path) -> None:
    from taskbalance.bench.main_job import run_named
    from taskbalance.data_sources import is_fetched

    if not is_fetched("adult"):
        pytest.skip("needs `taskbalance data fetch adult`")
    report = run_named("main", tmp_path, methods=["ew", "famo"], steps=2_000, jobs=2)
    page = report.read_text()
    for part in ("Toy two-objective", "Benchmark: multimnist", "Benchmark: census"):
        assert part in page


def test_ple_model_kind_builds_and_runs() -> None:

    from taskbalance.config import RunConfig
    from taskbalance.models import PLE
    from taskbalance.run import build_model, load_data

    config = RunConfig.model_validate(
        {
            "data": {"dataset": "synthetic", "options": {"num_tasks": 2}},
            "model": {"kind": "ple", "hidden": [8], "experts": 2, "task_experts": 1},
        }
    )
    data = load_data(config)
    model = build_model(config, data, ["task0", "task1"])
    assert isinstance(model, PLE)
    out = model(torch.randn(5, data.input_features))
    assert set(out) == {"task0", "task1"}
    assert out["task0"].shape == (5, 1)


def test_update_every_in_configs_and_entries() -> None:
    from pydantic import ValidationError

    from taskbalance.config import MethodConfig

    assert MethodConfig(name="mgda", update_every=5).display == "mgda+k5"
    assert Entry("mgda", update_every=5).display == "mgda+k5"
    with pytest.raises(ValidationError, match="update_every"):
        MethodConfig(name="mgda", update_every=0)


def test_amortised_entries_train_with_reused_weights(tmp_path: Path) -> None:
    spec = BenchmarkSpec(
        name="tiny_k",
        description="update_every through the runner",
        config=TINY.config,
        quick=(Entry("ew"), Entry("mgda", update_every=3)),
        full=(),
    )
    summary = run_benchmark(spec, tmp_path, seeds=1)
    saved = json.loads((tmp_path / "tiny_k" / "mgda_k3" / "seed0" / "results.json").read_text())
    assert saved["update_every"] == 3
    assert "mgda+k3" in summary["rows"]


def test_bench_command_runs_the_toy_and_validates_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from taskbalance.cli import main

    out = tmp_path / "toy_run"
    args = ["bench", "toy", "--methods", "ew", "--steps", "100", "--jobs", "1", "--out", str(out)]
    assert main(args) == 0
    assert (out / "report.html").exists()
    assert json.loads((out / "toy" / "toy.json").read_text())["meta"]["steps"] == 100
    with pytest.raises(SystemExit):
        main(["bench", "toy", "--steps", "0"])
    assert "must be a positive integer" in capsys.readouterr().err


class _Steps(_Count):
    def __init__(self) -> None:
        super().__init__()
        self.steps, self.messages = 0, []  # type: ignore[var-annotated]

    def advance(self, count: int, message: str) -> None:
        self.steps += count
        self.messages.append(message)


def test_toy_progress_moves_by_steps_and_names_the_runs(tmp_path: Path) -> None:
    progress = _Steps()
    run_toy(tmp_path, ["ew", "mgda"], steps=400, progress=progress)
    assert progress.total == progress.steps == 800
    assert len(progress.messages) >= 100  # about a hundred updates per run, not one per run
    assert any("mgda" in message for message in progress.messages)


def test_toy_cache_is_reused_only_for_the_same_code_and_settings(tmp_path: Path) -> None:
    from taskbalance.bench.toy import fingerprint

    run_toy(tmp_path, ["ew"], steps=100)
    cached = tmp_path / "toy" / "toy_runs" / "ew_100.json"
    result = json.loads(cached.read_text())
    assert result["fingerprint"] == fingerprint("ew", 100)
    result["distance"] = [123.0] * 5  # a stale result under the current fingerprint: reused
    cached.write_text(json.dumps(result))
    assert run_toy(tmp_path, ["ew"], steps=100)["results"]["ew"]["distance"][0] == 123.0
    result["fingerprint"] = "from older code"  # another fingerprint: recomputed
    cached.write_text(json.dumps(result))
    assert run_toy(tmp_path, ["ew"], steps=100)["results"]["ew"]["distance"][0] != 123.0
    assert fingerprint("ew", 100) != fingerprint("ew", 200) != fingerprint("mgda", 200)
