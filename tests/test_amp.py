"""float16 mixed precision with torch.amp.GradScaler on CPU: Balancer.backward(scaler=...)
behaves like scaler.scale(loss).backward() (one unscale in scaler.step, overflow skipped and
the scale lowered); bfloat16 autocast needs no scaler."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from taskbalance import Balancer


def _model() -> tuple[nn.Module, nn.ModuleList]:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 16))
    heads = nn.ModuleList([nn.Linear(16, 1) for _ in range(3)])
    return trunk, heads


def _step(
    method: str,
    dtype: torch.dtype | None,
    use_scaler: bool,
    factor: float = 1.0,
    level: str = "parameters",
) -> tuple[list[torch.Tensor], bool, torch.amp.GradScaler]:
    trunk, heads = _model()
    params = [*trunk.parameters(), *heads.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1)
    balancer = Balancer(method, trunk.parameters(), level=level)  # type: ignore[arg-type]
    scaler = torch.amp.GradScaler("cpu", enabled=use_scaler)
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=generator), torch.randn(32, 3, generator=generator)
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        z = trunk(x)
        outputs = [head(z).squeeze(-1) for head in heads]
    losses = [((o.float() - y[:, i]) ** 2).mean() * factor for i, o in enumerate(outputs)]
    info = balancer.backward(losses, representation=z, scaler=scaler)
    scaler.step(optimizer)
    scaler.update()
    return [p.detach().clone() for p in params], info.skipped, scaler


@pytest.mark.parametrize(
    ("method", "level"),
    [(m, "parameters") for m in ("ew", "mgda", "pcgrad", "upgrad", "graddrop")]
    + [(m, "representation") for m in ("ew", "mgda", "pcgrad", "upgrad")],
)
def test_float16_with_grad_scaler_matches_float32(method: str, level: str) -> None:
    reference, _, _ = _step(method, None, use_scaler=False, level=level)
    mixed, skipped, scaler = _step(method, torch.float16, use_scaler=True, level=level)
    assert not skipped
    assert scaler.get_scale() == 2.0**16  # no overflow: the scale is kept
    initial, _, _ = _step(method, None, use_scaler=False, factor=0.0, level=level)
    for p, q, p0 in zip(reference, mixed, initial, strict=True):
        # one update, unscaled exactly once (a double unscale would be 65536x too small)
        torch.testing.assert_close(q, p, atol=2e-4, rtol=1e-3)
        if not torch.equal(p, p0):
            assert float((q - p0).norm()) > 0.5 * float((p - p0).norm())


def test_an_overflowing_step_is_skipped_by_the_scaler_and_the_scale_lowered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before, _, _ = _step("mgda", None, use_scaler=False, factor=0.0)
    with caplog.at_level("WARNING", logger="taskbalance.balancer"):
        after, skipped, scaler = _step("mgda", torch.float16, use_scaler=True, factor=1e35)
    # the log said "nothing was written to .grad" right after "inf written to .grad"
    assert "only inf to " in caplog.text
    assert "nothing was written" not in caplog.text
    assert skipped
    assert scaler.get_scale() == 2.0**15  # halved by update()
    for p, q in zip(before, after, strict=True):
        assert torch.equal(p, q)  # optimizer.step() was skipped


def test_bfloat16_autocast_needs_no_scaler() -> None:
    reference, _, _ = _step("mgda", None, use_scaler=False)
    mixed, skipped, _ = _step("mgda", torch.bfloat16, use_scaler=False)
    assert not skipped
    for p, q in zip(reference, mixed, strict=True):
        torch.testing.assert_close(q, p, atol=5e-3, rtol=5e-2)


def test_scaler_and_loss_scale_are_exclusive() -> None:
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="scaler= or loss_scale="):
        Balancer("ew", [w]).backward(
            [w.sum(), (w**2).sum()], loss_scale=8.0, scaler=torch.amp.GradScaler("cpu")
        )
