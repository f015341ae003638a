"""PCGrad against the paper's projection rule."""

import pytest
import torch

from taskbalance import aggregate, methods


def reference_pcgrad(J: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """Direct transcription of Algorithm 1 (Yu et al. 2020) on explicit vectors."""
    projected = []
    for i in range(J.shape[0]):
        g = J[i].clone()
        for j in orders[i].tolist():
            dot = g @ J[j]
            if dot < 0:
                g = g - dot / (J[j] @ J[j]) * J[j]
        projected.append(g)
    return torch.stack(projected).sum(dim=0)


def test_two_conflicting_gradients_hand_computed() -> None:
    J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    # g1 -> g1 - (g1.g2/|g2|^2) g2 = (1,0) + 0.5(-1,1) = (0.5, 0.5)
    # g2 -> g2 - (g2.g1/|g1|^2) g1 = (-1,1) + (1,0) = (0, 1)
    torch.testing.assert_close(aggregate("pcgrad", J), torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(
        aggregate(methods.create("pcgrad", reduction="mean"), J), torch.tensor([0.25, 0.75])
    )


def test_projected_gradients_no_longer_conflict_for_two_tasks() -> None:
    J = torch.tensor([[2.0, 1.0, 0.0], [-1.0, 0.5, 1.0]])
    d = aggregate("pcgrad", J)
    g1 = J[0] - (J[0] @ J[1]) / (J[1] @ J[1]) * J[1]
    g2 = J[1] - (J[1] @ J[0]) / (J[0] @ J[0]) * J[0]
    torch.testing.assert_close(d, g1 + g2)
    assert float(g1 @ J[1]) == pytest.approx(0.0, abs=1e-6)
    assert float(g2 @ J[0]) == pytest.approx(0.0, abs=1e-6)


def test_non_conflicting_gradients_are_left_alone() -> None:
    J = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, 3.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(aggregate("pcgrad", J), J.sum(dim=0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_many_tasks_match_the_explicit_algorithm_with_the_same_orders(seed: int) -> None:
    torch.manual_seed(seed)
    J = torch.randn(7, 20, dtype=torch.float64)
    method = methods.create("pcgrad", seed=seed)
    orders = methods.create("pcgrad", seed=seed).orders(7)  # type: ignore[attr-defined]
    torch.testing.assert_close(aggregate(method, J), reference_pcgrad(J, orders))


def test_order_is_seeded_and_checkpointed() -> None:
    torch.manual_seed(0)
    J = torch.randn(5, 8)
    first = methods.create("pcgrad", seed=4)
    aggregate(first, J)
    state = first.state_dict()
    expected = aggregate(first, J)
    restored = methods.create("pcgrad", seed=4)
    restored.load_state_dict(state)
    assert torch.equal(aggregate(restored, J), expected)
    assert torch.equal(
        aggregate(methods.create("pcgrad", seed=4), J),
        aggregate(methods.create("pcgrad", seed=4), J),
    )


@pytest.mark.parametrize(("tasks", "common"), [(130, 0.5), (200, 0.45)])
def test_few_conflicts_at_many_tasks_take_the_row_selective_update(
    tasks: int, common: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From 128 tasks with few conflicting pairs only the projecting rows are updated at each
    position: the same weights as the dense update and as the explicit algorithm."""
    from taskbalance.methods.gradient import pcgrad

    generator = torch.Generator().manual_seed(tasks)
    J = torch.randn(tasks, 60, generator=generator, dtype=torch.float64)
    J += common * torch.randn(1, 60, generator=generator, dtype=torch.float64)
    share = float(((J @ J.T) < 0).sum()) / (tasks * (tasks - 1))
    assert 0 < share <= pcgrad._SPARSE_SHARE  # the selective path, with some conflicts
    orders = methods.create("pcgrad", seed=1).orders(tasks)  # type: ignore[attr-defined]
    selective = aggregate(methods.create("pcgrad", seed=1), J)
    monkeypatch.setattr(pcgrad, "_SPARSE_FROM", 10**9)
    dense = aggregate(methods.create("pcgrad", seed=1), J)
    torch.testing.assert_close(selective, dense, rtol=0, atol=1e-12)
    torch.testing.assert_close(selective, reference_pcgrad(J, orders), rtol=1e-10, atol=1e-10)
