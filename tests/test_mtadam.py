"""MTAdam against a direct transcription of the paper's algorithm."""

import copy
import io
import logging

import pytest
import torch

from helpers import TwoLevelNet, overflowing_gradient, regression_problem, task_losses
from taskbalance.optim import MTAdam


def reference_mtadam(
    params, loss_fn, steps, lr=1e-3, betas=(0.9, 0.999, 0.9), eps=1e-8, ranks=None
):  # type: ignore[no-untyped-def]
    """Loop-per-term, loop-per-parameter MTAdam (Malkiel & Wolf, Algorithm 1)."""
    beta1, beta2, beta3 = betas
    state: dict[int, dict[str, object]] = {}
    for step in range(1, steps + 1):
        losses = loss_fn()
        grads = [
            torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            for loss in losses
        ]
        with torch.no_grad():
            for k, p in enumerate(params):
                s = state.setdefault(
                    k,
                    {
                        "m": [torch.zeros_like(p) for _ in losses],
                        "v": [torch.zeros_like(p) for _ in losses],
                        "n": [None] * len(losses),
                    },
                )
                denominators, moments = [], []
                for i in range(len(losses)):
                    g = grads[i][k] if grads[i][k] is not None else torch.zeros_like(p)
                    n = g.norm() if step == 1 else beta3 * s["n"][i] + (1 - beta3) * g.norm()  # type: ignore[index, operator]
                    s["n"][i] = n  # type: ignore[index]
                    if n > 1e-10:
                        for a in range(len(losses)):
                            anchor = s["n"][a]  # type: ignore[index]
                            if anchor is not None and anchor > 1e-10:
                                g = (1.0 if ranks is None else ranks[i]) * anchor * g / n
                                break
                    s["m"][i] = beta1 * s["m"][i] + (1 - beta1) * g  # type: ignore[index, operator]
                    s["v"][i] = beta2 * s["v"][i] + (1 - beta2) * g * g  # type: ignore[index, operator]
                    denominators.append(s["v"][i].sqrt() / (1 - beta2**step) ** 0.5 + eps)  # type: ignore[index, union-attr]
                    moments.append(s["m"][i])  # type: ignore[index]
                largest = torch.stack(denominators).amax(0)
                p -= lr / (1 - beta1**step) * sum(m / largest for m in moments)


@pytest.mark.parametrize("ranks", [None, [1.0, 0.5, 2.0]])
def test_matches_the_reference_algorithm(ranks: list[float] | None) -> None:
    x, y = regression_problem(3)
    ours, theirs = TwoLevelNet(3).double(), TwoLevelNet(3).double()

    def losses_of(model: TwoLevelNet) -> list[torch.Tensor]:
        _, losses = task_losses(model, x.double(), y.double())
        return [losses[0] * 100.0, losses[1], losses[2] * 0.01]  # very different scales

    optimizer = MTAdam(ours.parameters(), lr=1e-2)
    for _ in range(4):
        optimizer.step(losses_of(ours), ranks=ranks)
    reference_mtadam(list(theirs.parameters()), lambda: losses_of(theirs), 4, lr=1e-2, ranks=ranks)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_state_dict_round_trip_and_training() -> None:
    x, y = regression_problem(2, n=64)
    model = TwoLevelNet(2, hidden=16)
    optimizer = MTAdam(model.parameters(), lr=1e-2)

    def losses() -> list[torch.Tensor]:
        _, task = task_losses(model, x, y)
        return [task[0] * 1000.0, task[1]]

    first = [float(loss.detach()) for loss in losses()]
    for _ in range(100):
        optimizer.step(losses())
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, buffer)
    optimizer.step(losses())
    expected = [p.detach().clone() for p in model.parameters()]
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model.load_state_dict(saved["model"])
    restored = MTAdam(model.parameters(), lr=1e-2)
    restored.load_state_dict(saved["optim"])
    restored.step(losses())
    for p, e in zip(model.parameters(), expected, strict=True):
        assert torch.equal(p, e)
    final = [float(loss.detach()) for loss in losses()]
    assert final[0] < 0.3 * first[0]
    assert final[1] < 0.3 * first[1]


def test_validation() -> None:
    model = TwoLevelNet(2)
    with pytest.raises(ValueError, match="betas"):
        MTAdam(model.parameters(), betas=(0.9, 0.999))  # type: ignore[arg-type]
    optimizer = MTAdam(model.parameters())
    x, y = regression_problem(2)
    _, losses = task_losses(model, x, y)
    with pytest.raises(ValueError, match="ranks"):
        optimizer.step(losses, ranks=[1.0])
    optimizer.step(losses)
    _, losses = task_losses(model, x, y)
    with pytest.raises(ValueError, match="must stay the same"):
        optimizer.step(losses[:1])


@pytest.mark.parametrize(
    "bad",
    [
        {"lr": float("nan")},
        {"lr": -1.0},
        {"eps": float("nan")},
        {"weight_decay": float("inf")},
        {"betas": (0.9, float("nan"), 0.9)},
    ],
)
def test_non_finite_or_negative_hyperparameters_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        MTAdam(TwoLevelNet(2).parameters(), **bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("ranks", [[1.0, float("nan")], [1.0, -1.0], [float("inf"), 1.0]])
def test_ranks_that_are_not_finite_and_non_negative_are_refused(ranks: list[float]) -> None:
    model = TwoLevelNet(2)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = regression_problem(2)
    _, losses = task_losses(model, x, y)
    with pytest.raises(ValueError, match="ranks must be finite"):
        MTAdam(model.parameters()).step(losses, ranks=ranks)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize("broken", ["nan loss", "inf gradient"])
def test_a_non_finite_step_is_skipped_without_touching_parameters_or_state(
    broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    x, y = regression_problem(2)
    model = TwoLevelNet(2)
    optimizer = MTAdam(model.parameters(), lr=1e-2)
    _, losses = task_losses(model, x, y)
    optimizer.step(losses)  # one good step, so that there is state to keep
    params = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(optimizer.state_dict())
    _, losses = task_losses(model, x, y)
    if broken == "nan loss":
        losses = [losses[0], losses[1] * float("nan")]
    else:
        losses = [losses[0], overflowing_gradient(losses[1])]
    with caplog.at_level(logging.WARNING, logger="taskbalance.optim.mtadam"):
        optimizer.step(losses)
    assert optimizer.skipped_steps == 1
    assert "MTAdam step skipped" in caplog.text
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), params, strict=True))
    after = optimizer.state_dict()["state"]
    for key, entry in state["state"].items():
        for name, value in entry.items():
            assert torch.equal(after[key][name], value), name
    restored = MTAdam(model.parameters(), lr=1e-2)
    restored.load_state_dict(optimizer.state_dict())
    assert restored.skipped_steps == 1  # a resumed run keeps counting
    with pytest.raises(ValueError, match="skipped_steps"):
        restored.load_state_dict({**optimizer.state_dict(), "skipped_steps": -1})
    _, losses = task_losses(model, x, y)
    optimizer.step(losses)  # and training goes on
    assert all(bool(p.isfinite().all()) for p in model.parameters())
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), params, strict=True))
