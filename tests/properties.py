"""Shared property checks for every registered method (grows with the method library)."""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st

from taskbalance import methods
from taskbalance.methods.base import Method

# hyperparameters a method cannot default (everything else uses its defaults)
REQUIRED_HPARAMS: dict[str, Any] = {
    "fixed": lambda num_tasks: {"weights": [1.0 + i for i in range(num_tasks)]},
}


def make_method(name: str, num_tasks: int) -> Method:
    factory = REQUIRED_HPARAMS.get(name)
    return methods.create(name, **(factory(num_tasks) if factory else {}))


DEGENERATE_KINDS = [
    "random",
    "zero",
    "duplicates",
    "opposite",
    "rank_one",
    "zero_rows",
    "tiny_and_huge",
]


@st.composite
def jacobians(draw: st.DrawFn) -> torch.Tensor:
    """Random and degenerate ``(T, P)`` task-gradient matrices at extreme scales."""
    num_tasks = draw(st.integers(1, 12))
    dim = draw(st.integers(1, 16))
    kind = draw(st.sampled_from(DEGENERATE_KINDS))
    scale = draw(st.sampled_from([1e-20, 1e-8, 1.0, 1e8, 1e20]))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    J = torch.randn(num_tasks, dim, generator=generator)
    if kind == "zero":
        J = torch.zeros(num_tasks, dim)
    elif kind == "duplicates":
        J = J[:1].repeat(num_tasks, 1)
    elif kind == "opposite":
        J[1::2] = -J[0::2][: J[1::2].shape[0]]
    elif kind == "rank_one":
        J = torch.randn(num_tasks, 1, generator=generator) * J[:1]
    elif kind == "zero_rows":
        J[::2] = 0.0
    elif kind == "tiny_and_huge":
        J[0] *= 1e-6
        J[-1] *= 1e6
    return J * scale
