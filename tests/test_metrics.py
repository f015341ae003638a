"""Metrics, Delta-m% (both definitions), mean rank and Pareto front on hand-computed cases."""

import math

import pytest
import torch

from taskbalance.metrics import accuracy, auc, delta_m, f1, mae, mean_rank, miou, mse, pareto_front


def test_basic_metrics() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 2.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 1])) == 0.75
    assert accuracy(torch.tensor([0.9, 0.2, 0.7]), torch.tensor([1, 0, 0])) == pytest.approx(2 / 3)
    assert mae(torch.tensor([[1.0], [3.0]]), torch.tensor([2.0, 2.0])) == 1.0
    assert mse(torch.tensor([1.0, 4.0]), torch.tensor([2.0, 2.0])) == 2.5
    assert f1(logits, torch.tensor([0, 1, 1, 1])) == pytest.approx((2 / 3 + 0.8) / 2)
    masks = torch.zeros(1, 2, 2, 2)
    masks[0, 1, 0, :] = 1.0  # predicts class 1 on the first row
    assert miou(masks, torch.tensor([[[1, 1], [1, 0]]])) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_auc_matches_pairwise_counting() -> None:
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4])
    labels = torch.tensor([0, 0, 1, 1, 1])
    pairs = [(p, n) for p in range(5) for n in range(5) if labels[p] == 1 and labels[n] == 0]
    expected = sum(
        1.0 if scores[p] > scores[n] else 0.5 if scores[p] == scores[n] else 0.0 for p, n in pairs
    ) / len(pairs)
    assert auc(scores, labels) == pytest.approx(expected)


def test_delta_m_both_definitions() -> None:
    baselines = {"seg/miou": 0.40, "seg/acc": 0.50, "depth/abs_err": 0.60}
    results = {"seg/miou": 0.44, "seg/acc": 0.45, "depth/abs_err": 0.54}
    higher = {"seg/miou": True, "seg/acc": True, "depth/abs_err": False}
    # gains: +10%, -10%, +10% (lower error is better)
    assert delta_m(results, baselines, higher) == pytest.approx(100 * (0.1 - 0.1 + 0.1) / 3)
    assert delta_m(results, baselines, higher, average="tasks") == pytest.approx(
        100 * ((0.1 - 0.1) / 2 + 0.1) / 2
    )
    with pytest.raises(KeyError, match="no result"):
        delta_m({}, baselines, higher)


def test_mean_rank_and_pareto_front() -> None:
    table = {
        "ew": {"a/acc": 0.9, "b/mae": 1.0},
        "mgda": {"a/acc": 0.95, "b/mae": 1.5},
        "pcgrad": {"a/acc": 0.9, "b/mae": 1.1},
    }
    higher = {"a/acc": True, "b/mae": False}
    ranks = mean_rank(table, higher)
    assert ranks == {"ew": (2.5 + 1) / 2, "mgda": (1 + 3) / 2, "pcgrad": (2.5 + 2) / 2}
    assert pareto_front(table, higher) == ["ew", "mgda"]


@pytest.mark.parametrize("lower_is_better", [False, True])
def test_a_diverged_method_ranks_last_and_is_not_on_the_pareto_front(
    lower_is_better: bool,
) -> None:
    # NaN compares false with everything: it was never dominated (so on the front) and sorted
    # anywhere (mean rank 2.5 of 4, ahead of a method that trained badly)
    nan = float("nan")
    good, bad = (0.1, 0.9) if lower_is_better else (0.9, 0.1)
    table = {
        "good": {"a/x": good, "b/x": good},
        "diverged": {"a/x": nan, "b/x": nan},
        "bad": {"a/x": bad, "b/x": bad},
        "half": {"a/x": good, "b/x": nan},
    }
    directions = {"a/x": not lower_is_better, "b/x": not lower_is_better}
    assert pareto_front(table, directions) == ["good"]
    ranks = mean_rank(table, directions)
    assert ranks["good"] == 1.25  # tied with "half" on a/x (1.5), first on b/x (1)
    assert ranks["diverged"] == 3.75  # last on a/x (4), tied last on b/x with "half" (3.5)
    assert ranks["bad"] == 2.5  # 3 and 2
    assert ranks["half"] == 2.5  # 1.5 and 3.5
    only = {"diverged": {"a/x": nan, "b/x": nan}, "also": {"a/x": nan, "b/x": nan}}
    assert pareto_front(only, directions) == ["diverged", "also"]


def test_binary_miou_on_logits() -> None:
    from taskbalance.metrics import binary_miou

    logits = torch.tensor([[2.0, -1.0, 3.0, -2.0]])
    target = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    # class 1: predicted {0, 2}, true {0} -> 1/2; class 0: predicted {1, 3}, true {1, 2, 3} -> 2/3
    assert binary_miou(logits, target) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_multimnist_overlays_two_digits_with_a_left_mask() -> None:
    pytest.importorskip("sklearn")
    from taskbalance.datasets import multimnist

    data = multimnist(samples=50)
    image, targets = data.train[0]
    assert image.shape == (1, 12, 12)
    assert set(targets) == {"left", "right", "mask"}
    mask = targets["mask"].reshape(12, 12)
    assert mask[8:, :].sum() == 0
    assert mask[:, 8:].sum() == 0
    assert bool((image[0][mask.bool()] > 0.25).all())  # the mask marks ink of the image


def test_binary_task_metrics_read_logits_as_logits() -> None:
    # logits of 0.1-0.9 all mean "positive"; a metric left to guess read them as
    # probabilities and thresholded at 0.5 (accuracy 0.6 instead of 0.9)
    from taskbalance import Task

    task = Task("click", "binary_cross_entropy", ["accuracy", "auc", "f1"])
    logits = torch.linspace(0.1, 0.9, 100)
    target = torch.ones(100)
    target[:10] = 0
    results = task.evaluate(logits, target)
    assert results["accuracy"] == pytest.approx(0.9)
    assert results["auc"] == pytest.approx(1.0)
    seen: list[torch.Tensor] = []

    def own(prediction: torch.Tensor, _: torch.Tensor) -> float:
        seen.append(prediction)
        return 0.0

    from taskbalance.metrics import Metric

    Task("click", "binary_cross_entropy", {"own": Metric(own, True)}).evaluate(logits, target)
    assert torch.equal(seen[0], logits)  # a metric of one's own gets the outputs as they are


@pytest.mark.parametrize("name", ["accuracy", "f1", "miou", "auc", "binary_miou", "mae", "mse"])
def test_a_diverged_model_scores_nan_not_a_class(name: str) -> None:
    # argmax / thresholds turned all-NaN logits into a class: 33% accuracy on three classes
    from taskbalance.metrics import METRICS

    binary = name in ("auc", "binary_miou", "mae", "mse")
    target = torch.tensor([0, 1, 0, 1, 0, 1]) if binary else torch.tensor([0, 1, 2, 0, 1, 2])
    prediction = torch.full((6,) if binary else (6, 3), float("nan"))
    assert math.isnan(METRICS[name](prediction, target))
    partly = torch.zeros_like(prediction)
    partly[0] = float("nan")
    assert math.isnan(METRICS[name](partly, target))


def test_seed_mean_std_leaves_out_seeds_that_diverged() -> None:
    from taskbalance.metrics import seed_mean_std

    assert seed_mean_std([1.0, 3.0, float("nan"), float("inf")]) == (2.0, pytest.approx(2**0.5))
    assert seed_mean_std([4.0]) == (4.0, 0.0)
    mean, std = seed_mean_std([float("nan"), float("-inf")])
    assert math.isnan(mean)
    assert math.isnan(std)
