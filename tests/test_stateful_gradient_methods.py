"""GradVac, GradDrop, MoCo, DB-MTL, GradNorm, IMTL against their formulas."""

import pytest
import torch

from taskbalance import aggregate, methods
from taskbalance.methods.base import Context
from test_pcgrad import reference_pcgrad


def jacobian(seed: int, num_tasks: int = 3, dim: int = 6) -> torch.Tensor:
    return torch.randn(
        num_tasks, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def reference_gradvac(
    J: torch.Tensor, orders: torch.Tensor, targets: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Direct transcription of Wang et al.'s update on explicit vectors."""
    targets = targets.clone()
    out = []
    for i in range(J.shape[0]):
        g = J[i].clone()
        for j in orders[i].tolist():
            cos = float(g @ J[j] / (g.norm() * J[j].norm()))
            target = float(targets[i, j])
            if cos < target:
                w = (
                    g.norm()
                    * (target * (1 - cos**2) ** 0.5 - cos * (1 - target**2) ** 0.5)
                    / (J[j].norm() * (1 - target**2) ** 0.5)
                )
                g = g + w * J[j]
            targets[i, j] = (1 - beta) * target + beta * cos
        out.append(g)
    return torch.stack(out).sum(0), targets


def test_gradvac_first_step_is_pcgrad_and_later_steps_follow_the_targets() -> None:
    J = jacobian(0, 4, 5)
    method = methods.create("gradvac", beta=0.5, seed=3)
    probe = methods.create("gradvac", beta=0.5, seed=3)
    orders = probe._orders(4)  # type: ignore[attr-defined]
    d = aggregate(method, J)
    expected, targets = reference_gradvac(J, orders, torch.zeros(4, 4, dtype=torch.float64), 0.5)
    torch.testing.assert_close(d, expected)
    # with zero targets the update is PCGrad's (self excluded from the order)
    torch.testing.assert_close(d, reference_pcgrad(J, orders))
    torch.testing.assert_close(method.targets[0], targets)  # type: ignore[attr-defined]
    orders = probe._orders(4)  # type: ignore[attr-defined]
    J2 = jacobian(1, 4, 5)
    expected, _ = reference_gradvac(J2, orders, targets, 0.5)
    torch.testing.assert_close(aggregate(method, J2), expected)


def test_gradvac_layer_mode_vaccinates_each_block() -> None:
    J = jacobian(2, 3, 6)
    method = methods.create("gradvac", granularity="layer", seed=1)
    orders = methods.create("gradvac", seed=1)._orders(3)  # type: ignore[attr-defined]
    ctx = Context(
        num_tasks=3, jacobian=J, gramian=J @ J.T, block_shapes=(torch.Size([2]), torch.Size([4]))
    )
    d = method(ctx).direction
    first, _ = reference_gradvac(J[:, :2], orders, torch.zeros(3, 3, dtype=torch.float64), 0.5)
    second, _ = reference_gradvac(J[:, 2:], orders, torch.zeros(3, 3, dtype=torch.float64), 0.5)
    torch.testing.assert_close(d, torch.cat([first, second]))
    assert method.targets.shape == (2, 3, 3)  # type: ignore[attr-defined]


def test_graddrop_keeps_agreeing_signs_and_drops_by_purity() -> None:
    J = torch.tensor([[1.0, 2.0, -1.0], [3.0, -2.0, -4.0]], dtype=torch.float64)
    method = methods.create("graddrop", seed=5)
    uniform = torch.rand(3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    purity = 0.5 * (1 + J.sum(0) / (J.abs().sum(0) + 1e-7))
    keep = ((purity > uniform) & (J > 0)) | ((purity < uniform) & (J < 0))
    d = aggregate(method, J)
    torch.testing.assert_close(d, (keep * J).sum(0))
    # coordinates 0 and 2 have pure signs: always fully kept
    torch.testing.assert_close(d[[0, 2]], J[:, [0, 2]].sum(0))
    assert float(d[1]) in (2.0, -2.0)  # coordinate 1: exactly one task survives


def test_graddrop_at_representation_level_shares_the_mask_across_the_batch() -> None:
    batch, features = 4, 3
    J = torch.randn(
        2, batch * features, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    ctx = Context(
        num_tasks=2,
        jacobian=J,
        block_shapes=(torch.Size([batch, features]),),
        level="representation",
    )
    d = methods.create("graddrop", seed=2)(ctx).direction
    per_sample = J.reshape(2, batch, features)
    pooled = per_sample.sum(1)
    uniform = torch.rand(features, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    purity = 0.5 * (1 + pooled.sum(0) / (pooled.abs().sum(0) + 1e-7))
    keep = ((purity > uniform) & (pooled > 0)) | ((purity < uniform) & (pooled < 0))
    torch.testing.assert_close(d, (keep.unsqueeze(1) * per_sample).sum(0).reshape(-1))


def test_graddrop_reads_the_signs_through_the_activation_sign_at_representation_level() -> None:
    # Algorithm 1: G_i = sum_batch sign(A) o g_i. Batch of 2, one feature; A = [1, -1]:
    # G_1 = 1 - 1 = 0 and G_2 = -1 - 0.5 = -1.5, so the purity is 0 and whatever U is drawn
    # only task 2 (G_2 < 0) survives: the update is task 2's gradient exactly. Without
    # sign(A) the pooled gradients are 2 and -0.5, so the kept task depends on the draw.
    g = torch.tensor([[1.0, 1.0], [-1.0, 0.5]], dtype=torch.float64)
    A = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)

    def ctx(representation: tuple[torch.Tensor, ...] | None) -> Context:
        return Context(
            num_tasks=2,
            jacobian=g,
            block_shapes=(torch.Size([2, 1]),),
            level="representation",
            representation=representation,
        )

    for seed in range(20):
        d = methods.create("graddrop", seed=seed)(ctx((A,))).direction
        torch.testing.assert_close(d, g[1])
    outcomes = {
        tuple(methods.create("graddrop", seed=seed, input_sign=False)(ctx((A,))).direction.tolist())
        for seed in range(20)
    }
    assert outcomes == {(1.0, 1.0), (-1.0, 0.5)}  # purity 0.8: either task, by the draw


def test_graddrop_activation_sign_per_coordinate_when_the_batch_cannot_be_pooled() -> None:
    # a representation without a batch dimension: each coordinate is its own unit, with
    # G_i = sign(A) g_i. A = [1, -1, 0]: coordinate 0 has pure signs (kept: 1 + 2), coordinate
    # 1 has G = [-1, -0.5] (pure, kept: 1 + 0.5), coordinate 2 has G = 0 (nothing kept).
    g = torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.5, 2.0]], dtype=torch.float64)
    A = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)
    ctx = Context(
        num_tasks=2,
        jacobian=g,
        block_shapes=(torch.Size([3]),),
        level="representation",
        representation=(A,),
    )
    for seed in range(5):
        d = methods.create("graddrop", seed=seed)(ctx).direction
        torch.testing.assert_close(d, torch.tensor([3.0, 1.5, 0.0], dtype=torch.float64))
        d = methods.create("graddrop", seed=seed, input_sign=False)(ctx).direction
        torch.testing.assert_close(d, torch.tensor([3.0, 1.5, 3.0], dtype=torch.float64))
    d = methods.create("graddrop", leak=0.5, seed=0)(ctx).direction  # dropped at half weight
    torch.testing.assert_close(d, torch.tensor([3.0, 1.5, 1.5], dtype=torch.float64))


def test_graddrop_refuses_a_non_boolean_input_sign() -> None:
    with pytest.raises(TypeError, match="input_sign must be True or False"):
        methods.create("graddrop", input_sign=1)


@pytest.mark.parametrize("leak", [0.0, 0.3])
def test_graddrop_fast_sum_equals_the_papers_masked_sum(leak: float) -> None:
    generator = torch.Generator().manual_seed(7)
    J = torch.randn(5, 400, generator=generator, dtype=torch.float64)
    J[:, :40] = 0.0  # units with no gradient at all
    J[2, 40:80] = 0.0
    d = aggregate(methods.create("graddrop", leak=leak, seed=3), J)
    uniform = torch.rand(400, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    scaled = J / J.abs().max()
    purity = 0.5 * (1 + scaled.sum(0) / (scaled.abs().sum(0) + 1e-7))
    keep = ((purity > uniform) & (J > 0)) | ((purity < uniform) & (J < 0))
    mask = leak + (1 - leak) * keep.to(J.dtype)
    torch.testing.assert_close(d, (mask * J).sum(0))


def test_graddrop_leak_one_half() -> None:
    J = torch.tensor([[1.0], [-3.0]], dtype=torch.float64)
    d = aggregate(methods.create("graddrop", leak=0.5, seed=0), J)
    assert float(d) in (1.0 - 1.5, 0.5 - 3.0)


def test_moco_follows_libmtl_recursions() -> None:
    method = methods.create("moco")
    y = torch.zeros(3, 6, dtype=torch.float64)
    lam = torch.full((3,), 1 / 3, dtype=torch.float64)
    for step in range(1, 4):
        J = jacobian(step, 3, 6)
        losses = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64) * step
        ctx = Context(num_tasks=3, jacobian=J, losses=losses)
        d = method(ctx).direction
        g = J / (J.norm(dim=1, keepdim=True) + 1e-8) * losses.unsqueeze(1)
        y = y - 0.5 / step**0.5 * (y - g)
        lam = torch.softmax(lam - 0.1 / step**0.5 * (y @ y.T) @ lam, dim=0)
        torch.testing.assert_close(d, y.T @ lam)


def test_db_mtl_follows_its_formula() -> None:
    method = methods.create("db_mtl", beta=0.9)
    buffer = torch.zeros(2, 4, dtype=torch.float64)
    for step in range(1, 4):
        J = jacobian(step, 2, 4)
        losses = torch.tensor([0.5, 4.0], dtype=torch.float64)
        d = method(Context(num_tasks=2, jacobian=J, losses=losses)).direction
        log_grads = J / (losses.unsqueeze(1) + 1e-8)
        buffer = log_grads + 0.9 * (buffer - log_grads)
        norms = buffer.norm(dim=1)
        torch.testing.assert_close(d, (norms.max() / norms) @ buffer)
    # the balanced gradients all have the largest norm
    balanced = (norms.max() / norms).unsqueeze(1) * buffer
    torch.testing.assert_close(balanced.norm(dim=1), norms.max().expand(2))


def test_gradnorm_moves_weight_towards_the_slower_task() -> None:
    method = methods.create("gradnorm", alpha=1.5, lr=0.1)
    J = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    G = J @ J.T
    w0 = method(
        Context(num_tasks=2, gramian=G, losses=torch.tensor([1.0, 1.0], dtype=torch.float64))
    ).weights
    assert w0.tolist() == [1.0, 1.0]
    # task 0 trains fast (loss halves), task 1 stalls: r = [2/3, 4/3]
    for _ in range(20):
        w = method(
            Context(num_tasks=2, gramian=G, losses=torch.tensor([0.5, 1.0], dtype=torch.float64))
        ).weights
    assert w is not None
    assert float(w[1]) > 1.2 > float(w[0])
    assert float(w.sum()) == pytest.approx(2.0)


def test_gradnorm_balances_gradient_norms_at_equal_rates() -> None:
    method = methods.create("gradnorm", lr=0.05)
    J = torch.tensor([[4.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    ctx = Context(
        num_tasks=2, gramian=J @ J.T, losses=torch.tensor([1.0, 1.0], dtype=torch.float64)
    )
    for _ in range(300):
        w = method(ctx).weights
    assert w is not None
    # equal training rates: w_i |g_i| become equal -> w = [2/5, 8/5]
    torch.testing.assert_close(w, torch.tensor([0.4, 1.6], dtype=torch.float64), atol=0.05, rtol=0)


def test_imtl_composes_imtl_l_and_imtl_g() -> None:
    J = jacobian(4, 3, 5)
    losses = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    imtl, loss_half = methods.create("imtl", lr=0.1), methods.create("imtl_l", lr=0.1)
    for _ in range(3):
        ctx = Context(num_tasks=3, gramian=J @ J.T, losses=losses)
        scales = loss_half(ctx).weights
        assert scales is not None
        scaled = scales.unsqueeze(1) * J
        alpha = methods.create("imtl_g")(Context(num_tasks=3, gramian=scaled @ scaled.T)).weights
        assert alpha is not None
        torch.testing.assert_close(imtl(ctx).weights, alpha * scales)
    d = J.T @ imtl(Context(num_tasks=3, gramian=J @ J.T, losses=losses)).weights
    scales = loss_half(Context(num_tasks=3, gramian=J @ J.T, losses=losses)).weights
    units = scales.unsqueeze(1) * J
    projections = (units / units.norm(dim=1, keepdim=True)) @ d
    torch.testing.assert_close(projections, projections.mean().expand(3))


def official_excess_mtl(jacobians: list[torch.Tensor], eta: float) -> list[torch.Tensor]:
    """The official code's recursion (He et al.'s LibMTL fork, also LibMTL's): AdaGrad's
    accumulator, E_i = g_i^T diag(1 / sqrt(S_i + 1e-7)) g_i, the first step's E as the
    baseline (weights unchanged there), then w <- w exp(eta E / E^0), renormalised to T."""
    num_tasks = jacobians[0].shape[0]
    weights = torch.ones(num_tasks, dtype=torch.float64)
    squared = torch.zeros_like(jacobians[0])
    baseline = None
    out = []
    for J in jacobians:
        squared = squared + J**2
        risk = torch.stack(
            [J[i] * (1 / torch.sqrt(squared[i] + 1e-7)) @ J[i] for i in range(num_tasks)]
        )
        if baseline is None:
            baseline = risk
        else:
            weights = weights * torch.exp(risk / baseline * eta)
            weights = weights / weights.sum() * num_tasks
        out.append(weights.clone())
    return out


def weights_of(method: methods.Method, J: torch.Tensor, **context: object) -> torch.Tensor:
    """The weights ``method`` returns for the Jacobian ``J`` (and its Gram matrix)."""
    ctx = Context(num_tasks=J.shape[0], jacobian=J, gramian=J @ J.T, **context)  # type: ignore[arg-type]
    weights = method(ctx).weights
    assert weights is not None
    return weights


@pytest.mark.parametrize("eta", [1e-2, 1.0])
def test_excess_mtl_follows_the_official_recursion(eta: float) -> None:
    jacobians = [jacobian(seed, dim=8) * (0.5 + seed) for seed in range(6)]
    method = methods.create("excess_mtl", robust_step_size=eta)
    expected = official_excess_mtl(jacobians, eta)
    for J, reference in zip(jacobians, expected, strict=True):
        weights = weights_of(method, J)
        torch.testing.assert_close(weights, reference, rtol=1e-12, atol=0.0)
        assert float(weights.sum()) == pytest.approx(3.0, rel=1e-12)
    assert not torch.equal(expected[-1], torch.ones(3, dtype=torch.float64))  # (it moved)


def test_excess_mtl_warmup_takes_the_mean_risk_as_baseline() -> None:
    jacobians = [jacobian(seed, dim=5) for seed in range(4)]
    method = methods.create("excess_mtl", robust_step_size=0.5, warmup_steps=2)
    squared = torch.zeros_like(jacobians[0])
    risks = []
    for J in jacobians:
        squared = squared + J**2
        risks.append((J**2 / torch.sqrt(squared + 1e-7)).sum(1))
    for J in jacobians[:2]:  # the warm-up keeps the weights at 1
        torch.testing.assert_close(weights_of(method, J), torch.ones(3, dtype=torch.float64))
    baseline = (risks[0] + risks[1]) / 2
    expected = 3 * torch.softmax(0.5 * risks[2] / baseline, dim=0)  # the update starts at once
    torch.testing.assert_close(weights_of(method, jacobians[2]), expected)


def test_excess_mtl_is_finite_for_a_task_whose_gradient_starts_at_zero() -> None:
    method = methods.create("excess_mtl", robust_step_size=1.0)
    J = jacobian(0, dim=4)
    silent = J.clone()
    silent[1] = 0.0
    for _ in range(2):
        weights = weights_of(method, silent)
        assert bool(torch.isfinite(weights).all())
    assert float(method.baseline[1]) == 0.0  # type: ignore[attr-defined]
    weights = weights_of(method, J)  # task 1's baseline is taken now: its ratio is 1
    assert bool(torch.isfinite(weights).all())
    assert float(method.baseline[1]) > 0.0  # type: ignore[attr-defined]
    assert float(weights.sum()) == pytest.approx(3.0)


def test_excess_mtl_at_representation_level_sums_the_batch_first() -> None:
    batch, features = 4, 3
    Js = [jacobian(seed, dim=batch * features) for seed in range(3)]
    shapes = (torch.Size([batch, features]),)
    at_representation = methods.create("excess_mtl", robust_step_size=1.0)
    on_pooled = methods.create("excess_mtl", robust_step_size=1.0)
    for J in Js:
        ours = weights_of(at_representation, J, block_shapes=shapes, level="representation")
        pooled = J.reshape(3, batch, features).sum(1)
        torch.testing.assert_close(ours, weights_of(on_pooled, pooled))
    # another batch size: the same features, the same state
    weights_of(
        at_representation,
        jacobian(9, dim=7 * features),
        block_shapes=(torch.Size([7, features]),),
        level="representation",
    )
    with pytest.raises(ValueError, match="call reset"):
        weights_of(
            at_representation,
            jacobian(9, dim=8),
            block_shapes=(torch.Size([2, 4]),),
            level="representation",
        )


def test_excess_mtl_arguments_and_state() -> None:
    with pytest.raises(ValueError, match="robust_step_size"):
        methods.create("excess_mtl", robust_step_size=0.0)
    with pytest.raises(ValueError, match="non-negative int"):
        methods.create("excess_mtl", warmup_steps=-1)
    method = methods.create("excess_mtl", robust_step_size=1.0)
    for seed in range(3):
        weights_of(method, jacobian(seed))
    resumed = methods.create("excess_mtl", robust_step_size=1.0)
    resumed.load_state_dict(method.state_dict())
    J = jacobian(7)
    torch.testing.assert_close(weights_of(resumed, J), weights_of(method, J))


def moving_averages(name: str, jacobians: list[torch.Tensor], alpha: float) -> list[torch.Tensor]:
    """``lambda_k = alpha lambda_(k-1) + (1 - alpha) lambda_hat_k`` of ``name``'s weights."""
    plain = methods.create(name)
    averages: list[torch.Tensor] = []
    for J in jacobians:
        own = weights_of(plain, J)
        averages.append(own if not averages else alpha * averages[-1] + (1 - alpha) * own)
    return averages


def test_cr_mogm_is_an_exponential_average_of_the_wrapped_weights() -> None:
    smoothed = methods.create("cr_mogm", method="mgda", alpha=0.75)
    jacobians = [jacobian(seed, dim=4) for seed in range(5)]
    for J, average in zip(jacobians, moving_averages("mgda", jacobians, 0.75), strict=True):
        torch.testing.assert_close(weights_of(smoothed, J), average)
    unsmoothed = methods.create("cr_mogm", method="upgrad", alpha=0.0)
    J = jacobian(9)
    torch.testing.assert_close(aggregate(unsmoothed, J), aggregate("upgrad", J))


def test_cr_mogm_averages_the_weights_of_the_unscaled_gradients() -> None:
    # Nash-MTL's weights scale like 1 / |g| (degree 0): those of J * size are w(J) / size.
    # Gradients of 2^200 and more are solved on J / s by the balancer (s a power of two that
    # changes from step to step), and the average must be of the weights for J itself
    huge = methods.create("cr_mogm", method="nash_mtl", alpha=0.5)
    sizes = [2.0 ** (200 + 40 * step) for step in range(4)]
    jacobians = [jacobian(step, dim=5) * size for step, size in enumerate(sizes)]
    unscaled = [J / size for J, size in zip(jacobians, sizes, strict=True)]
    plain = methods.create("nash_mtl")
    average = None
    for J, small, size in zip(jacobians, unscaled, sizes, strict=True):
        own = weights_of(plain, small) / size
        average = own if average is None else 0.5 * average + 0.5 * own
        torch.testing.assert_close(aggregate(huge, J), average @ J, rtol=1e-9, atol=0.0)


def test_cr_mogm_refuses_a_direction_and_resumes() -> None:
    with pytest.raises(ValueError, match="returns a direction"):
        aggregate(methods.create("cr_mogm", method="graddrop"), jacobian(0))
    with pytest.raises(ValueError, match="Did you mean 'mgda'"):
        methods.create("cr_mogm", method="mgd")
    with pytest.raises(ValueError, match="alpha"):
        methods.create("cr_mogm", alpha=1.0)
    method = methods.create("cr_mogm", method="nash_mtl", method_hparams={"gram": "frobenius"})
    assert method.needs == methods.create("nash_mtl").needs
    for seed in range(3):
        aggregate(method, jacobian(seed))
    resumed = methods.create("cr_mogm", **method.hparams())
    resumed.load_state_dict(method.state_dict())
    torch.testing.assert_close(aggregate(resumed, jacobian(5)), aggregate(method, jacobian(5)))
    method.reset()
    assert method.average is None  # type: ignore[attr-defined]


def test_pcd_gives_each_auxiliary_task_its_fraction_of_progress() -> None:
    # first step: the moving average is |g_i|^2 itself, so g~_i = g_i / |g_i| (up to eps).
    # g~_1 = (1, 0), g~_2 = (-1, 1) / sqrt(2): g~_2 . g~_1 = -1/sqrt(2) < tau, so the
    # constraint is active: d~ = g~_1 + mu g~_2 with g~_2 . d~ = tau, mu = tau + 1/sqrt(2)
    J = torch.tensor([[2.0, 0.0], [-3.0, 3.0]], dtype=torch.float64)
    d = aggregate(methods.create("pcd", tau=0.1, eps=0.0), J)
    mu = 0.1 + 2**-0.5
    expected = torch.tensor([1 - mu * 2**-0.5, mu * 2**-0.5], dtype=torch.float64)
    torch.testing.assert_close(d, 2.0 * expected / expected.norm())  # |d| = |g_1|
    torch.testing.assert_close(
        J[1] @ expected / J[1].norm(), torch.tensor(0.1, dtype=torch.float64)
    )
    # the constraint already holds: d is g_1 itself
    agreeing = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(aggregate(methods.create("pcd", tau=0.1), agreeing), agreeing[0])


def test_pcd_special_cases() -> None:
    # two opposite auxiliaries cannot both get progress: the constraints are dropped
    opposite = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(aggregate(methods.create("pcd", tau=0.5), opposite), opposite[0])
    # ... but with tau = 0 (no progress asked) d = 0 meets them, as does g_1
    torch.testing.assert_close(aggregate(methods.create("pcd", tau=0.0), opposite), opposite[0])
    silent = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    assert float(aggregate(methods.create("pcd"), silent).abs().max()) == 0.0
    alone = torch.tensor([[3.0, -4.0]], dtype=torch.float64)
    torch.testing.assert_close(aggregate(methods.create("pcd"), alone), alone[0])
    with pytest.raises(ValueError, match="2 tau values for 1 auxiliary"):
        aggregate(methods.create("pcd", tau=[0.1, 0.2]), silent)
    with pytest.raises(ValueError, match=r"tau must lie in \[0, 1\]"):
        methods.create("pcd", tau=1.5)


def test_pcd_is_unchanged_by_a_constant_scale_of_an_auxiliary_task() -> None:
    # the normalisation by the moving average makes tau a scale-free fraction (paper)
    plain = methods.create("pcd", tau=0.3, beta=0.9, eps=0.0)
    scaled = methods.create("pcd", tau=0.3, beta=0.9, eps=0.0)
    for seed in range(4):
        J = jacobian(seed, num_tasks=4, dim=6)
        other = J.clone()
        other[2] *= 1e3
        torch.testing.assert_close(aggregate(scaled, other), aggregate(plain, J))
    resumed = methods.create("pcd", tau=0.3, beta=0.9, eps=0.0)
    resumed.load_state_dict(plain.state_dict())
    J = jacobian(11, num_tasks=4, dim=6)
    torch.testing.assert_close(aggregate(resumed, J), aggregate(plain, J))


def test_cr_mogm_passes_epoch_ends_to_the_wrapped_method() -> None:
    # DWA's weights move only at epoch ends: wrapped without them, they stayed at 1
    wrapped = methods.create("cr_mogm", method="dwa", alpha=0.0)
    plain = methods.create("dwa")
    for epoch in range(3):
        for losses in ([1.0, 2.0], [0.5 + epoch, 1.0 / (1 + epoch)]):
            J = jacobian(epoch, num_tasks=2)
            context = {"losses": torch.tensor(losses, dtype=torch.float64)}
            torch.testing.assert_close(
                weights_of(wrapped, J, **context), weights_of(plain, J, **context)
            )
        wrapped.end_epoch()
        plain.end_epoch()
    assert not torch.equal(weights_of(plain, J, **context), torch.ones(2, dtype=torch.float64))
