"""Task affinity (gradient cosine, TAG look-ahead) and grouping, including planted clusters."""

import itertools

import pytest
import torch
from torch import nn

from taskbalance import Balancer
from taskbalance.health import (
    HealthMonitor,
    LookaheadAffinity,
    lookahead_affinity,
    rank_groupings,
    suggest_groups,
)
from taskbalance.models import HardSharing


def test_lookahead_affinity_matches_its_definition_and_restores_the_parameters() -> None:
    theta = torch.tensor([1.0, -2.0], requires_grad=True)
    x = torch.tensor([[1.0, 0.5], [0.2, 1.0]])

    def losses() -> list[torch.Tensor]:
        return [(x[0] @ theta - 1.0) ** 2, (x[1] @ theta + 1.0) ** 2]

    lr = 0.1
    Z = lookahead_affinity([theta], losses, lr)
    before = torch.stack(losses()).detach()
    for i in range(2):
        (g,) = torch.autograd.grad(losses()[i], theta)
        with torch.no_grad():
            stepped = theta - lr * g
            after = torch.stack([(x[0] @ stepped - 1.0) ** 2, (x[1] @ stepped + 1.0) ** 2])
        torch.testing.assert_close(Z[i], (1 - after / before).double())
    assert torch.equal(theta.detach(), torch.tensor([1.0, -2.0]))
    assert float(Z[0, 0]) > 0
    assert float(Z[1, 1]) > 0


def _two_task_problem() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([1.0, -2.0], requires_grad=True), torch.tensor([[1.0, 0.5], [0.2, 1.0]])


@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan"), float("inf")])
def test_lookahead_step_sizes_that_are_not_positive_and_finite_are_refused(lr: float) -> None:
    theta, _ = _two_task_problem()
    with pytest.raises(ValueError, match="lr"):
        lookahead_affinity([theta], lambda: [theta.sum() ** 2, theta.sum() ** 2], lr)
    with pytest.raises(ValueError, match="lr"):
        LookaheadAffinity([theta], lr)


def test_lookahead_affinity_refuses_negative_losses() -> None:
    # 1 - after / before reads backwards for a negative loss (a decrease looks like harm)
    theta, x = _two_task_problem()
    with pytest.raises(ValueError, match="losses >= 0"):
        lookahead_affinity([theta], lambda: [(x[0] @ theta) ** 2, -((x[1] @ theta) ** 2)], 0.1)


def test_lookahead_affinity_onto_a_solved_task_is_zero() -> None:
    theta, x = _two_task_problem()

    def losses() -> list[torch.Tensor]:
        # task 1's loss is exactly 0 at theta (and stays 0 for any step: its gradient is 0)
        return [(x[0] @ theta - 1.0) ** 2, (x[1] @ theta - float(x[1] @ theta.detach())) ** 2]

    Z = lookahead_affinity([theta], losses, 0.1)
    assert torch.equal(Z[:, 1], torch.zeros(2, dtype=torch.float64))
    assert float(Z[0, 0]) > 0


def test_a_non_finite_measurement_is_left_out_of_the_running_mean(
    caplog: pytest.LogCaptureFixture,
) -> None:
    theta, x = _two_task_problem()
    broken = {"now": False}

    def losses() -> list[torch.Tensor]:
        second = (x[1] @ theta + 1.0) ** 2
        return [(x[0] @ theta - 1.0) ** 2, second * float("nan") if broken["now"] else second]

    tracker = LookaheadAffinity([theta], lr=0.1)
    good = tracker.measure(losses)
    broken["now"] = True
    with caplog.at_level("WARNING", logger="taskbalance.health.affinity"):
        bad = tracker.measure(losses)
    assert not bool(bad.isfinite().all())
    assert "left out of the mean" in caplog.text
    assert (tracker.count, tracker.skipped) == (1, 1)
    torch.testing.assert_close(tracker.matrix, good)
    restored = LookaheadAffinity([theta], lr=0.1)
    restored.load_state_dict(tracker.state_dict())
    assert (restored.count, restored.skipped) == (1, 1)


def test_grouping_search_is_exact_for_small_t() -> None:
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(5, 5, generator=generator, dtype=torch.float64)
    best = rank_groupings(A, budget=2, top=1)[0]

    # brute force over all assignments of 5 tasks to <= 2 labelled groups
    def score(groups: list[list[int]]) -> float:
        total = 0.0
        for g in groups:
            if len(g) > 1:
                for j in g:
                    total += sum(float(A[i, j]) for i in g if i != j) / (len(g) - 1)
        return total

    brute = max(
        score([[t for t in range(5) if a[t] == k] for k in (0, 1)])
        for a in itertools.product((0, 1), repeat=5)
    )
    assert best.score == pytest.approx(brute)
    assert len(best.groups) <= 2


def test_greedy_grouping_for_many_tasks_recovers_blocks() -> None:
    labels = [i % 3 for i in range(12)]
    A = torch.tensor(
        [[0.8 if a == b else -0.3 for b in labels] for a in labels], dtype=torch.float64
    )
    grouping = suggest_groups(A, budget=3)
    expected = {tuple(f"task{i}" for i in range(12) if labels[i] == k) for k in range(3)}
    assert set(grouping.groups) == expected
    with pytest.raises(ValueError, match="square"):
        suggest_groups(torch.zeros(2, 3), 2)
    with pytest.raises(ValueError, match="budget"):
        suggest_groups(torch.zeros(2, 2), 0)


@pytest.mark.parametrize("clusters", [2, 3])
def test_planted_task_clusters_are_recovered(clusters: int) -> None:
    num_tasks, dim = 6, 10
    generator = torch.Generator().manual_seed(clusters)
    basis, _ = torch.linalg.qr(torch.randn(dim, 2, generator=generator))
    angles = [2 * torch.pi * k / clusters for k in range(clusters)]
    centers = [
        float(torch.cos(torch.tensor(a))) * basis[:, 0]
        + float(torch.sin(torch.tensor(a))) * basis[:, 1]
        for a in angles
    ]
    membership = [t % clusters for t in range(num_tasks)]
    weights = torch.stack(
        [centers[m] + 0.1 * torch.randn(dim, generator=generator) for m in membership]
    )
    x = torch.randn(256, dim, generator=generator)
    y = x @ weights.T
    names = [f"t{t}" for t in range(num_tasks)]

    torch.manual_seed(0)
    head = nn.Linear(dim, 1)
    model = HardSharing(nn.Linear(dim, dim), {n: nn.Linear(dim, 1) for n in names})
    for h in model.heads.values():
        h.load_state_dict(
            head.state_dict()
        )  # same start for every head: affinity comes from the data

    def losses() -> dict[str, torch.Tensor]:
        out = model(x)
        return {n: ((out[n].squeeze(-1) - y[:, t]) ** 2).mean() for t, n in enumerate(names)}

    monitor = HealthMonitor(warn=False)
    balancer = Balancer.for_model("pcgrad", model, monitor=monitor)
    tag = LookaheadAffinity(model.shared_parameters(), lr=0.01)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(10):
        tag.measure(losses)
        optimizer.zero_grad()
        balancer.backward(losses())
        optimizer.step()
    planted = {
        tuple(n for n, m in zip(names, membership, strict=True) if m == k) for k in range(clusters)
    }
    cosines = monitor.mean_cosines()
    assert cosines is not None
    for affinity in (cosines, tag.matrix):
        grouping = suggest_groups(affinity, budget=clusters, names=names)
        assert set(grouping.groups) == planted, str(grouping)


def test_grouping_inputs_are_validated() -> None:
    affinity = torch.eye(3)
    with pytest.raises(ValueError, match="distinct"):
        rank_groupings(affinity, 2, names=["a", "a", "b"])  # groups read ('a', 'a', 'b')
    with pytest.raises(ValueError, match="top must be"):
        rank_groupings(affinity, 2, top=0)
