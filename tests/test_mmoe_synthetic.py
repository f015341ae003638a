"""The MMoE paper's synthetic data generator and one short run of the benchmark."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import mmoe_synthetic  # noqa: E402

sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.parametrize("correlation", [1.0, 0.5, 0.1, 0.0])
@pytest.mark.parametrize("waves", ["google", "normal"])
def test_weight_vectors_have_the_papers_cosine_and_scale(correlation: float, waves: str) -> None:
    data = mmoe_synthetic.Generator(
        correlation, seed=3, waves=waves, noise_std=0.01, d=100, c=2.0, m=10
    )
    w1, w2 = data.weights.double()
    assert float(w1.norm()) == pytest.approx(2.0, rel=1e-6)
    assert float(w2.norm()) == pytest.approx(2.0, rel=1e-6)
    assert float(w1 @ w2 / (w1.norm() * w2.norm())) == pytest.approx(correlation, abs=1e-6)


def test_labels_follow_the_papers_formula() -> None:
    data = mmoe_synthetic.Generator(0.5, seed=1, waves="google", noise_std=0.0, d=100, c=1.0, m=10)
    assert data.alpha.tolist() == [float(i) for i in range(1, 11)]
    assert data.beta.tolist() == [float(i**2) for i in range(10)]
    x, y = data.sample(64)
    for k in range(2):
        projection = x @ data.weights[k]
        expected = projection + sum(
            torch.sin(alpha * projection + beta)
            for alpha, beta in zip(data.alpha, data.beta, strict=True)
        )
        torch.testing.assert_close(y[:, k], expected, rtol=1e-5, atol=1e-4)


def test_identical_tasks_at_correlation_one_and_noise_at_its_level() -> None:
    data = mmoe_synthetic.Generator(1.0, seed=2, waves="normal", noise_std=0.1, d=100, c=1.0, m=10)
    _, y = data.sample(20_000)
    difference = y[:, 0] - y[:, 1]  # the same function: only the two noises differ
    assert float(difference.std()) == pytest.approx(0.1 * math.sqrt(2), rel=0.05)


def test_a_short_run_learns_and_reports_what_the_table_needs() -> None:
    job = {
        "correlation": 0.5,
        "model": "mmoe",
        "seed": 0,
        "steps": 60,
        "batch": 64,
        "lr": 1e-3,
        "waves": "normal",
        "noise_std": 0.1,
        "record_every": 20,
    }
    result = mmoe_synthetic.run(job)
    assert len(result["curve"]) == 3
    assert result["curve"][-1] < result["curve"][0]
    assert set(result["held_out"]) == {"task1", "task2"}
    assert -1.0 <= result["label_correlation"] <= 1.0
    rows = mmoe_synthetic.summarise([result, result | {"model": "shared-bottom"}])
    assert rows[0]["mmoe"]["runs"] == 1
