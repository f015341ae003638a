"""Accelerated projected gradient, the cheap first guess of the exact active-set solvers.

The exact solvers at many tasks (:func:`taskbalance.solvers.simplex.min_norm_simplex`,
:func:`taskbalance.solvers.nonneg_qp.batched_nonneg_qp`) start from the support or active set
of a few dozen FISTA steps (Beck & Teboulle, SIAM J. Imaging Sci. 2, 2009) and then certify
the answer themselves, so nothing here needs to be exact. The step is ``1 / L`` with ``L`` at
least the largest eigenvalue of ``G``: a full ``eigvalsh`` costs ``O(T^3)`` (50 ms at
T = 1000 on one core, a third of MGDA's whole solve there); ``iterations`` power-method
products cost ``O(iterations T^2)``. The Rayleigh quotient approaches the largest eigenvalue
from below, so it is enlarged by ``margin``: a step that is slightly too long only slows the
guess.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = ["fista_iterates", "largest_eigenvalue_bound"]


def largest_eigenvalue_bound(
    G: Tensor, *, iterations: int = 30, margin: float = 1.2, on_simplex: bool = False
) -> float:
    """``margin`` times the power method's Rayleigh quotient of symmetric PSD ``G``, from a
    start vector that is not orthogonal to the usual top eigenvectors (an all-ones start is,
    for two opposite tasks). 0.0 for ``G = 0``.

    ``on_simplex``: the largest eigenvalue of ``P G P`` with ``P = I - 1 1^T / T`` instead,
    the curvature of ``w^T G w`` along the probability simplex (whose directions sum to 0).
    It is what a projected-gradient step on the simplex needs (projection onto the simplex
    ignores a gradient's component along ``1``), and can be far smaller than ``G``'s: task
    gradients that share a common part, or a Gram matrix shifted by ``b 1^T + 1 b^T + c 1 1^T``
    (CAGrad's inner problems), have their large eigenvalues off the simplex."""
    size = G.shape[0]
    steps = torch.arange(size, dtype=G.dtype, device=G.device)
    vector = 1.0 + 0.5 * torch.sin(1.7 * steps + 0.3)

    def apply(v: Tensor) -> Tensor:
        if not on_simplex:
            return G @ v
        image = G @ (v - v.mean())
        return image - image.mean()

    for _ in range(iterations):
        image = apply(vector)
        norm = float(image.norm())
        if not norm > 0:
            return 0.0
        vector = image / norm
    return margin * float(vector @ apply(vector))


def fista_iterates(
    start: Tensor,
    gradient: Callable[[Tensor], Tensor],
    project: Callable[[Tensor], Tensor],
    step: float,
) -> Iterator[Tensor]:
    """FISTA's iterates ``x_k = project(y_k - step * gradient(y_k))``, with the momentum
    point ``y_{k+1} = x_k + (t_k - 1) / t_{k+1} (x_k - x_{k-1})`` and
    ``t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2``, from ``x_0 = y_1 = start``; endless (the caller
    decides when the guess is good enough)."""
    x, momentum_point, t = start, start, 1.0
    while True:
        step_point = project(momentum_point - step * gradient(momentum_point))
        t_next = 0.5 * (1.0 + (1.0 + 4.0 * t * t) ** 0.5)
        momentum_point = step_point + ((t - 1.0) / t_next) * (step_point - x)
        x, t = step_point, t_next
        yield x
