"""Our methods against TorchJD's aggregators and LibMTL's weightings on the same inputs.

Each comparison states the convention that differs where one does (CAGrad's ``1 + c^2``
rescale, Aligned-MTL's sum over tasks, UW's initial ``log sigma^2``) and the tolerance each
side's solver allows: where the other library solves exactly (quadprog without its
regularisation, closed forms) the answers agree to rounding; where it iterates to a tolerance
(TorchJD's Frank-Wolfe MGDA, ECOS for Nash-MTL, LibMTL's min-norm solver) ours must be at
least as good on the problem's own objective. The libraries are installed by ``make test``
(the ``bench`` extra and ``LibMTL==1.1.5 --no-deps``); the tests skip where they are absent.
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from taskbalance import Balancer, aggregate
from taskbalance.methods import registry
from taskbalance.methods.base import Context

SHAPES = [(2, 7), (3, 7), (3, 20), (5, 20), (6, 9)]
SEEDS = range(4)


def conflicting_jacobian(seed: int, num_tasks: int, dim: int) -> Tensor:
    """Random float64 gradients with task 1 pushed against task 0 (so projections happen)."""
    generator = torch.Generator().manual_seed(1000 * seed + 10 * num_tasks + dim)
    J = torch.randn(num_tasks, dim, generator=generator, dtype=torch.float64)
    J[1] -= 1.5 * J[0]
    return J


def problems(shapes: list[tuple[int, int]] = SHAPES) -> list[tuple[int, int, int]]:
    return [(seed, T, P) for seed, (T, P) in itertools.product(SEEDS, shapes)]


def relative(ours: Tensor, theirs: Tensor) -> float:
    return float((ours - theirs).norm() / theirs.norm())


# ----------------------------------------------------------------------------------- TorchJD


@pytest.fixture(scope="module")
def torchjd() -> ModuleType:
    pytest.importorskip("torchjd")
    aggregation: ModuleType = pytest.importorskip("torchjd.aggregation")
    return aggregation


def exact_projector() -> Any:
    """TorchJD's dual-cone projector without its normalisation and ridge (both 1e-4 by
    default), so that quadprog solves the exact QP: full-rank Gram matrices only."""
    pytest.importorskip("quadprog")
    from torchjd.linalg import QuadprogProjector

    return QuadprogProjector(norm_eps=0.0, reg_eps=0.0)


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
@pytest.mark.parametrize(("seed", "T", "P"), problems())
def test_dual_cone_projections_equal_torchjd_exact_quadprog(
    torchjd: ModuleType, name: str, seed: int, T: int, P: int
) -> None:
    J = conflicting_jacobian(seed, T, P)
    theirs = {"upgrad": torchjd.UPGrad, "dualproj": torchjd.DualProj}[name]
    expected = theirs(projector=exact_projector())(J)
    assert relative(aggregate(name, J), expected) < 1e-10


@pytest.mark.parametrize(
    ("name", "hparams", "make"),
    [
        ("imtl_g", {}, lambda A, T: A.IMTLG()),
        ("config", {}, lambda A, T: A.ConFIG()),
        ("fairgrad", {"alpha": 0.5}, lambda A, T: A.FairGrad(alpha=0.5)),
        ("fairgrad", {"alpha": 1.0}, lambda A, T: A.FairGrad(alpha=1.0)),
        ("fairgrad", {"alpha": 2.0}, lambda A, T: A.FairGrad(alpha=2.0)),
    ],
    ids=["imtl_g", "config", "fairgrad-0.5", "fairgrad-1", "fairgrad-2"],
)
@pytest.mark.parametrize(("seed", "T", "P"), problems())
def test_closed_form_and_root_finding_methods_equal_torchjd(
    torchjd: ModuleType, name: str, hparams: dict[str, float], make: Any, seed: int, T: int, P: int
) -> None:
    """IMTL-G and ConFIG are closed forms; FairGrad's ``G w = w^(-1/alpha)`` is solved to
    its tolerance by SciPy's root finder in TorchJD and to rounding by Newton here."""
    if name == "fairgrad":
        pytest.importorskip("scipy")
    J = conflicting_jacobian(seed, T, P)
    expected = make(torchjd, T)(J)
    ours = aggregate(registry.create(name, **hparams), J)
    assert relative(ours, expected) < (1e-8 if name == "fairgrad" else 1e-11)


@pytest.mark.parametrize(("seed", "T", "P"), problems())
@pytest.mark.parametrize("c", [0.2, 0.5, 1.5])
def test_cagrad_is_at_least_as_good_as_torchjd_without_the_rescale(
    torchjd: ModuleType, c: float, seed: int, T: int, P: int
) -> None:
    """TorchJD returns the primal optimum ``g_0 + c |g_0| g_w / |g_w|`` itself (ours divides
    it by ``1 + c^2`` by default, as the paper's code does: ``rescale=1``), from a dual solved
    by cvxpy to its solver's tolerance (measured 1e-6 to 1e-4 off here). Both lie on the
    ball's boundary; ours improves the worst task at least as much, and the two are close."""
    pytest.importorskip("cvxpy")
    J = conflicting_jacobian(seed, T, P)
    mean = J.mean(0)
    expected = torchjd.CAGrad(c=c, norm_eps=0.0)(J)
    ours = aggregate(registry.create("cagrad", c=c, rescale=0), J)
    for d in (ours, expected):
        assert float((d - mean).norm()) == pytest.approx(c * float(mean.norm()), rel=1e-9)
    scale = float(J.norm(dim=1).max() * ours.norm())
    assert float((J @ ours).min()) >= float((J @ expected).min()) - 1e-12 * scale
    assert relative(ours, expected) < 1e-3
    rescaled = aggregate(registry.create("cagrad", c=c), J) * (1 + c**2)
    assert relative(rescaled, ours) < 1e-12


@pytest.mark.parametrize(("seed", "T", "P"), problems())
def test_cr_mogm_smoothing_of_imtl_g_equals_torchjd(
    torchjd: ModuleType, seed: int, T: int, P: int
) -> None:
    """CR-MOGM's moving average of IMTL-G's weights (a closed form in both libraries) over
    five steps of changing gradients: TorchJD's ``CRMOGMWeighting(IMTLGWeighting())`` on the
    Gram matrices."""
    theirs = torchjd.CRMOGMWeighting(torchjd.IMTLGWeighting(), alpha=0.7)
    ours = registry.create("cr_mogm", method="imtl_g", alpha=0.7)
    for step in range(5):
        J = conflicting_jacobian(seed + 100 * step, T, P)
        weights = ours(Context(num_tasks=T, jacobian=J, gramian=J @ J.T)).weights
        assert weights is not None
        torch.testing.assert_close(weights, theirs(J @ J.T), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("seed", "T", "P"), problems())
@pytest.mark.parametrize("tau", [0.02, 0.5, 1.0])
def test_pcd_equals_torchjd_over_steps(
    torchjd: ModuleType, tau: float, seed: int, T: int, P: int
) -> None:
    """PCD's QP solved exactly in both (Goldfarb-Idnani's dual method in TorchJD, the dual's
    non-negative QP here), with the same moving average of the squared norms, over four
    steps of gradients whose scales differ by task."""
    theirs = torchjd.PCDWeighting(tau=tau, beta=0.9)
    ours = registry.create("pcd", tau=tau, beta=0.9)
    sizes = torch.logspace(-2, 2, T, dtype=torch.float64).unsqueeze(1)
    for step in range(4):
        J = conflicting_jacobian(seed + 100 * step, T, P) * sizes
        weights = ours(Context(num_tasks=T, jacobian=J, gramian=J @ J.T)).weights
        assert weights is not None
        torch.testing.assert_close(weights, theirs(J @ J.T), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize(("seed", "T", "P"), problems())
def test_excess_mtl_after_a_warmup_is_torchjd_times_the_number_of_tasks(
    torchjd: ModuleType, seed: int, T: int, P: int
) -> None:
    """With a warm-up both take the warm-up's mean excess risk as the baseline and move the
    weights from the next step on; TorchJD's weights sum to 1, ours (the official code's) to
    ``T``, and TorchJD adds 1e-7 to the baseline. (Without a warm-up TorchJD already moves the
    weights at the first step, by the raw risk, where the official code and ours do not.)"""
    theirs = torchjd.ExcessMTLWeighting(robust_step_size=0.3, n_warmup_steps=2)
    ours = registry.create("excess_mtl", robust_step_size=0.3, warmup_steps=2)
    for step in range(6):
        J = conflicting_jacobian(seed + 100 * step, T, P)
        weights = ours(Context(num_tasks=T, jacobian=J)).weights
        assert weights is not None
        torch.testing.assert_close(weights / T, theirs(J), rtol=1e-6, atol=0.0)


@pytest.mark.parametrize(("seed", "T", "P"), problems())
def test_aligned_mtl_is_torchjd_summed_over_tasks(
    torchjd: ModuleType, seed: int, T: int, P: int
) -> None:
    """The paper and LibMTL sum the aligned gradients; TorchJD averages them."""
    J = conflicting_jacobian(seed, T, P)
    expected = torchjd.AlignedMTL()(J) * T
    assert relative(aggregate("aligned_mtl", J), expected) < 1e-10


def bargaining_residual(J: Tensor, d: Tensor) -> float:
    """``max_i |alpha_i g_i . d - 1|`` for ``d = J^T alpha`` (full row rank ``J``): zero at
    the Nash bargaining solution (Navon et al., 2022, Eq. 3)."""
    alpha = torch.linalg.lstsq(J.T, d.unsqueeze(1)).solution.squeeze(1)
    return float((alpha * (J @ d) - 1).abs().max())


@pytest.mark.parametrize(("seed", "T", "P"), problems())
def test_nash_mtl_solves_the_bargaining_condition_where_torchjd_does(
    torchjd: ModuleType, seed: int, T: int, P: int
) -> None:
    """TorchJD's Nash-MTL (the authors' sequence of convex problems, ECOS) with its norm
    clipping lifted: where it reaches the bargaining solution (residual below 1e-5) the two
    agree; ours reaches it everywhere (on 1 of these 20 problems ECOS stops at a point with
    residual ~15 and TorchJD returns it)."""
    pytest.importorskip("cvxpy")
    J = conflicting_jacobian(seed, T, P)
    ours = aggregate("nash_mtl", J)
    assert bargaining_residual(J, ours) < 1e-9
    expected = torchjd.NashMTL(n_tasks=T, max_norm=1e12, optim_niter=100)(J)
    if bargaining_residual(J, expected) < 1e-5:
        assert relative(ours, expected) < 1e-5


@pytest.mark.parametrize(("seed", "T", "P"), problems())
def test_mgda_is_no_farther_from_the_origin_than_torchjd_frank_wolfe(
    torchjd: ModuleType, seed: int, T: int, P: int
) -> None:
    """TorchJD's Frank-Wolfe stops at a tolerance; ours is the exact min-norm point of the
    convex hull, so its norm is at most Frank-Wolfe's and the two are close."""
    J = conflicting_jacobian(seed, T, P)
    expected = torchjd.MGDA(epsilon=1e-12, max_iters=20_000)(J)
    ours = aggregate("mgda", J)
    assert float(ours.norm()) <= float(expected.norm()) * (1 + 1e-12)
    assert relative(ours, expected) < 1e-2


@pytest.mark.parametrize("seed", SEEDS)
def test_pcgrad_with_two_tasks_equals_torchjd(torchjd: ModuleType, seed: int) -> None:
    """With two tasks PCGrad's random order does not matter."""
    J = conflicting_jacobian(seed, 2, 11)
    assert relative(aggregate("pcgrad", J), torchjd.PCGrad()(J)) < 1e-12


@pytest.mark.parametrize("seed", SEEDS)
def test_gradvac_moving_targets_follow_torchjd_over_steps(torchjd: ModuleType, seed: int) -> None:
    """Two tasks (no random order), eight steps of drifting gradients: the EMA of the
    cosine targets is updated after every pair, corrected or not (GradVac's Algorithm 1)."""
    generator = torch.Generator().manual_seed(seed)
    ours = registry.create("gradvac", beta=0.5)
    theirs = torchjd.GradVac(beta=0.5, eps=0.0)
    base = torch.randn(2, 12, generator=generator, dtype=torch.float64)
    corrected = 0
    for _ in range(8):
        J = base + 0.8 * torch.randn(2, 12, generator=generator, dtype=torch.float64)
        result, expected = aggregate(ours, J), theirs(J)
        corrected += int(relative(expected, J.sum(0)) > 1e-12)  # (the uncorrected sum)
        assert relative(result, expected) < 1e-12
    assert corrected > 0  # the sequence exercised the correction


# ------------------------------------------------------------------------------------ LibMTL


@pytest.fixture(scope="module")
def libmtl() -> ModuleType:
    """``benchmarks/libmtl_equivalents.py``: LibMTL's weightings wired to a trunk."""
    if importlib.util.find_spec("LibMTL") is None:
        pytest.skip("LibMTL is not installed (pip install --no-deps LibMTL==1.1.5)")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "libmtl_equivalents.py"
    spec = importlib.util.spec_from_file_location("libmtl_equivalents", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("libmtl_equivalents", module)
    spec.loader.exec_module(module)
    return module


class Model(nn.Module):
    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        with torch.random.fork_rng():  # (seeded without touching the other tests' stream)
            torch.manual_seed(0)
            self.trunk = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6)).double()
            self.heads = nn.ModuleList(nn.Linear(6, 1).double() for _ in range(num_tasks))

    def losses(self, x: Tensor, ys: list[Tensor]) -> Tensor:
        z = self.trunk(x)
        # tasks of different scales, so that weighting matters
        return torch.stack(
            [
                (i + 1) ** 2 * ((head(z).squeeze(-1) - y) ** 2).mean()
                for i, (head, y) in enumerate(zip(self.heads, ys, strict=True))
            ]
        )


def trunk_gradient(model: Model) -> Tensor:
    return torch.cat([p.grad.flatten() for p in model.trunk.parameters() if p.grad is not None])


def compare_with_libmtl(
    libmtl: ModuleType,
    name: str,
    num_tasks: int,
    hparams: dict[str, Any],
    *,
    steps: int = 3,
    kwargs: dict[str, Any] | None = None,
    prepare: Any = None,
) -> list[tuple[Tensor, Tensor]]:
    """The trunk's gradients (ours, LibMTL's), step by step, at the same parameters.

    LibMTL stores the per-task gradients in float32 (``torch.zeros`` in ``_compute_grad``),
    so its updates are float32-accurate even for float64 models."""
    ours_model = Model(num_tasks)
    their_model = copy.deepcopy(ours_model)
    balancer = Balancer(
        registry.create(name, **hparams),
        ours_model.trunk.parameters(),
        task_params=ours_model.heads.parameters(),
    )
    weighting, default_kwargs = libmtl.harness(name, their_model.trunk, num_tasks)
    if prepare is not None:
        prepare(weighting)
    generator = torch.Generator().manual_seed(1)
    pairs = []
    for _ in range(steps):
        x = torch.randn(16, 5, generator=generator, dtype=torch.float64)
        ys = [torch.randn(16, generator=generator, dtype=torch.float64) for _ in range(num_tasks)]
        for model in (ours_model, their_model):
            model.zero_grad(set_to_none=True)
        balancer.backward(ours_model.losses(x, ys))
        weighting.backward(their_model.losses(x, ys), **(kwargs or default_kwargs))
        pairs.append((trunk_gradient(ours_model), trunk_gradient(their_model)))
    return pairs


FLOAT32 = 1e-6
"""Agreement with LibMTL's float32 per-task gradients."""


def differences(pairs: list[tuple[Tensor, Tensor]]) -> list[float]:
    return [relative(ours, theirs) for ours, theirs in pairs]


@pytest.mark.parametrize(
    ("name", "num_tasks"), [("ew", 2), ("ew", 4), ("gls", 2), ("gls", 3), ("gls", 4), ("pcgrad", 2)]
)
def test_deterministic_weightings_equal_libmtl(
    libmtl: ModuleType, name: str, num_tasks: int
) -> None:
    """EW and GLS are closed forms; PCGrad with two tasks too (beyond two, each library
    draws its own random order)."""
    assert max(differences(compare_with_libmtl(libmtl, name, num_tasks, {}))) < FLOAT32


@pytest.mark.parametrize("num_tasks", [2, 3, 4])
def test_mgda_is_no_longer_than_libmtl_min_norm_solver(libmtl: ModuleType, num_tasks: int) -> None:
    """LibMTL's MinNormSolver (Sener & Koltun's code) clips a two-task solution to
    ``[0.001, 0.999]`` where one gradient dominates and stops at 1e-5 beyond two tasks; ours
    is the exact min-norm point of the convex hull, so its update is never longer."""
    pairs = compare_with_libmtl(libmtl, "mgda", num_tasks, {}, steps=4)
    for ours, theirs in pairs:
        assert float(ours.norm()) <= float(theirs.norm()) * (1 + FLOAT32)
        assert relative(ours, theirs) < 1e-2


def test_cagrad_equals_libmtl_with_three_tasks(
    libmtl: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LibMTL's CAGrad (SciPy's SLSQP on the dual, to its default tolerance: 2e-4 off here;
    its objective is written for three tasks only) with its default rescale by ``1 + c^2``.
    That ours is the more accurate optimum is checked against TorchJD's above."""
    pytest.importorskip("scipy")
    monkeypatch.setitem(libmtl.LIBMTL, "cagrad", ("CAGrad", {"calpha": 0.5, "rescale": 1}))
    pairs = compare_with_libmtl(libmtl, "cagrad", 3, {"c": 0.5}, steps=3)
    assert max(differences(pairs)) < 1e-3


def test_gradvac_first_steps_equal_libmtl(libmtl: ModuleType) -> None:
    """The first step (targets 0) is the same in both; LibMTL then moves a target only when
    the pair was corrected, where the paper's Algorithm 1 (and TorchJD, and ours) moves every
    target, so the steps after may differ."""
    pairs = compare_with_libmtl(libmtl, "gradvac", 2, {"beta": 0.5}, steps=1)
    assert max(differences(pairs)) < FLOAT32


@pytest.mark.parametrize("name", ["uw", "imtl", "gradnorm"])
def test_learned_weightings_first_step_equals_libmtl(libmtl: ModuleType, name: str) -> None:
    """Methods whose weights are learned: at the same initial weights the first step is the
    same (LibMTL learns them through the trainer's optimizer, ours with its own, so later
    steps depend on the optimisers). LibMTL's UW starts at ``log sigma^2 = -0.5``, ours at 0
    (Kendall et al.), so LibMTL's is set to 0 here."""
    hparams = {"gradnorm": {"alpha": 1.5}}.get(name, {})

    def prepare(weighting: Any) -> None:
        if name == "uw":
            with torch.no_grad():
                weighting.loss_scale.zero_()

    pairs = compare_with_libmtl(libmtl, name, 3, hparams, steps=1, prepare=prepare)
    assert max(differences(pairs)) < FLOAT32


def test_dwa_equals_libmtl_over_epochs(libmtl: ModuleType) -> None:
    """DWA over five epochs of three batches: both weight by the ratio of the last two
    epochs' mean losses from the third epoch on (LibMTL's trainer fills
    ``train_loss_buffer[:, e]`` with epoch ``e``'s mean batch losses; ours keeps the same
    means and closes a period at ``end_epoch``)."""
    num_tasks, epochs, batches = 3, 5, 3
    ours_model = Model(num_tasks)
    their_model = copy.deepcopy(ours_model)
    balancer = Balancer(
        registry.create("dwa", temperature=2.0),
        ours_model.trunk.parameters(),
        task_params=ours_model.heads.parameters(),
    )
    weighting, kwargs = libmtl.harness("dwa", their_model.trunk, num_tasks)
    weighting.train_loss_buffer = np.zeros((num_tasks, epochs))
    generator = torch.Generator().manual_seed(2)
    for epoch in range(epochs):
        weighting.epoch = epoch
        epoch_losses = []
        for _ in range(batches):
            x = torch.randn(16, 5, generator=generator, dtype=torch.float64)
            ys = [
                (epoch + 1.0) ** -(i + 1)
                * torch.randn(16, generator=generator, dtype=torch.float64)
                for i in range(num_tasks)
            ]  # losses that fall at different rates, so that the weights differ
            for model in (ours_model, their_model):
                model.zero_grad(set_to_none=True)
            info = balancer.backward(ours_model.losses(x, ys))
            theirs = weighting.backward(their_model.losses(x, ys), **kwargs)
            assert info.weights is not None
            np.testing.assert_allclose(info.weights.numpy(), theirs, rtol=1e-6, atol=0)
            epoch_losses.append(ours_model.losses(x, ys).detach().numpy())
        weighting.train_loss_buffer[:, epoch] = np.mean(epoch_losses, axis=0)
        balancer.end_epoch()
    assert not np.allclose(theirs, 1.0)  # the last epochs were weighted, not equal


def _libmtl_graddrop_step(
    libmtl: ModuleType,
    trunk: nn.Module,
    heads: nn.ModuleList,
    x: Tensor,
    ys: list[Tensor],
    leak: float,
) -> None:
    """One step of LibMTL's GradDrop as its representation-level trainer runs it: each head
    reads a detached copy of the trunk output, and the weighting back-propagates the masked
    representation gradients into the trunk."""
    weighting: Any = libmtl._weighting_module().GradDrop()
    rep = trunk(x)
    weighting.rep, weighting.rep_grad, weighting.device = rep, True, x.device
    weighting.task_num, weighting.task_name = len(heads), [f"t{i}" for i in range(len(heads))]
    weighting.rep_tasks = {}
    losses = []
    for name, head, y in zip(weighting.task_name, heads, ys, strict=True):
        own = rep.detach().clone().requires_grad_(True)
        weighting.rep_tasks[name] = own
        losses.append(((head(own).squeeze(-1) - y) ** 2).mean())
    weighting.backward(torch.stack(losses), leak=leak)


@pytest.mark.parametrize("leak", [0.0, 0.3])
@pytest.mark.parametrize("num_tasks", [2, 3, 5])
def test_graddrop_at_representation_level_equals_libmtl(
    libmtl: ModuleType, num_tasks: int, leak: float
) -> None:
    """The paper's GradDrop (Algorithm 1, the authors' lingvo code, LibMTL): the signs are
    read from ``sum_batch sign(A) o dL_i/dA`` and the mask applied to each sample's
    gradient. Same uniform draws (LibMTL's come from the global generator, ours from the
    method's: its state is copied there), same trunk update, over three steps. A tanh trunk,
    so that activations of both signs occur; without ``sign(A)`` (``input_sign=False``, the
    previous behaviour) a parameter's gradient differs by up to ~50% here."""
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh())
    heads = nn.ModuleList(nn.Linear(6, 1) for _ in range(num_tasks))
    theirs_trunk, theirs_heads = copy.deepcopy(trunk), copy.deepcopy(heads)
    balancer = Balancer(
        registry.create("graddrop", leak=leak), trunk.parameters(), level="representation"
    )
    method: Any = balancer.method
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(16, 5, generator=generator)
        ys = [torch.randn(16, generator=generator) for _ in range(num_tasks)]
        for module in (trunk, heads, theirs_trunk, theirs_heads):
            module.zero_grad(set_to_none=True)
        draws = method.generator.get_state()
        z = trunk(x)
        losses = [((h(z).squeeze(-1) - y) ** 2).mean() for h, y in zip(heads, ys, strict=True)]
        balancer.backward(losses, representation=z)
        with torch.random.fork_rng():
            torch.set_rng_state(draws)
            _libmtl_graddrop_step(libmtl, theirs_trunk, theirs_heads, x, ys, leak)
        for ours, their in zip(
            [*trunk.parameters(), *heads.parameters()],
            [*theirs_trunk.parameters(), *theirs_heads.parameters()],
            strict=True,
        ):
            assert ours.grad is not None
            assert their.grad is not None
            assert relative(ours.grad, their.grad) < 1e-5
        with torch.no_grad():  # move both the same way, so that the next step differs
            for ours, their in zip(
                [*trunk.parameters(), *heads.parameters()],
                [*theirs_trunk.parameters(), *theirs_heads.parameters()],
                strict=True,
            ):
                assert ours.grad is not None
                ours -= 0.1 * ours.grad
                their.copy_(ours)
