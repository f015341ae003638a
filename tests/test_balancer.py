"""Balancer: gradients written to every parameter, conventions, skipping, validation, state."""

import logging
import warnings
from typing import ClassVar

import pytest
import torch
from torch import nn

from helpers import TwoLevelNet, regression_problem, task_losses
from taskbalance import Balancer, aggregate, methods
from taskbalance.engine.needs import Need
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.solvers import min_norm_simplex
from taskbalance.transforms import ClipPerTaskNorm


def grads_of(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def reference_weighted_backward(weights: list[float], seed: int = 0) -> list[torch.Tensor]:
    model = TwoLevelNet(len(weights), seed=seed)
    x, y = regression_problem(len(weights))
    _, losses = task_losses(model, x, y)
    sum(w * loss for w, loss in zip(weights, losses, strict=True)).backward()  # type: ignore[union-attr]
    return grads_of(list(model.parameters()))


@pytest.mark.parametrize("level", ["parameters", "representation"])
def test_weights_give_the_same_gradients_as_a_weighted_backward(level: str) -> None:
    weights = [0.5, 2.0, 1.5]
    model = TwoLevelNet(3)
    x, y = regression_problem(3)
    z, losses = task_losses(model, x, y)
    per_task_clip_free = methods.create("fixed", weights=weights)
    # a transform that needs the Gram matrix forces the per-task path at this level
    from taskbalance.transforms import ClipPerTaskNorm

    balancer = Balancer(
        per_task_clip_free, model.trunk.parameters(), level=level, transforms=[ClipPerTaskNorm(1e9)]
    )  # type: ignore[arg-type]
    info = balancer.backward(losses, representation=z)
    for got, expected in zip(
        grads_of(list(model.parameters())), reference_weighted_backward(weights), strict=True
    ):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert info.weights is not None
    assert info.weights.tolist() == weights
    assert info.task_grad_norms is not None
    assert info.cosines is not None


def test_heads_get_their_own_loss_gradient_scaled_by_the_task_weight() -> None:
    model = TwoLevelNet(2)
    x, y = regression_problem(2)
    _, losses = task_losses(model, x, y)
    head_grad = torch.autograd.grad(losses[1], list(model.heads[1].parameters()), retain_graph=True)
    shared = list(model.trunk.parameters())
    J = torch.stack(
        [
            torch.cat([g.flatten() for g in torch.autograd.grad(loss, shared, retain_graph=True)])
            for loss in losses
        ]
    )
    info = Balancer("mgda", shared).backward(losses)
    w = min_norm_simplex(J.double() @ J.double().T)
    assert info.weights is not None
    torch.testing.assert_close(info.weights, w, atol=1e-6, rtol=1e-6)
    for p, g in zip(model.heads[1].parameters(), head_grad, strict=True):
        torch.testing.assert_close(p.grad, float(w[1]) * g)
    written = torch.cat([p.grad.flatten() for p in shared])  # type: ignore[union-attr]
    torch.testing.assert_close(written, J.T @ w.float(), atol=1e-6, rtol=1e-5)


class FirstTaskDirection(Method):
    """Test double: returns task 0's gradient as the direction."""

    name = "first_task_direction"
    family = "gradient manipulation"
    needs = Need.JACOBIAN
    reference = "test"
    state_attributes: ClassVar[tuple[str, ...]] = ()

    def combine(self, ctx: Context) -> Combination:
        return Combination(direction=ctx.require_jacobian(self.name)[0])


@pytest.mark.parametrize("level", ["parameters", "representation"])
def test_directions_reach_the_trunk_and_heads_get_unweighted_gradients(level: str) -> None:
    model = TwoLevelNet(2)
    x, y = regression_problem(2)
    z, losses = task_losses(model, x, y)
    trunk = list(model.trunk.parameters())
    expected_trunk = torch.autograd.grad(losses[0], trunk, retain_graph=True)
    expected_head = torch.autograd.grad(
        losses[1], list(model.heads[1].parameters()), retain_graph=True
    )
    info = Balancer(FirstTaskDirection(), trunk, level=level).backward(losses, representation=z)  # type: ignore[arg-type]
    assert info.weights is None
    for p, g in zip(trunk, expected_trunk, strict=True):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)
    for p, g in zip(model.heads[1].parameters(), expected_head, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_non_finite_loss_skips_the_step_and_leaves_parameters_untouched(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = TwoLevelNet(2)
    x, y = regression_problem(2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    balancer = Balancer("pcgrad", model.trunk.parameters())
    _, losses = task_losses(model, x, y)
    balancer.backward(losses)
    optimizer.step()  # Adam now has momentum: a zero gradient would still move parameters
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    _, losses = task_losses(model, x, y)
    with caplog.at_level(logging.WARNING, logger="taskbalance"):
        info = balancer.backward({"task0": losses[0] * float("nan"), "task1": losses[1]})
    optimizer.step()
    assert info.skipped
    assert info.reason is not None
    assert "task0" in info.reason
    assert any("skipped" in r.message for r in caplog.records)
    assert all(p.grad is None for p in model.parameters())
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)
    assert balancer.step == 1


def test_non_finite_gradient_skips_the_step() -> None:
    w = torch.zeros(3, requires_grad=True)
    head = torch.ones(1, requires_grad=True)
    losses = [w.sqrt().sum() * head.sum(), (w**2).sum()]  # d sqrt(x)/dx at 0 is inf
    info = Balancer("ew", [w]).backward(losses)
    assert info.skipped
    assert info.reason is not None
    assert info.reason.startswith("non-finite")
    assert "shared.0" in info.reason
    assert w.grad is None
    assert head.grad is None


def test_gradients_accumulate_like_backward() -> None:
    model = TwoLevelNet(2)
    x, y = regression_problem(2)
    balancer = Balancer("ew", model.trunk.parameters())
    for _ in range(2):
        _, losses = task_losses(model, x, y)
        balancer.backward(losses)
    reference = reference_weighted_backward([2.0, 2.0])
    for got, expected in zip(grads_of(list(model.parameters())), reference, strict=True):
        torch.testing.assert_close(got, expected)


def test_explicit_task_params_match_discovery() -> None:
    model = TwoLevelNet(2)
    x, y = regression_problem(2)
    _, losses = task_losses(model, x, y)
    Balancer("mgda", model.trunk.parameters(), task_params=model.heads.parameters()).backward(
        losses
    )
    explicit = grads_of(list(model.parameters()))
    model2 = TwoLevelNet(2)
    _, losses = task_losses(model2, x, y)
    Balancer("mgda", model2.trunk.parameters()).backward(losses)
    for a, b in zip(explicit, grads_of(list(model2.parameters())), strict=True):
        torch.testing.assert_close(a, b)


def test_losses_as_dict_sequence_or_tensor() -> None:
    model = TwoLevelNet(2)
    x, y = regression_problem(2)
    balancer = Balancer("ew", model.trunk.parameters())
    _, losses = task_losses(model, x, y)
    info = balancer.backward({"b": losses[1], "a": losses[0]})
    assert info.task_names == ("b", "a")
    _, losses = task_losses(model, x, y)
    info = balancer.backward({"a": losses[0], "b": losses[1]})  # same tasks, any order
    assert info.task_names == ("b", "a")
    torch.testing.assert_close(info.losses, torch.stack(losses[::-1]).detach())
    assert set(info.as_dict()) >= {"loss/a", "weight/b", "grad_norm"}
    _, losses = task_losses(model, x, y)
    assert Balancer("ew", model.trunk.parameters()).backward(torch.stack(losses)).task_names == (
        "task0",
        "task1",
    )


def complex_problem() -> tuple[nn.Linear, torch.Tensor]:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ("complex modules are a new feature")
        layer = nn.Linear(4, 4).to(torch.cfloat)
    return layer, torch.randn(5, 4, dtype=torch.cfloat)


def complex_losses(layer: nn.Linear, x: torch.Tensor) -> list[torch.Tensor]:
    z = layer(x)
    return [z.abs().mean(), (z.real * z.imag).mean()]


@pytest.mark.parametrize("level", ["parameters", "representation"])
@pytest.mark.parametrize("method", ["mgda", "upgrad", "graddrop"])
def test_complex_task_gradients_are_refused_before_anything_is_written(
    method: str, level: str
) -> None:
    # the Gram matrix kept the real part of g_i^T g_j (not Re(g_i^H g_j)): MGDA stalled at a
    # point that is not stationary, UPGrad's update was off by ~20%
    layer, x = complex_problem()
    z = layer(x)
    losses = [z.abs().mean(), (z.real * z.imag).mean()]
    balancer = Balancer(method, layer.parameters(), level=level)  # type: ignore[arg-type]
    where = "representation 0" if level == "representation" else "shared.0, shared.1"
    with pytest.raises(ValueError, match=f"complex tensors are not supported \\({where}"):
        balancer.backward(losses, representation=z if level == "representation" else None)
    assert layer.weight.grad is None


def test_loss_weighting_of_complex_parameters_equals_the_plain_backward() -> None:
    layer, x = complex_problem()
    sum(complex_losses(layer, x)).backward()
    expected = [p.grad.clone() for p in layer.parameters()]  # type: ignore[union-attr]
    layer.zero_grad(set_to_none=True)
    Balancer("ew", layer.parameters()).backward(complex_losses(layer, x))
    for p, g in zip(layer.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_input_errors_say_what_to_do() -> None:
    model = TwoLevelNet(2)
    x, y = regression_problem(2)
    balancer = Balancer("ew", model.trunk.parameters())
    z, losses = task_losses(model, x, y)
    balancer.backward(losses)
    z, losses = task_losses(model, x, y)
    with pytest.raises(ValueError, match=r"tasks must\s+stay the same"):
        balancer.backward([*losses, losses[0]])
    with pytest.raises(TypeError, match="is a float"):
        Balancer("ew", model.trunk.parameters()).backward([1.0, losses[0]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="reduce it to a scalar"):
        Balancer("ew", model.trunk.parameters()).backward([z.sum(dim=1), losses[0]])
    with pytest.raises(ValueError, match="no_grad"):
        Balancer("ew", model.trunk.parameters()).backward([loss.detach() for loss in losses])
    # a complex loss was cast to its real part without a word
    with pytest.raises(TypeError, match="complex64 tensor; a loss must be a real"):
        Balancer("ew", model.trunk.parameters()).backward([losses[0], losses[1] * (1 + 1j)])
    with pytest.raises(TypeError, match="int64 tensor"):
        Balancer("ew", model.trunk.parameters()).backward([losses[0], torch.tensor(3)])
    with pytest.raises(ValueError, match="representation=z"):
        Balancer("mgda", model.trunk.parameters(), level="representation").backward(losses)
    with pytest.raises(ValueError, match="Did you mean 'representation'"):
        Balancer("ew", model.trunk.parameters(), level="representaton")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        Balancer("ew", [])
    with pytest.raises(ValueError, match="must be parameters"):
        Balancer("ew", [torch.ones(2, requires_grad=True) * 2])  # an activation, not a leaf
    frozen = torch.zeros(2)
    with pytest.raises(ValueError, match="every shared parameter is frozen"):
        Balancer("ew", [frozen]).backward([frozen.sum(), model.trunk[0].weight.sum()])
    with pytest.raises(ValueError, match="unknown method"):
        Balancer("mdga", model.trunk.parameters())
    with pytest.raises(TypeError, match="transforms"):
        Balancer("ew", model.trunk.parameters(), transforms=["clip"])  # type: ignore[list-item]


def test_state_dict_round_trip_gives_identical_next_steps() -> None:
    x, y = regression_problem(3)

    def run(steps: int, balancer: Balancer, model: TwoLevelNet) -> None:
        for _ in range(steps):
            model.zero_grad()
            _, losses = task_losses(model, x, y)
            balancer.backward(losses)

    model = TwoLevelNet(3)
    balancer = Balancer("pcgrad", model.trunk.parameters())
    run(3, balancer, model)
    state = balancer.state_dict()
    run(1, balancer, model)
    expected = grads_of(list(model.parameters()))
    restored = Balancer("pcgrad", model.trunk.parameters())
    restored.load_state_dict(state)
    assert restored.step == 3
    assert restored.task_names == ("task0", "task1", "task2")
    run(1, restored, model)
    for a, b in zip(grads_of(list(model.parameters())), expected, strict=True):
        assert torch.equal(a, b)


def test_transforms_and_monitor_are_checked_when_the_balancer_is_made() -> None:
    from taskbalance.transforms import ClipGlobalNorm

    model = TwoLevelNet(3)
    with pytest.raises(TypeError, match=r"a list of taskbalance transforms, got ClipGlobalNorm"):
        Balancer("ew", model.trunk.parameters(), transforms=ClipGlobalNorm(1.0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got int"):
        Balancer("ew", model.trunk.parameters(), transforms=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="HealthMonitor or None, got str"):
        Balancer("ew", model.trunk.parameters(), monitor="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"task_names": "ab"}, TypeError, "a list of strings"),  # was tasks 'a' and 'b'
        ({"task_names": ["a", "a", "b"]}, ValueError, r"distinct, got \['a'\]"),
        ({"update_every": True}, ValueError, "positive int"),
        ({"batched": "no"}, TypeError, "True or False"),  # "no" is truthy
    ],
)
def test_constructor_arguments_of_the_wrong_kind_are_refused(
    options: dict[str, object], error: type[Exception], message: str
) -> None:
    model = TwoLevelNet(3)
    with pytest.raises(error, match=message):
        Balancer("ew", model.trunk.parameters(), **options)  # type: ignore[arg-type]


def test_monitor_flags_must_be_booleans() -> None:
    from taskbalance.health import HealthMonitor

    with pytest.raises(TypeError, match="True or False"):
        HealthMonitor(task_gradients="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive int"):
        HealthMonitor(every=True)


def test_load_state_dict_says_what_a_balancer_state_is() -> None:
    """A method's own state (or anything else) given to the Balancer is refused by name."""
    model = TwoLevelNet(3)
    balancer = Balancer("uw", model.trunk.parameters())
    with pytest.raises(ValueError, match=r"not a Balancer state: missing \['method', 'step'"):
        balancer.load_state_dict(balancer.method.state_dict())


def test_update_every_reuses_the_last_weights_with_one_ordinary_backward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from test_engine import AutogradSpy

    model = TwoLevelNet(3)
    x, y = regression_problem(3)
    balancer = Balancer("mgda", model.trunk.parameters(), update_every=3)
    infos = []
    for step in range(5):
        model.zero_grad()
        _, losses = task_losses(model, x * (1 + step), y)
        spy = AutogradSpy(monkeypatch)
        infos.append(balancer.backward(losses))
        monkeypatch.undo()
        if step % 3 == 0:  # (the heads' own gradients first, then the batched backward)
            assert [c["batched"] for c in spy.calls] == [False, False, False, True]
            assert not infos[-1].reused_weights
        else:
            assert spy.calls == [{"batched": False, "numel": 3}]  # the stacked losses, w
            assert infos[-1].reused_weights
            assert infos[-1].task_grad_norms is None
            assert infos[-1].weights is not None
            assert infos[0].weights is not None
            assert torch.equal(infos[-1].weights, infos[3 * (step // 3)].weights)  # type: ignore[arg-type]
    # an in-between step writes exactly the gradient of sum_i w_i L_i
    weights = infos[4].weights.tolist()  # type: ignore[union-attr]
    model.zero_grad()
    _, losses = task_losses(model, x * 5, y)
    sum(w * loss for w, loss in zip(weights, losses, strict=True)).backward()  # type: ignore[union-attr]
    expected = grads_of(list(model.parameters()))
    state = balancer.state_dict()
    restored = Balancer("mgda", model.trunk.parameters(), update_every=3)
    restored.load_state_dict(state)
    model.zero_grad()
    _, losses = task_losses(model, x * 5, y)
    info = restored.backward(losses)
    assert info.reused_weights
    for got, want in zip(grads_of(list(model.parameters())), expected, strict=True):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="update_every"):
        Balancer("mgda", model.trunk.parameters(), update_every=0)


@pytest.mark.parametrize("name", ["db_mtl", "moco"])
def test_methods_tracking_gradient_coordinates_refuse_the_representation_level(name: str) -> None:
    with pytest.raises(ValueError, match="use level='parameters'"):
        Balancer(name, TwoLevelNet(2).trunk.parameters(), level="representation")


def test_steps_with_a_subset_of_the_tasks() -> None:
    model = TwoLevelNet(3)
    x, y = regression_problem(3)
    balancer = Balancer("mgda", model.trunk.parameters(), task_names=["a", "b", "c"])
    _, losses = task_losses(model, x, y)
    info = balancer.backward({"c": losses[2], "a": losses[0]})
    assert info.task_names == ("a", "c")
    assert info.weights is not None
    assert info.weights.shape == (2,)
    # the present tasks are balanced as if the absent one did not exist
    model2 = TwoLevelNet(3)
    _, losses2 = task_losses(model2, x, y)
    reference = Balancer("mgda", model2.trunk.parameters()).backward([losses2[0], losses2[2]])
    torch.testing.assert_close(info.weights, reference.weights)
    assert model.heads[1].weight.grad is None  # the absent task's head is untouched
    stateful = Balancer("uw", model.trunk.parameters(), task_names=["a", "b", "c"])
    _, losses = task_losses(model, x, y)
    with pytest.raises(ValueError, match=r"keeps\s+per-task state"):
        stateful.backward({"a": losses[0], "b": losses[1]})


@pytest.mark.parametrize("method", ["ew", "mgda", "pcgrad", "graddrop"])
@pytest.mark.parametrize("level", ["parameters", "representation"])
def test_loss_scaling_gives_the_unscaled_gradients(method: str, level: str) -> None:
    x, y = regression_problem(3)
    results = []
    for scale in (1.0, 1024.0):
        model = TwoLevelNet(3)
        z, losses = task_losses(model, x, y)
        transforms = [ClipPerTaskNorm(0.05)]  # norms must be the true, unscaled ones
        info = Balancer(
            method, model.trunk.parameters(), level=level, transforms=transforms
        ).backward(  # type: ignore[arg-type]
            losses, representation=z, loss_scale=scale
        )
        results.append((grads_of(list(model.parameters())), info))
    for a, b in zip(results[0][0], results[1][0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(results[0][1].losses, results[1][1].losses)
    overflow_model = TwoLevelNet(3)
    _, losses = task_losses(overflow_model, x, y)
    info = Balancer(method, overflow_model.trunk.parameters()).backward(losses, loss_scale=1e39)
    assert info.skipped  # overflow: nothing written, the caller lowers the scale
    assert all(p.grad is None for p in overflow_model.parameters())


def test_a_head_passed_as_shared_is_named_once(caplog: pytest.LogCaptureFixture) -> None:
    # Balancer("mgda", model.parameters()) balanced each head as a shared parameter: its
    # weights differ from the trunk-only answer (LibMTL's and TorchJD's) without a word
    torch.manual_seed(0)
    trunk = nn.Linear(4, 8)
    heads = nn.ModuleDict({"a": nn.Linear(8, 1), "b": nn.Linear(8, 1)})
    everything = nn.ModuleDict({"trunk": trunk, "heads": heads})
    x, y = torch.randn(16, 4), torch.randn(2, 16)

    def losses() -> dict[str, torch.Tensor]:
        z = torch.tanh(trunk(x))
        return {t: ((heads[t](z).squeeze(-1) - y[i]) ** 2).mean() for i, t in enumerate("ab")}

    with caplog.at_level(logging.WARNING, logger="taskbalance.balancer"):
        balancer = Balancer("mgda", everything.named_parameters())
        for _ in range(2):
            balancer.backward(losses())
        Balancer("mgda", trunk.parameters()).backward(losses())
        Balancer("ew", everything.parameters()).backward(losses())  # (the same update)
    warnings = [r.getMessage() for r in caplog.records if "reach one task" in r.getMessage()]
    assert len(warnings) == 1
    assert "'heads.a.weight' (task 'a')" in warnings[0]
    assert "'heads.b.bias' (task 'b')" in warnings[0]
    assert "'trunk.weight'" not in warnings[0]


def masked_trunk_problem(num_tasks: int) -> tuple[nn.Sequential, nn.ModuleList, list[torch.Tensor]]:
    """A trunk whose first weight has a gradient hook freezing half its columns (a common
    way to train part of a layer), and the task losses of one batch."""
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8))
    heads = nn.ModuleList([nn.Linear(8, 1) for _ in range(num_tasks)])
    mask = torch.zeros(8, 4)
    mask[:, :2] = 1
    trunk[0].weight.register_hook(lambda g: g * mask)
    z = torch.tanh(trunk(torch.randn(16, 4)))
    return trunk, heads, [h(z).pow(2).mean() * (i + 1) for i, h in enumerate(heads)]


@pytest.mark.parametrize("engine", ["jacobian", "gramian"])
@pytest.mark.parametrize("method", ["mgda", "upgrad", "pcgrad"])
def test_gradient_hooks_on_shared_parameters_shape_every_task_gradient(
    method: str, engine: str
) -> None:
    # the Gram path's layer rules form J_p J_p^T without the gradient, so the hook was not
    # applied there: the weights came from the unmasked gradients (2-6% off the Jacobian path)
    trunk, _, losses = masked_trunk_problem(3)
    params = list(trunk.parameters())
    rows = [
        torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True)])
        for loss in losses
    ]
    expected = aggregate(method, torch.stack(rows).double())
    Balancer(method, params, engine=engine).backward(losses)  # type: ignore[arg-type]
    written = torch.cat([p.grad.flatten() for p in params])  # type: ignore[union-attr]
    torch.testing.assert_close(written.double(), expected, rtol=1e-5, atol=1e-7)
    assert float(params[0].grad[:, 2:].abs().max()) == 0.0  # type: ignore[index]


@pytest.mark.parametrize("method", ["ew", "mgda"])
def test_post_accumulate_grad_hooks_run_once_per_step_as_after_a_backward(method: str) -> None:
    # an optimizer step in backward (one optimizer per parameter, run by the hook) never ran:
    # the balancer writes .grad itself, and autograd runs these hooks only when it does
    trunk, heads, losses = masked_trunk_problem(2)
    params = [*trunk.parameters(), *heads.parameters()]
    before = [p.detach().clone() for p in params]
    seen: list[torch.Tensor] = []
    optimizers = {p: torch.optim.SGD([p], lr=0.1) for p in params}

    def step_in_backward(p: torch.Tensor) -> None:
        assert p.grad is not None
        seen.append(p.grad.clone())
        optimizers[p].step()
        optimizers[p].zero_grad()

    for p in params:
        p.register_post_accumulate_grad_hook(step_in_backward)
    Balancer(method, trunk.parameters()).backward(losses)
    assert len(seen) == len(params)
    moved = {id(p) for p, b in zip(params, before, strict=True) if not torch.equal(p, b)}
    assert moved == {id(p) for p in params}


@pytest.mark.parametrize("level", ["parameters", "representation"])
@pytest.mark.parametrize("method", ["ew", "mgda"])
def test_reentrant_activation_checkpointing_is_refused(method: str, level: str) -> None:
    # its segments hide the parameters inside from autograd.grad: with `ew` the trunk got no
    # gradient at all, without a word (a gradient method said no loss reached the trunk)
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
    heads = nn.ModuleList([nn.Linear(8, 1) for _ in range(2)])
    x = torch.randn(16, 4, requires_grad=True)

    def step(reentrant: bool) -> None:
        z = checkpoint(trunk, x, use_reentrant=reentrant)
        losses = [h(z).pow(2).mean() for h in heads]
        balancer = Balancer(method, trunk.parameters(), level=level)  # type: ignore[arg-type]
        balancer.backward(losses, representation=z if level == "representation" else None)

    with pytest.raises(ValueError, match="use_reentrant=False"):
        step(reentrant=True)
    assert trunk[0].weight.grad is None
    step(reentrant=False)  # non-reentrant checkpointing: the exact gradient (test_layer_rules)
    assert trunk[0].weight.grad is not None


@pytest.mark.parametrize("method", ["ew", "mgda", "nash_mtl", "db_mtl"])
def test_accumulation_adds_the_mean_of_the_micro_batch_updates(method: str) -> None:
    # dividing the losses by k (the trainer's and the Transformers integration's old way)
    # left Nash-MTL's update (scale-free) and DB-MTL's (log-loss gradients) at full length:
    # their accumulated step was 2-12x a single step's for k = 4
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
    heads = nn.ModuleList([nn.Linear(16, 1) for _ in range(3)])
    x, y = torch.randn(64, 6), torch.randn(64, 3)

    def losses(m: int) -> list[torch.Tensor]:
        z = trunk(x[m::4])
        return [((h(z).squeeze(-1) - y[m::4, i]) ** 2).mean() for i, h in enumerate(heads)]

    accumulated = Balancer(method, trunk.parameters())
    for m in range(4):
        accumulated.backward(losses(m), accumulation_steps=4)
    total = [p.grad.clone() for p in trunk.parameters()]  # type: ignore[union-attr]
    separate = Balancer(method, trunk.parameters())
    expected = [torch.zeros_like(p) for p in trunk.parameters()]
    for m in range(4):
        trunk.zero_grad(set_to_none=True)
        separate.backward(losses(m))
        for e, p in zip(expected, trunk.parameters(), strict=True):
            e += p.grad / 4  # type: ignore[operator]
    for got, want in zip(total, expected, strict=True):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="accumulation_steps must be a positive int"):
        accumulated.backward(losses(0), accumulation_steps=0)
