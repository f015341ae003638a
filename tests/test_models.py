"""Architectures: contract, gradient flow, training with several methods, paper details."""

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from taskbalance import Balancer
from taskbalance.models import (
    ESMM,
    PLE,
    Cascade,
    CrossStitch,
    HardSharing,
    MMoE,
    MultiTaskModel,
    SoftSharing,
)
from taskbalance.models.soft import nuclear_norm

TASKS = ("a", "b")


def mlp(inputs: int, outputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, 16), nn.Tanh(), nn.Linear(16, outputs))


class ConcatHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(9, 1)

    def forward(self, z: Tensor, previous: Tensor) -> Tensor:
        return self.linear(torch.cat([z, previous], dim=-1))


def build(kind: str, **options: object) -> MultiTaskModel:
    torch.manual_seed(0)
    if kind == "hard":
        return HardSharing(mlp(6, 8), {t: nn.Linear(8, 1) for t in TASKS})
    if kind == "soft":
        return SoftSharing({t: mlp(6, 1) for t in TASKS}, **options)  # type: ignore[arg-type]
    if kind == "cross_stitch":
        columns = {
            t: [
                nn.Sequential(nn.Linear(6, 8), nn.Tanh()),
                nn.Sequential(nn.Linear(8, 8), nn.Tanh()),
            ]
            for t in TASKS
        }
        return CrossStitch(columns, {t: nn.Linear(8, 1) for t in TASKS})
    if kind == "mmoe":
        experts = [nn.Sequential(nn.Linear(6, 8), nn.ReLU()) for _ in range(3)]
        return MMoE(experts, {t: nn.Linear(8, 1) for t in TASKS}, gate_features=6)
    if kind == "ple":
        return PLE(
            lambda f: nn.Sequential(nn.Linear(f, 8), nn.ReLU()),
            {t: nn.Linear(8, 1) for t in TASKS},
            6,
            8,
            levels=2,
        )
    if kind == "cascade":
        return Cascade(mlp(6, 8), [("a", nn.Linear(8, 1)), ("b", ConcatHead())], **options)  # type: ignore[arg-type]
    raise ValueError(kind)


KINDS = ["hard", "soft", "cross_stitch", "mmoe", "ple", "cascade"]


def data(seed: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 6, generator=generator)
    w = torch.randn(6, 2, generator=generator)
    return x, {"a": torch.sin(x @ w[:, 0]), "b": torch.tanh(x @ w[:, 1]) + 0.3 * (x @ w[:, 0])}


def losses_of(
    model: MultiTaskModel, x: Tensor, y: dict[str, Tensor], coupling_as_task: bool = True
) -> dict[str, Tensor]:
    predictions = model(x)
    losses = {t: ((predictions[t].squeeze(-1) - y[t]) ** 2).mean() for t in TASKS}
    if isinstance(model, SoftSharing):
        if coupling_as_task:
            losses["coupling"] = model.regularisation()
        else:
            losses = {t: loss + model.regularisation() for t, loss in losses.items()}
    return losses


@pytest.mark.parametrize("kind", KINDS)
def test_contract_partitions_the_parameters(kind: str) -> None:
    model = build(kind)
    shared = {id(p) for p in model.shared_parameters()}
    per_task = [{id(p) for p in model.task_parameters(t)} for t in model.task_names]
    everything = {id(p) for p in model.parameters()}
    assert shared, "a model must expose the parameters the balancer acts on"
    assert not shared & set().union(*per_task)
    assert not per_task[0] & per_task[1]
    assert shared | set().union(*per_task) == everything
    assert {id(p) for p in model.task_parameters()} == set().union(*per_task)
    with pytest.raises(ValueError, match="unknown task 'c'"):
        list(model.task_parameters("c"))


@pytest.mark.parametrize("kind", KINDS)
def test_each_task_reaches_only_shared_and_its_own_parameters(kind: str) -> None:
    model = build(kind)
    x, y = data()
    losses = losses_of(model, x, y)
    params = list(model.parameters())
    shared = {id(p) for p in model.shared_parameters()}
    for index, task in enumerate(TASKS):
        grads = torch.autograd.grad(losses[task], params, retain_graph=True, allow_unused=True)
        reached = {
            id(p)
            for p, g in zip(params, grads, strict=True)
            if g is not None and bool(g.abs().sum() > 0)
        }
        allowed = shared | {id(p) for p in model.task_parameters(task)}
        if kind == "cascade":  # a later task also trains the earlier heads (not detached)
            allowed |= {id(p) for t in TASKS[:index] for p in model.task_parameters(t)}
        assert reached <= allowed, f"{kind}: task {task} reaches another task's parameters"
        own = {id(p) for p in model.task_parameters(task)}
        assert own <= reached, f"{kind}: task {task} does not train its own parameters"


CASES = [
    (kind, method, "parameters")
    for kind in KINDS
    for method in ["ew", "pcgrad", "mgda", "nash_mtl"]
] + [
    (kind, method, "representation")
    for kind in ["hard", "mmoe", "cascade"]
    for method in ["pcgrad", "mgda", "nash_mtl"]
]


@pytest.mark.parametrize(("kind", "method", "level"), CASES)
def test_architecture_trains_with_the_method(kind: str, method: str, level: str) -> None:
    model = build(kind)
    x, y = data()
    balancer = Balancer.for_model(method, model, level=level)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    # MGDA would give the tiny coupling term all the weight (min-norm point): add it to the
    # task losses instead, the other common way to use a soft-sharing regulariser
    as_task = method != "mgda"
    with torch.no_grad():
        initial = losses_of(model, x, y)
    for _ in range(120):
        optimizer.zero_grad()
        info = balancer.backward(losses_of(model, x, y, coupling_as_task=as_task))
        assert not info.skipped
        optimizer.step()
    for p in model.parameters():
        assert p.grad is not None, f"{kind}: a parameter got no gradient"
    with torch.no_grad():
        final = losses_of(model, x, y)
    for task in TASKS:
        assert float(final[task]) < 0.7 * float(initial[task]), f"{kind}/{method}/{level}/{task}"


@pytest.mark.parametrize("kind", ["soft", "cross_stitch", "ple"])
def test_models_without_a_shared_representation_say_so(kind: str) -> None:
    model = build(kind)
    with pytest.raises(ValueError, match="level='parameters'"):
        Balancer.for_model("mgda", model, level="representation")
    with pytest.raises(ValueError, match="level='parameters'"):
        _ = model.representation


def test_representation_level_balances_the_expert_outputs_of_mmoe() -> None:
    model = build("mmoe")
    x, y = data()
    losses = losses_of(model, x, y)
    z = model.representation
    assert z is not None
    assert z.shape == (128, 3, 8)
    rows = torch.stack(
        [torch.autograd.grad(losses[t], z, retain_graph=True)[0].flatten() for t in TASKS]
    )
    info = Balancer.for_model("mgda", model, level="representation").backward(losses)
    assert info.task_grad_norms is not None
    torch.testing.assert_close(info.task_grad_norms.float(), rows.norm(dim=1), rtol=1e-5, atol=1e-8)


def test_cross_stitch_units_start_near_identity() -> None:
    model = build("cross_stitch")
    assert isinstance(model, CrossStitch)
    alpha = model.stitches[0].alpha.detach()
    torch.testing.assert_close(alpha, torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    three = CrossStitch({t: [nn.Identity(), nn.Identity()] for t in "xyz"})
    alpha3 = three.stitches[0].alpha.detach()
    torch.testing.assert_close(alpha3.sum(dim=1), torch.ones(3))
    torch.testing.assert_close(alpha3.diagonal(), torch.full((3,), 0.9 / 1.1))
    out = three(torch.ones(2, 4))
    torch.testing.assert_close(out["x"], torch.ones(2, 4))  # rows sum to 1: constants pass


REGULARISERS: dict[str, Callable[[Tensor], Tensor]] = {
    "l2_to_mean": lambda s: ((s - s.mean(0)) ** 2).sum(),
    "pairwise_l2": lambda s: sum(
        ((s[i] - s[j]) ** 2).sum() for i in range(len(s)) for j in range(i + 1, len(s))
    ),  # type: ignore[return-value]
    "trace_norm": lambda s: torch.linalg.svdvals(s).sum(),
}


@pytest.mark.parametrize("name", list(REGULARISERS))
def test_soft_sharing_regularisers_match_their_formulas(name: str) -> None:
    torch.manual_seed(0)
    columns = {t: nn.Linear(3, 2) for t in "xyz"}
    model = SoftSharing(columns, regulariser=name, strength=0.5)  # type: ignore[arg-type]
    expected = sum(
        REGULARISERS[name](
            torch.stack(
                [dict(c.named_parameters())[p].detach().flatten() for c in columns.values()]
            )
        )
        for p in ["weight", "bias"]
    )
    torch.testing.assert_close(model.regularisation().detach(), 0.5 * expected)
    model.regularisation().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_trace_norm_gradient_is_the_true_gradient_where_the_stack_has_full_rank() -> None:
    torch.manual_seed(0)
    stacked = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    (ours,) = torch.autograd.grad(nuclear_norm(stacked), stacked)
    (torchs,) = torch.autograd.grad(torch.linalg.matrix_norm(stacked, ord="nuc"), stacked)
    torch.testing.assert_close(ours, torchs, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(nuclear_norm, (stacked,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_trace_norm_gives_identical_columns_identical_gradients(dtype: torch.dtype) -> None:
    # columns initialised identically (a rank-1 stack 1 theta^T): the minimal-norm
    # subgradient is theta / (sqrt(T) |theta|) for every column; U V^T over all singular
    # vectors pushed each column in its own arbitrary direction
    torch.manual_seed(0)
    base = nn.Linear(3, 2).to(dtype)
    model = SoftSharing(
        {t: copy.deepcopy(base) for t in "xyz"}, regulariser="trace_norm", strength=1.0
    )
    model.regularisation().backward()
    for name, theta in base.named_parameters():
        expected = theta.detach() / (3**0.5 * theta.detach().norm())
        for column in model.columns.values():
            grad = dict(column.named_parameters())[name].grad
            assert grad is not None
            torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)


def test_trace_norm_of_zero_columns_has_zero_gradient() -> None:
    zero = torch.zeros(4, 5, requires_grad=True)
    (grad,) = torch.autograd.grad(nuclear_norm(zero), zero)
    assert torch.equal(grad, torch.zeros(4, 5))


def test_soft_sharing_validates_its_columns() -> None:
    with pytest.raises(ValueError, match="same names and"):
        SoftSharing({"a": nn.Linear(3, 2), "b": nn.Linear(3, 3)})
    with pytest.raises(ValueError, match="Did you mean 'trace_norm'"):
        SoftSharing({"a": nn.Linear(3, 2)}, regulariser="tracenorm")  # type: ignore[arg-type]


def test_soft_sharing_coupling_pulls_columns_together() -> None:
    model = build("soft", strength=1.0)
    x, y = data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    balancer = Balancer.for_model("ew", model)
    start = float(model.regularisation().detach())  # type: ignore[operator]
    for _ in range(100):
        optimizer.zero_grad()
        balancer.backward(losses_of(model, x, y))
        optimizer.step()
    assert float(model.regularisation().detach()) < start  # type: ignore[operator]


@pytest.mark.parametrize("detach", [True, False])
def test_cascade_passes_the_earlier_prediction(detach: bool) -> None:
    model = build("cascade", detach=detach)
    x, y = data()
    outputs = model(x)
    assert outputs["b"].shape == (128, 1)
    loss_b = ((outputs["b"].squeeze(-1) - y["b"]) ** 2).mean()
    grads = torch.autograd.grad(loss_b, list(model.task_parameters("a")), allow_unused=True)
    assert all(g is None for g in grads) == detach


def test_esmm_chains_probabilities_and_trains_cvr_through_ctcvr() -> None:
    torch.manual_seed(0)
    model = ESMM(mlp(6, 8), nn.Linear(8, 1), nn.Linear(8, 1))
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(512, 6, generator=generator)
    click = (x[:, 0] > 0).float()
    buy = click * (x[:, 1] > 0.5).float()
    out = model(x)
    torch.testing.assert_close(out["ctcvr"], out["ctr"] * out["cvr"])
    bce = nn.functional.binary_cross_entropy
    ctr_loss = bce(out["ctr"], click)
    assert all(
        g is None
        for g in torch.autograd.grad(
            ctr_loss, list(model.cvr_tower.parameters()), allow_unused=True, retain_graph=True
        )
    )
    balancer = Balancer.for_model("pcgrad", model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        out = model(x)
        balancer.backward({"ctr": bce(out["ctr"], click), "ctcvr": bce(out["ctcvr"], buy)})
        optimizer.step()
    with torch.no_grad():
        out = model(x)
    clicked = click > 0
    # CVR learnt on the entire space predicts conversion among clicks
    cvr_accuracy = ((out["cvr"][clicked] > 0.5).float() == buy[clicked]).float().mean()
    assert float(cvr_accuracy) > 0.85


def test_mmoe_gates_need_feature_vectors() -> None:
    experts = [nn.Sequential(nn.Flatten(), nn.Linear(16, 4)) for _ in range(2)]
    model = MMoE(experts, {"a": nn.Linear(4, 1)}, gate_features=16)
    with pytest.raises(ValueError, match="gate_input"):
        model(torch.randn(3, 1, 4, 4))
    model = MMoE(
        experts, {"a": nn.Linear(4, 1)}, gate_features=16, gate_input=lambda x: x.flatten(1)
    )
    assert model(torch.randn(3, 1, 4, 4))["a"].shape == (3, 1)


def test_model_hyperparameters_are_validated_when_the_model_is_made() -> None:
    with pytest.raises(ValueError, match="strength must be a finite"):
        SoftSharing({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)}, strength=float("inf"))
    with pytest.raises(ValueError, match="self_weight"):  # one block: no stitch unit to check it
        CrossStitch({"a": [nn.Linear(2, 2)], "b": [nn.Linear(2, 2)]}, self_weight=float("nan"))
    with pytest.raises(ValueError, match="gate_features"):
        MMoE([nn.Linear(2, 2)], {"a": nn.Linear(2, 1)}, gate_features=0)


def test_a_forward_without_autograd_keeps_the_training_forwards_representation() -> None:
    # a look at another batch under no_grad between the training forward and the backward
    # replaced the remembered representation with one outside any graph, and the balancer
    # refused the step ("representation must be a tensor attached to the graph")
    torch.manual_seed(0)
    model = HardSharing(nn.Linear(4, 8), {"a": nn.Linear(8, 1), "b": nn.Linear(8, 1)})
    x = torch.randn(16, 4)
    model(x)
    remembered = model.representation
    with torch.no_grad():
        model(torch.randn(4, 4))
    assert model.representation is remembered
    for level in ("parameters", "representation"):
        out = model(x)
        with torch.inference_mode():
            model(torch.randn(4, 4))
        balancer = Balancer.for_model("mgda", model, level=level)  # type: ignore[arg-type]
        assert not balancer.backward({t: out[t].pow(2).mean() for t in out}).skipped
