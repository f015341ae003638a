"""torch.compile: a compiled trunk gives the eager result; a compiled whole model, whose
representation is a sibling output of the compiled graph (the losses do not flow through it),
is refused at the first step with a message, never trained wrongly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from taskbalance import Balancer
from taskbalance.models import HardSharing


def _model() -> HardSharing:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8))
    return HardSharing(trunk, {"a": nn.Linear(8, 1), "b": nn.Linear(8, 1)})


@pytest.fixture(autouse=True)
def _no_donated_buffers() -> Iterator[None]:
    import torch._functorch.config as functorch_config

    with functorch_config.patch(donated_buffer=False):  # as the README says
        yield


def _train(compiled: str | None, method: str, level: str) -> list[torch.Tensor]:
    model = _model()
    forward: nn.Module = model
    if compiled == "trunk":
        model.trunk = torch.compile(model.trunk)  # type: ignore[assignment]
    elif compiled == "whole":
        forward = torch.compile(model)  # type: ignore[assignment]
    balancer = Balancer.for_model(method, model, level=level)  # type: ignore[arg-type]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=generator), torch.randn(32, 2, generator=generator)
    for _ in range(5):
        optimizer.zero_grad()
        out = forward(x)
        losses = {t: ((out[t].squeeze(-1) - y[:, i]) ** 2).mean() for i, t in enumerate("ab")}
        balancer.backward(losses)
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


CASES = [("pcgrad", "parameters"), ("mgda", "representation")]


@pytest.mark.parametrize(("method", "level"), CASES)
def test_a_compiled_trunk_gives_the_eager_result(method: str, level: str) -> None:
    eager = _train(None, method, level)
    compiled = _train("trunk", method, level)
    for p, q in zip(eager, compiled, strict=True):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("method", "level"), CASES)
def test_a_compiled_whole_model_is_refused_before_the_first_step(method: str, level: str) -> None:
    with pytest.raises(ValueError, match=r"torch\.compile, compile the trunk"):
        _train("whole", method, level)


def test_donated_buffers_get_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def donated(*args: object, **kwargs: object) -> None:
        raise RuntimeError(
            "This backward function was compiled with non-empty donated buffers which "
            "requires create_graph=False and retain_graph=False."
        )

    model = _model()
    out = model(torch.randn(4, 6))
    losses = {t: out[t].pow(2).mean() for t in "ab"}
    monkeypatch.setattr(torch.autograd, "grad", donated)
    with pytest.raises(ValueError, match=r"donated_buffer = False"):
        Balancer.for_model("mgda", model).backward(losses)
