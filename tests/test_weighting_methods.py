"""Loss-weighting methods against their formulas on hand-computed cases."""

import pytest
import torch

from taskbalance import aggregate, methods
from taskbalance.methods.base import Context

J = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, -1.0], [1.0, 1.0, 1.0]])


def weights(name: str, ctx: Context, **hparams: object) -> torch.Tensor:
    result = methods.create(name, **hparams)(ctx).weights
    assert result is not None
    return result


def test_ew_is_the_sum_of_task_gradients() -> None:
    torch.testing.assert_close(aggregate("ew", J), J.sum(dim=0))


def test_fixed_weights_are_used_as_given() -> None:
    expected = 0.5 * J[0] + 2.0 * J[1] + 0.0 * J[2]
    torch.testing.assert_close(
        aggregate(methods.create("fixed", weights=[0.5, 2.0, 0.0]), J), expected
    )


def test_fixed_weights_by_task_name() -> None:
    method = methods.create("fixed", weights={"b": 2.0, "a": 1.0})
    ctx = Context(num_tasks=2, task_names=("a", "b"))
    assert weights("fixed", ctx, weights={"b": 2.0, "a": 1.0}).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="no weight for"):
        method(Context(num_tasks=2, task_names=("a", "c")))


def test_fixed_rejects_a_wrong_number_of_tasks() -> None:
    with pytest.raises(ValueError, match="3 weights for 2 tasks"):
        aggregate(methods.create("fixed", weights=[1.0, 1.0, 1.0]), J[:2])


def test_loss_ratio_two_tasks_matches_the_seed_formula() -> None:
    # w_A = L_B / (L_A + L_B), w_B = L_A / (L_A + L_B), times T = 2 (sum-to-T convention).
    ctx = Context(num_tasks=2, losses=torch.tensor([3.0, 1.0], dtype=torch.float64))
    w = weights("loss_ratio", ctx)
    torch.testing.assert_close(w, torch.tensor([2 * 1 / 4, 2 * 3 / 4], dtype=torch.float64))
    # every weighted loss equals the harmonic mean of the losses
    torch.testing.assert_close(w * ctx.losses, torch.full((2,), 1.5, dtype=torch.float64))


def test_loss_ratio_many_tasks() -> None:
    losses = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    w = weights("loss_ratio", Context(num_tasks=3, losses=losses))
    inverse = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    torch.testing.assert_close(w, 3 * inverse / inverse.sum())
    assert float(w.sum()) == pytest.approx(3.0)


def test_loss_ratio_edge_cases() -> None:
    zero = weights("loss_ratio", Context(num_tasks=2, losses=torch.zeros(2, dtype=torch.float64)))
    assert zero.tolist() == [1.0, 1.0]
    one_zero = weights("loss_ratio", Context(num_tasks=2, losses=torch.tensor([0.0, 1.0])))
    assert torch.isfinite(one_zero).all()
    assert one_zero[0] > 1.99
    with pytest.raises(ValueError, match="non-negative"):
        weights("loss_ratio", Context(num_tasks=2, losses=torch.tensor([-1.0, 1.0])))
    with pytest.raises(ValueError, match="losses="):
        aggregate("loss_ratio", J)


def test_metric_weighting_matches_the_seed_formula() -> None:
    method = methods.create("metric_weighting")
    # before any metric: equal weights
    assert method(Context(num_tasks=2)).weights.tolist() == [1.0, 1.0]  # type: ignore[union-attr]
    acc = torch.tensor([0.9, 0.6], dtype=torch.float64)
    w = method(Context(num_tasks=2, metrics=acc)).weights
    # w_A = (1 - acc_A) / ((1 - acc_A) + (1 - acc_B)), times T = 2
    torch.testing.assert_close(w, torch.tensor([2 * 0.1 / 0.5, 2 * 0.4 / 0.5], dtype=torch.float64))
    # the last reported metrics are kept (e.g. reported once per epoch)
    torch.testing.assert_close(method(Context(num_tasks=2)).weights, w)
    state = method.state_dict()
    fresh = methods.create("metric_weighting")
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(Context(num_tasks=2)).weights, w)
    method.reset()
    assert method(Context(num_tasks=2)).weights.tolist() == [1.0, 1.0]  # type: ignore[union-attr]


def test_metric_weighting_validates_metrics() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        aggregate("metric_weighting", J[:2], metrics=[0.5, 1.5])
    with pytest.raises(ValueError, match="2 metrics for 3 tasks"):
        aggregate("metric_weighting", J, metrics=[0.5, 0.5])
    perfect = aggregate("metric_weighting", J[:2], metrics=[1.0, 1.0])
    torch.testing.assert_close(perfect, J[:2].sum(dim=0))
