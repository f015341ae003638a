"""Stateful and non-linear loss-weighting methods against their formulas."""

import math
import warnings

import pytest
import torch

from taskbalance import aggregate, methods
from taskbalance.methods.base import Context


def ctx(losses: list[float], metrics: list[float] | None = None) -> Context:
    return Context(
        num_tasks=len(losses),
        losses=torch.tensor(losses, dtype=torch.float64),
        metrics=None if metrics is None else torch.tensor(metrics, dtype=torch.float64),
    )


def weights_of(method: methods.Method, context: Context) -> torch.Tensor:
    result = method(context).weights
    assert result is not None
    return result


def test_uw_weights_and_first_adam_step() -> None:
    method = methods.create("uw", lr=0.1)
    torch.testing.assert_close(
        weights_of(method, ctx([3.0, 0.2])), torch.full((2,), 0.5, dtype=torch.float64)
    )
    # dObj/ds = 0.5 (1 - exp(-s) L) = [-1, 0.4]; Adam's first step moves s by -lr * sign(grad)
    expected = 0.5 * torch.exp(-torch.tensor([0.1, -0.1], dtype=torch.float64))
    torch.testing.assert_close(weights_of(method, ctx([3.0, 0.2])), expected)


@pytest.mark.parametrize(("name", "fixed_point"), [("uw", 0.5), ("imtl_l", 1.0)])
def test_learned_scales_converge_to_their_fixed_point(name: str, fixed_point: float) -> None:
    method = methods.create(name, lr=0.05)
    losses = [5.0, 0.3, 1.0]
    for _ in range(3000):
        w = weights_of(method, ctx(losses))
    # UW: 0.5 exp(-s) L -> 0.5 at s = log L; IMTL-L: exp(s) L -> 1
    torch.testing.assert_close(
        w * torch.tensor(losses, dtype=torch.float64),
        torch.full((3,), fixed_point, dtype=torch.float64),
        atol=1e-3,
        rtol=1e-3,
    )


@pytest.mark.parametrize("name", ["uw", "imtl_l"])
def test_learned_scales_warn_once_that_a_negative_loss_has_no_optimal_scale(name: str) -> None:
    """``0.5 (e^-s L + s)`` and ``e^s L - s`` are unbounded below in ``s`` for ``L < 0``: the
    negative task's weight keeps growing (here over 2000 steps) while that of the task with
    ``L = 1`` stays at its optimum (``s = 0``), so a negative loss is reported, once."""
    method = methods.create(name, lr=0.01)
    with pytest.warns(UserWarning, match=r"task\(s\) \[0\] is negative.*grows without bound"):
        first = weights_of(method, ctx([-2.0, 1.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once per instance
        for _ in range(2000):
            last = weights_of(method, ctx([-2.0, 1.0]))
    assert torch.isfinite(last).all()
    assert float(last[0] / first[0]) > 1e5
    assert float(last[1] / first[1]) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("name", ["dwa", "db_mtl", "gradnorm", "moco", "loss_ratio", "gls"])
def test_methods_whose_formula_needs_the_losses_sign_refuse_negative_losses(name: str) -> None:
    """Logs and ratios of losses (DB-MTL's log L, GradNorm's and DWA's L(t)/L(0), MoCo's
    L_i g_i / |g_i|) read a negative loss backwards: refused with the alternatives."""
    J = torch.tensor([[1.0, 0.0], [0.5, 1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"needs non-negative losses.*'ew', 'rlw', 'stch'"):
        aggregate(name, J, losses=[0.5, -0.25])


@pytest.mark.parametrize("name", ["db_mtl", "moco", "dwa"])
def test_a_balancing_step_refuses_negative_losses_before_writing_grad(name: str) -> None:
    """In a step the sign is read from the losses' host copy (Jacobian methods run on the
    device: no extra read); the refusal comes before anything reaches ``.grad``."""
    from torch import nn

    from taskbalance import Balancer

    torch.manual_seed(0)
    trunk, heads = nn.Linear(4, 3), nn.ModuleList(nn.Linear(3, 1) for _ in range(2))
    balancer = Balancer(name, trunk.parameters(), task_params=heads.parameters())
    z = trunk(torch.randn(5, 4))
    losses = [heads[0](z).pow(2).mean(), heads[1](z).pow(2).mean() - 10.0]
    with pytest.raises(ValueError, match="needs non-negative losses"):
        balancer.backward(losses)
    assert all(p.grad is None for p in trunk.parameters())


def test_famo_refuses_losses_below_their_minimum() -> None:
    """FAMO balances ``log(L_i - L*_i)``: a loss below ``L*`` (default 0) is refused rather
    than clamped to a gap of 1e-8 (weight ~1e8); with a lower bound given it is used."""
    J = torch.eye(2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"task\(s\) \[1\] is below its minimum L\*"):
        aggregate(methods.create("famo"), J, losses=[0.5, -0.25])
    bounded = methods.create("famo", min_losses=[0.0, -1.0])
    torch.testing.assert_close(
        aggregate(bounded, J, losses=[0.5, -0.25]),
        torch.tensor([1 / 0.5, 1 / 0.75], dtype=torch.float64) / (1 / 0.5 + 1 / 0.75),
    )


def test_rlw_is_a_seeded_softmax_of_gaussians() -> None:
    method = methods.create("rlw", seed=7)
    draw = torch.randn(4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    w = weights_of(method, ctx([1.0] * 4))
    torch.testing.assert_close(w, torch.softmax(draw, dim=0))
    assert float(w.sum()) == pytest.approx(1.0)
    state = method.state_dict()
    following = weights_of(method, ctx([1.0] * 4))
    restored = methods.create("rlw", seed=7)
    restored.load_state_dict(state)
    assert torch.equal(weights_of(restored, ctx([1.0] * 4)), following)


def test_gls_weights_are_the_gradient_of_the_geometric_mean() -> None:
    # L = [1, 4]: (L1 L2)^(1/2) = 2, w_i = 2 / (2 L_i) = [1, 0.25]
    torch.testing.assert_close(
        weights_of(methods.create("gls"), ctx([1.0, 4.0])),
        torch.tensor([1.0, 0.25], dtype=torch.float64),
    )
    theta = torch.tensor([1.0, 2.0, 0.5], requires_grad=True)
    losses = torch.stack([theta[0] ** 2, theta[1] ** 2 + 1, (theta[2] - 3) ** 2])
    (reference,) = torch.autograd.grad(losses.prod() ** (1 / 3), theta, retain_graph=True)
    J = torch.stack([torch.autograd.grad(loss, theta, retain_graph=True)[0] for loss in losses])
    torch.testing.assert_close(aggregate("gls", J, losses=losses.detach()), reference)


def test_gls_does_not_underflow_with_many_tasks() -> None:
    losses = [1e-10] * 40
    assert math.prod(losses) == 0.0  # the naive product underflows
    w = weights_of(methods.create("gls"), ctx(losses))
    torch.testing.assert_close(w, torch.full((40,), 1 / 40, dtype=torch.float64))


def test_dwa_follows_the_loss_ratio_softmax() -> None:
    method = methods.create("dwa", period_steps=2)
    for _ in range(2):
        assert weights_of(method, ctx([4.0, 2.0])).tolist() == [1.0, 1.0]
    for _ in range(2):
        assert weights_of(method, ctx([2.0, 1.5])).tolist() == [1.0, 1.0]
    ratios = torch.tensor([2.0 / 4.0, 1.5 / 2.0], dtype=torch.float64)
    expected = 2 * torch.softmax(ratios / 2.0, dim=0)
    torch.testing.assert_close(weights_of(method, ctx([9.0, 9.0])), expected)
    assert float(expected[1]) > float(expected[0])  # the slower task gets more weight


def test_dwa_epoch_mode_uses_epoch_means() -> None:
    method = methods.create("dwa")
    for losses in ([4.0, 2.0], [2.0, 2.0]):
        weights_of(method, ctx(losses))
    method.end_epoch()  # epoch 1 mean: [3, 2]
    weights_of(method, ctx([1.0, 2.0]))
    method.end_epoch()  # epoch 2 mean: [1, 2]
    ratios = torch.tensor([1 / 3, 1.0], dtype=torch.float64)
    torch.testing.assert_close(
        weights_of(method, ctx([1.0, 1.0])), 2 * torch.softmax(ratios / 2, dim=0)
    )


def test_stch_weights_are_the_softmax_gradient() -> None:
    w = weights_of(methods.create("stch", mu=1.0), ctx([1.0, 2.0]))
    e = math.exp(1.0)
    torch.testing.assert_close(w, torch.tensor([1 / (1 + e), e / (1 + e)], dtype=torch.float64))
    sharp = weights_of(methods.create("stch", mu=1e-3), ctx([1.0, 2.0]))
    torch.testing.assert_close(sharp, torch.tensor([0.0, 1.0], dtype=torch.float64))
    negative = weights_of(methods.create("stch", mu=0.01), ctx([-1e6, -3.0]))
    assert torch.isfinite(negative).all()
    ref = weights_of(
        methods.create("stch", preference=[2.0, 1.0], reference=[1.0, 0.0]), ctx([1.5, 1.0])
    )
    # lambda (L - z) = [1, 1] -> softmax [0.5, 0.5] -> w = [1, 0.5]
    torch.testing.assert_close(ref, torch.tensor([1.0, 0.5], dtype=torch.float64))


def test_dtp_focal_weights_from_smoothed_kpis() -> None:
    method = methods.create("dtp", gamma=2.0, momentum=0.5)
    assert weights_of(method, ctx([1.0, 1.0])).tolist() == [1.0, 1.0]
    w = weights_of(method, ctx([1.0, 1.0], metrics=[0.5, 0.9]))
    kpi = torch.tensor([0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(w, -((1 - kpi) ** 2) * torch.log(kpi))
    w = weights_of(method, ctx([1.0, 1.0], metrics=[0.7, 0.9]))
    kpi = 0.5 * kpi + 0.5 * torch.tensor([0.7, 0.9], dtype=torch.float64)
    torch.testing.assert_close(w, -((1 - kpi) ** 2) * torch.log(kpi))
    assert torch.isfinite(weights_of(method, ctx([1.0, 1.0], metrics=[0.0, 1.0]))).all()
    with pytest.raises(ValueError, match="KPI"):
        weights_of(method, ctx([1.0, 1.0], metrics=[0.5, 2.0]))


def test_famo_weights_and_logit_update() -> None:
    method = methods.create("famo")
    # z uniform: w_i proportional to 1 / L_i, summing to 1
    torch.testing.assert_close(
        weights_of(method, ctx([1.0, 3.0])), torch.tensor([0.75, 0.25], dtype=torch.float64)
    )
    # task 0 improved (1 -> 0.5), task 1 did not (3 -> 3): delta = [log 2, 0]
    method.update(torch.tensor([0.5, 3.0]))  # type: ignore[attr-defined]
    # grad_xi = z * (delta - z.delta) = [+, -] -> Adam's first step: xi = [-lr, +lr]
    # (minus a tiny weight-decay term, zero at xi = 0): the lagging task gains weight
    xi = torch.tensor([-0.025, 0.025], dtype=torch.float64)
    z = torch.softmax(xi, dim=0)
    gap = torch.tensor([1.0, 1.0], dtype=torch.float64) + 1e-8
    torch.testing.assert_close(weights_of(method, ctx([1.0, 1.0])), (z / gap) / (z / gap).sum())


def test_famo_uses_the_next_losses_when_update_is_not_called() -> None:
    explicit, implicit = methods.create("famo"), methods.create("famo")
    sequence = [[1.0, 3.0], [0.5, 3.0], [0.4, 2.0], [0.41, 1.0]]
    weights_of(explicit, ctx(sequence[0]))
    weights_of(implicit, ctx(sequence[0]))
    for losses in sequence[1:]:
        explicit.update(torch.tensor(losses))  # type: ignore[attr-defined]
        torch.testing.assert_close(
            weights_of(implicit, ctx(losses)), weights_of(explicit, ctx(losses))
        )
    with pytest.raises(RuntimeError, match="must follow"):
        methods.create("famo").update([1.0, 2.0])  # type: ignore[attr-defined]


def test_stateful_weighting_methods_reject_a_changing_number_of_tasks() -> None:
    for name in ["uw", "imtl_l", "dwa", "famo", "dtp"]:
        method = methods.create(name)
        weights_of(method, ctx([1.0, 2.0], metrics=[0.5, 0.5]))
        with pytest.raises(ValueError, match="reset"):
            weights_of(method, ctx([1.0, 2.0, 3.0], metrics=[0.5, 0.5, 0.5]))
        method.reset()
        assert weights_of(method, ctx([1.0, 2.0, 3.0], metrics=[0.5, 0.5, 0.5])).shape == (3,)


def official_stch_weights(
    losses: torch.Tensor, nadir: torch.Tensor | None, mu: float
) -> torch.Tensor:
    """d/dL of the official STCH-MTL objective (its LibMTL ``STCH.backward``), by autograd:
    ``sum_i log L_i`` during the warm-up, ``T mu log sum_i exp((log(L_i / n_i) - m) / mu)``
    after it (``m``: the detached maximum term)."""
    L = losses.clone().requires_grad_(True)
    if nadir is None:
        objective = torch.log(L + 1e-20).sum()
    else:
        terms = torch.log(L / nadir + 1e-20)
        shifted = terms - terms.detach().max()
        objective = mu * torch.log(torch.exp(shifted / mu).sum()) * L.numel()
    (gradient,) = torch.autograd.grad(objective, L)
    return gradient


def test_stch_warmup_follows_the_official_schedule_by_steps() -> None:
    method = methods.create("stch", mu=0.7, normalise=True, warmup=1, period_steps=2)
    generator = torch.Generator().manual_seed(0)
    steps = [torch.rand(3, generator=generator, dtype=torch.float64) * 5 + 0.1 for _ in range(7)]
    nadir = (steps[2] + steps[3]) / 2  # period 1 (steps 3-4) records the nadir
    for step, losses in enumerate(steps):
        expected = official_stch_weights(losses, nadir if step >= 4 else None, 0.7)
        torch.testing.assert_close(weights_of(method, ctx(losses.tolist())), expected)
    assert method.initial_losses is not None  # type: ignore[attr-defined]
    torch.testing.assert_close(method.initial_losses, nadir)  # type: ignore[attr-defined]


def test_stch_warmup_by_epochs_resumes_mid_warmup_and_loads_an_old_checkpoint() -> None:
    method = methods.create("stch", normalise=True, warmup=0)
    weights_of(method, ctx([4.0, 1.0]))
    resumed = methods.create("stch", normalise=True, warmup=0)
    resumed.load_state_dict(method.state_dict())  # mid-way through the recording epoch
    for m in (method, resumed):
        weights_of(m, ctx([2.0, 3.0]))
        m.end_epoch()
    for m in (method, resumed):
        torch.testing.assert_close(
            m.initial_losses,  # type: ignore[attr-defined]
            torch.tensor([3.0, 2.0], dtype=torch.float64),
        )
        expected = official_stch_weights(
            torch.tensor([1.0, 1.0], dtype=torch.float64),
            torch.tensor([3.0, 2.0], dtype=torch.float64),
            1.0,
        )
        torch.testing.assert_close(weights_of(m, ctx([1.0, 1.0])), expected)
    # a checkpoint holding the nadir only (written before the warm-up existed)
    old = methods.create("stch", normalise=True)
    old.load_state_dict({"initial_losses": torch.tensor([2.0, 4.0], dtype=torch.float64)})
    torch.testing.assert_close(
        weights_of(old, ctx([2.0, 4.0])), torch.tensor([0.5, 0.25], dtype=torch.float64)
    )


def test_stch_epoch_without_steps_does_not_end_the_recording() -> None:
    method = methods.create("stch", normalise=True, warmup=1)
    method.end_epoch()  # warm-up epoch 0 (no steps)
    method.end_epoch()  # recording epoch, no steps: the next one records instead
    weights_of(method, ctx([2.0, 8.0]))
    method.end_epoch()
    torch.testing.assert_close(
        method.initial_losses,  # type: ignore[attr-defined]
        torch.tensor([2.0, 8.0], dtype=torch.float64),
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warmup": 4}, "pass normalise=True"),
        ({"normalise": True, "period_steps": 3}, "pass warmup=W"),
        ({"normalise": True, "warmup": -1}, "non-negative int"),
        ({"normalise": True, "warmup": True}, "non-negative int"),
        ({"normalise": True, "warmup": 2, "period_steps": 0}, "positive int"),
    ],
)
def test_stch_warmup_arguments_are_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        methods.create("stch", **kwargs)


def test_stch_normalised_terms_are_scale_free() -> None:
    method = methods.create("stch", mu=0.5, normalise=True)
    first = weights_of(method, ctx([30.0, 2.0]))
    # at the first step every term is log(1) = 0: softmax uniform, w_i = T * 0.5 / L_i
    torch.testing.assert_close(first, torch.tensor([1 / 30, 1 / 2], dtype=torch.float64))
    # the task whose loss fell less (relative to its start) gets the larger share
    w = weights_of(method, ctx([15.0, 1.8]))
    terms = torch.log(torch.tensor([0.5, 0.9], dtype=torch.float64))
    soft = torch.softmax(terms / 0.5, dim=0)
    torch.testing.assert_close(w, 2 * soft / torch.tensor([15.0, 1.8], dtype=torch.float64))
    assert float(soft[1]) > float(soft[0])
