"""A functional Adam step on a method's own small parameter vector.

Methods that learn their task weights (uncertainty weighting, IMTL-L, GradNorm, FAMO) keep
those parameters *inside* the method, out of the user's optimizer (so the user's weight decay
or learning-rate schedule never touches them), and update them with this Adam step. The whole
state is tensors, so it checkpoints through ``state_dict`` and never synchronises with the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["AdamState", "adam_step"]


@dataclass
class AdamState:
    """First and second moments and the step count of one parameter vector."""

    exp_avg: Tensor
    exp_avg_sq: Tensor
    step: Tensor

    @classmethod
    def zeros_like(cls, param: Tensor) -> AdamState:
        return cls(
            torch.zeros_like(param), torch.zeros_like(param), torch.zeros((), dtype=torch.float64)
        )


def adam_step(
    param: Tensor,
    grad: Tensor,
    state: AdamState,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> Tensor:
    """One Adam update (Kingma & Ba 2015, bias-corrected; L2 ``weight_decay`` as in
    ``torch.optim.Adam``). Updates ``state`` in place and returns the new parameter."""
    beta1, beta2 = betas
    if weight_decay:
        grad = grad + weight_decay * param
    state.step = state.step + 1
    state.exp_avg = beta1 * state.exp_avg + (1 - beta1) * grad
    state.exp_avg_sq = beta2 * state.exp_avg_sq + (1 - beta2) * grad * grad
    correction1 = 1 - beta1**state.step
    correction2 = 1 - beta2**state.step
    denom = (state.exp_avg_sq / correction2).sqrt() + eps
    return param - lr * (state.exp_avg / correction1) / denom
