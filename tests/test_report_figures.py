"""The report tells the truth: the Pareto front covers every metric and matches the tables'
stars, step times exclude evaluation, Delta-m charts say when differences are noise, constant
curves are not drawn, and the figures are written (and look at them after `make demo`)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from taskbalance import Task, Trainer
from taskbalance.metrics import pareto_front
from taskbalance.models import HardSharing

pytest.importorskip("matplotlib")

from taskbalance.plots import (
    close_to_best,
    curves_figure,
    delta_m_figure,
    heatmap_figure,
    pareto_figure,
    smooth,
)

DIRECTIONS = {"a/accuracy": True, "b/accuracy": True, "c/mae": False}
# on two metrics alone `x` dominates `y`; the third metric (c/mae, lower is better) saves `y`
POINTS = {
    "x": {"a/accuracy": 0.9, "b/accuracy": 0.9, "c/mae": 1.0},
    "y": {"a/accuracy": 0.8, "b/accuracy": 0.8, "c/mae": 0.5},
    "z": {"a/accuracy": 0.7, "b/accuracy": 0.7, "c/mae": 2.0},
}


def test_pareto_front_uses_every_metric(tmp_path: Path) -> None:
    front = pareto_figure(POINTS, DIRECTIONS, tmp_path / "pareto.png")
    assert sorted(front) == ["x", "y"]  # a two-metric plot would have kept only "x"
    two_metrics = {k: v for k, v in DIRECTIONS.items() if k != "c/mae"}
    assert pareto_front(POINTS, two_metrics) == ["x"]
    assert (tmp_path / "pareto.png").stat().st_size > 10_000


def test_pareto_figure_with_many_metrics_uses_parallel_coordinates(tmp_path: Path) -> None:
    directions = {f"t{i}/auc": True for i in range(6)}
    points = {f"m{j}": {k: float((i * j) % 5) for i, k in enumerate(directions)} for j in range(5)}
    front = pareto_figure(points, directions, tmp_path / "p.png")
    assert front == pareto_front(points, directions)
    assert (tmp_path / "p.png").exists()


@pytest.mark.parametrize("metrics", [3, 6])  # scatter panels, parallel coordinates
def test_a_diverged_entry_is_named_not_drawn_and_never_on_the_front(
    tmp_path: Path, metrics: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure

    directions = {f"t{i}/accuracy": True for i in range(metrics)}
    points = {
        "good": dict.fromkeys(directions, 0.9),
        "diverged": dict.fromkeys(directions, float("nan")),
        "bad": {k: 0.1 if i else 0.95 for i, k in enumerate(directions)},
    }
    titles: list[str] = []
    original = Figure.suptitle

    def record(self: Figure, text: str, **options: object) -> object:
        titles.append(text)
        return original(self, text, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(Figure, "suptitle", record)
    front = pareto_figure(points, directions, tmp_path / "p.png")
    assert sorted(front) == ["bad", "good"]
    assert (tmp_path / "p.png").stat().st_size > 10_000
    assert "not drawn, a metric is not finite: diverged" in " ".join(titles).replace("\n", " ")


def test_pareto_figure_with_one_metric_draws_nothing(tmp_path: Path) -> None:
    front = pareto_figure({"a": {"m": 1.0}, "b": {"m": 2.0}}, {"m": True}, tmp_path / "p.png")
    assert front == ["b"]
    assert not (tmp_path / "p.png").exists()


def test_comparison_table_stars_match_the_plot(tmp_path: Path) -> None:
    from taskbalance.report import write_report

    runs = []
    for name, metrics in POINTS.items():
        (tmp_path / name).mkdir()
        runs.append(
            {
                "method": name,
                "dir": name,
                "test": {**metrics, "mean_loss": 1.0},
                "directions": DIRECTIONS,
                "ms_per_step": 1.0,
            }
        )
    (tmp_path / "summary.json").write_text(json.dumps({"name": "cmp", "runs": runs, "meta": {}}))
    page = write_report(tmp_path).read_text()
    assert ">x *<" in page
    assert ">y *<" in page
    assert ">z<" in page
    assert "Pareto front over all 3 metrics" in page
    assert "train step ms" in page


def test_close_to_best_counts_entries_within_the_best_ones_spread() -> None:
    assert close_to_best([0.1, 0.2, 0.15], [0.3, 0.2, 0.25]) == 3
    assert close_to_best([1.0, 5.0], [0.1, 0.2]) == 1
    assert close_to_best([1.0, 5.0], [0.0, 0.0]) is None  # one seed: no spread


def test_delta_m_figure_says_when_differences_are_noise(tmp_path: Path) -> None:
    caption = delta_m_figure(
        ["ew", "pcgrad"], [[0.01, -0.05, 0.03], [0.02, 0.1, -0.08]], tmp_path / "d.png", "t"
    )
    assert "2 of 2 entries are within one std of the best" in caption
    one_seed = delta_m_figure(["ew", "pcgrad"], [[0.01], [0.17]], tmp_path / "e.png", "t")
    assert "one seed" in one_seed
    clear = delta_m_figure(["ew", "mgda"], [[0.0, 0.1], [-25.0, -24.0]], tmp_path / "f.png", "t")
    assert "leads by more than its seed spread" in clear


def test_curves_skip_constant_series_and_smooth(tmp_path: Path) -> None:
    x = [float(i) for i in range(100)]
    drawn, note = curves_figure(
        x,
        {"task weight": {"a": [1.0] * 100, "b": [1.0] * 100}},
        tmp_path / "w.png",
        title="weights",
        x_label="step",
    )
    assert not drawn
    assert note == "task weight: constant at 1"
    assert not (tmp_path / "w.png").exists()
    noisy = [float(i % 2) for i in range(100)]
    drawn, note = curves_figure(
        x,
        {"conflict rate": {"conflict rate": noisy}},
        tmp_path / "c.png",
        title="conflicts",
        x_label="step",
        smooth_window=10,
    )
    assert drawn
    assert note is None
    assert smooth(noisy, 10)[-1] == pytest.approx(0.5)


def test_heatmap_scale_comes_from_the_off_diagonal(tmp_path: Path) -> None:
    heatmap_figure([[5.0, 0.1], [-0.2, 4.0]], ["a", "b"], tmp_path / "h.png", title="TAG")
    assert (tmp_path / "h.png").exists()


def _trainer(tmp_path: Path) -> tuple[Trainer, DataLoader, DataLoader]:  # type: ignore[type-arg]
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    data = TensorDataset(x, x.sum(1))
    collate = lambda rows: (  # noqa: E731
        torch.stack([r[0] for r in rows]),
        {"a": torch.stack([r[1] for r in rows]), "b": -torch.stack([r[1] for r in rows])},
    )
    loader = DataLoader(data, batch_size=32, collate_fn=collate)
    model = HardSharing(nn.Linear(8, 8), {"a": nn.Linear(8, 1), "b": nn.Linear(8, 1)})
    trainer = Trainer(model, [Task("a", "mse", ["mae"]), Task("b", "mse", ["mae"])], "ew")
    return trainer, loader, loader


def test_step_time_excludes_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer, train, val = _trainer(tmp_path)
    evaluate = trainer.evaluate

    def slow_evaluate(*args: object, **kwargs: object) -> dict[str, float]:
        time.sleep(0.2)  # validation that costs far more than the 8 training steps together
        return evaluate(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer, "evaluate", slow_evaluate)
    started = time.perf_counter()
    trainer.fit(train, val, epochs=2)
    wall_ms = 1000 * (time.perf_counter() - started) / trainer.global_step
    assert trainer.global_step == 16
    assert len(trainer.step_seconds) == 16
    assert trainer.step_time_ms is not None
    assert trainer.step_time_ms < wall_ms / 3  # the 0.4 s of validation is not in it
    assert trainer.step_time_ms == pytest.approx(1000 * statistics.median(trainer.step_seconds))


def test_step_time_counts_every_micro_batch_of_an_accumulated_step(tmp_path: Path) -> None:
    trainer, train, _ = _trainer(tmp_path)
    trainer.grad_accumulation = 2
    trainer.fit(train, epochs=1)
    assert trainer.global_step == 4
    assert len(trainer.step_seconds) == 4
