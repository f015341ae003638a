"""Clipping at the ends of the float range: half-precision gradients, norms that overflow
float32, and overflowed (``inf``) gradients, which a transform must never turn into a finite
update that the balancer would then write."""

import pytest
import torch
from torch import Tensor, nn

from helpers import overflowing_gradient
from taskbalance import Balancer
from taskbalance.transforms import AGC, AutoClip, ClipGlobalNorm, ClipValue, Transform


def _agc_reference(g: Tensor, p: Tensor, clipping: float, eps: float) -> Tensor:
    """AGC (Brock et al., 2021) per row of a matrix, in float64."""
    g64, p64 = g.to(torch.float64), p.to(torch.float64)
    max_norm = clipping * p64.norm(dim=1, keepdim=True).clamp_min(eps)
    grad_norm = g64.norm(dim=1, keepdim=True)
    return torch.where(grad_norm > max_norm, g64 * max_norm / grad_norm, g64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_agc_clips_half_precision_units_whose_norm_exceeds_65504(dtype: torch.dtype) -> None:
    # rows of 1000 entries of 3000: norm ~9.5e4, beyond float16; the weights' rows ~3.2e3
    g = torch.full((2, 1000), 3000.0, dtype=dtype)
    p = torch.full((2, 1000), 100.0, dtype=dtype)
    (clipped,) = AGC(0.01).apply([g], [p])
    assert clipped.dtype == dtype
    expected = _agc_reference(g, p, 0.01, 1e-3)
    torch.testing.assert_close(clipped.to(torch.float64), expected, rtol=1e-2, atol=0.0)
    assert bool((clipped != 0).all())  # (the old float16 norm was inf, and the update 0)


def test_agc_is_exact_where_float32_squares_overflow() -> None:
    # weights of 1e20 and gradients of 1e30: every square overflows float32, the norms do not
    p = torch.full((3, 4), 1e20)
    g = torch.full((3, 4), 1e30)
    g[1] = 1e-3  # a unit far below its bound is left alone
    (clipped,) = AGC(0.01).apply([g], [p])
    expected = _agc_reference(g, p, 0.01, 1e-3).to(torch.float32)
    torch.testing.assert_close(clipped, expected, rtol=1e-6, atol=0.0)
    assert float(clipped[0].to(torch.float64).norm()) == pytest.approx(0.01 * 2e20, rel=1e-6)


def test_agc_keeps_a_nan_gradient_not_finite() -> None:
    g = torch.tensor([[1.0, float("nan")], [1.0, 1.0]])
    (clipped,) = AGC(0.01).apply([g], [torch.ones(2, 2)])
    assert bool(clipped[0, 1].isnan())  # (the balancer's guard then skips the step)
    assert bool(clipped[1].isfinite().all())


def test_global_norm_clipping_does_not_zero_half_precision_gradients() -> None:
    # 100000 float16 tensors of 60000s: norm ~9.6e7, so clipping to 0.1 takes a factor ~1e-9,
    # below float16's smallest number (~6e-8): applied in float16 it zeroed the update, while
    # the clipped entries (~6e-5) are representable
    grads = [torch.full((4, 4), 60000.0, dtype=torch.float16)] * 100_000
    factor = 0.1 / (60000.0 * (16 * 100_000) ** 0.5)
    assert factor < 6e-8
    clipped = ClipGlobalNorm(0.1).apply(grads, [None] * len(grads))  # type: ignore[list-item]
    assert clipped[0].dtype == torch.float16
    assert float(clipped[0][0, 0]) == pytest.approx(60000.0 * factor, rel=1e-2)


def test_value_clipping_beyond_the_dtype_range_is_the_identity() -> None:
    g = torch.tensor([60000.0, -3.0], dtype=torch.float16)
    (clipped,) = ClipValue(1e5).apply([g], [None])  # type: ignore[list-item]
    assert torch.equal(clipped, g)


def test_value_clipping_keeps_overflowed_entries() -> None:
    g = torch.tensor([float("inf"), -float("inf"), float("nan"), 5.0, -5.0, 0.5])
    (clipped,) = ClipValue(1.0).apply([g], [None])  # type: ignore[list-item]
    assert clipped[0] == float("inf")
    assert clipped[1] == -float("inf")
    assert bool(clipped[2].isnan())
    assert clipped[3:].tolist() == [1.0, -1.0, 0.5]


def test_autoclip_ignores_non_finite_norms_in_its_history() -> None:
    clip = AutoClip(percentile=50)
    for norm in (1.0, float("inf"), 3.0):
        (out,) = clip.apply([torch.tensor([norm])], [None])  # type: ignore[list-item]
    # median of the finite norms {1, 3} is 2 (a 0 recorded for the inf made it 1)
    assert float(out) == pytest.approx(2.0, rel=1e-6)
    first = AutoClip(percentile=50)
    (out,) = first.apply([torch.tensor([float("inf"), 1.0])], [None])  # type: ignore[list-item]
    assert not bool(out.isfinite().all())  # no finite history: the step cannot pass the guard


@pytest.mark.parametrize(
    "transform",
    [ClipValue(1.0), ClipGlobalNorm(1.0), AutoClip(), AGC(0.01)],
    ids=lambda t: type(t).__name__,
)
@pytest.mark.parametrize("method", ["ew", "mgda"])
def test_an_overflowed_gradient_is_never_clipped_into_a_written_update(
    transform: Transform, method: str
) -> None:
    layer = nn.Linear(3, 1)
    overflowing = overflowing_gradient(layer.weight).sum() * 0 + layer.weight.sum()
    other = layer.weight.pow(2).sum()
    balancer = Balancer(method, [layer.weight], transforms=[transform])
    info = balancer.backward([overflowing, other])
    assert info.skipped
    assert layer.weight.grad is None


def test_an_overflowed_gradient_under_value_clipping_reaches_the_grad_scaler() -> None:
    # with a GradScaler the overflow must be written as inf so that scaler.step skips the
    # optimizer step and lowers the scale (value clipping turned it into +-1 before)
    layer = nn.Linear(3, 1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    overflowing = overflowing_gradient(layer.weight).sum() * 0 + layer.weight.sum()
    info = Balancer("ew", [layer.weight], transforms=[ClipValue(1.0)]).backward(
        [overflowing, layer.weight.pow(2).sum()], scaler=scaler
    )
    assert info.skipped
    assert layer.weight.grad is not None
    assert not bool(layer.weight.grad.isfinite().all())
    optimizer = torch.optim.SGD([layer.weight], lr=0.1)
    before = layer.weight.detach().clone()
    scaler.step(optimizer)
    scaler.update()
    assert torch.equal(layer.weight.detach(), before)
    assert scaler.get_scale() < 2.0**10
