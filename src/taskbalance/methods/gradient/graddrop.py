"""Gradient sign dropout (``graddrop``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from taskbalance.engine.needs import Need
from taskbalance.methods._validation import check_fraction, check_seed
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import register

_EPS = 1e-7
_CHUNK_ENTRIES = 2**20


@register
class GradDrop(Method):
    """Gradient sign dropout (Chen et al., NeurIPS 2020).

    For every coordinate, the sign purity ``P = 1/2 (1 + sum_i G_i / sum_i |G_i|)`` is the
    probability of keeping the positive parts: with ``U ~ Uniform(0, 1)``, task ``i``'s
    gradient ``g_i`` is kept where ``(P > U and G_i > 0)`` or ``(P < U and G_i < 0)`` and
    dropped elsewhere (scaled by ``leak`` instead of 0 when ``leak > 0``); the update is the sum
    of the masked gradients. Conflicting signs are thus resolved stochastically in proportion
    to their mass.

    As in the paper, use it at ``level="representation"``, where ``g_i`` is the gradient of
    task ``i``'s loss with respect to the shared activations ``A`` and the signs are read from
    ``G_i = sum_batch sign(A) o g_i`` (Algorithm 1; the authors' code, ``lingvo``'s
    ``GradDrop`` with ``use_input_sign_only`` and ``marginalize_batch_dim``, and LibMTL do the
    same): the sign of the gradient that reaches the weights producing ``A`` from a sample is
    that of ``g_i`` times the sign of the activation, and the mask is shared by the batch (the
    first dimension of the representation). ``input_sign=False`` leaves out ``sign(A)``
    (``G_i = sum_batch g_i``), as TorchJD's ``GradDrop`` does (lines 10-15 of Algorithm 1,
    which see the rows only). At parameter level each parameter coordinate is its own unit and
    ``G_i = g_i``.

    Args:
        leak: weight of the dropped gradients, in ``[0, 1)`` (paper: 0).
        seed: seed of the uniform draws (checkpointed).
        input_sign: multiply the representation gradients by the sign of the representation
            before reading their signs (paper, default).

    Scale: sum of the masked task gradients (paper, LibMTL).
    """

    name = "graddrop"
    scale = "sum of masked gradients"
    needs_note = 'Jacobian (use `level="representation"`)'
    family = "gradient manipulation"
    needs = Need.JACOBIAN
    reference = (
        "Chen et al., Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign "
        "Dropout, NeurIPS 2020."
    )
    state_attributes = ("generator",)

    def __init__(self, leak: float = 0.0, seed: int = 0, input_sign: bool = True) -> None:
        self.leak = check_fraction(self.name, "leak", leak)
        self.seed = check_seed("graddrop", seed)
        if not isinstance(input_sign, bool):
            raise TypeError(f"graddrop: input_sign must be True or False, got {input_sign!r}")
        self.input_sign = input_sign
        self.generator = torch.Generator().manual_seed(self.seed)

    def hparams(self) -> dict[str, Any]:
        return {"leak": self.leak, "seed": self.seed, "input_sign": self.input_sign}

    def combine(self, ctx: Context) -> Combination:
        J = ctx.require_jacobian(self.name)
        num_tasks = J.shape[0]
        if J.numel() == 0:  # no coordinates to drop signs in
            return Combination(direction=J.sum(dim=0))
        signs = self._input_signs(ctx, J)
        pooled = (
            ctx.level == "representation"
            and len(ctx.block_shapes) == 1
            and len(ctx.block_shapes[0]) > 1
        )
        if pooled:
            per_sample = J.reshape(num_tasks, ctx.block_shapes[0][0], -1)
            signed = (
                per_sample
                if signs is None
                else per_sample * signs.reshape(1, *per_sample.shape[1:])
            )
            units = signed.sum(dim=1)  # (T, features): the mask is shared by the batch
            _, total, mass = _sums(units)
            keep_positive, keep_negative = self._draw(total, mass)
            keep = (keep_positive & (units > 0)) | (keep_negative & (units < 0))
            mask = self.leak + (1 - self.leak) * keep.to(J.dtype)
            masked = mask.unsqueeze(1) * per_sample
            return Combination(direction=masked.sum(dim=0).reshape(-1))
        # Each coordinate is its own unit, so the masked sum needs no T x P mask:
        # sum_i keep_i g_i = [P > U] sum_{G_i > 0} g_i + [P < U] sum_{G_i < 0} g_i; with
        # G_i = s g_i (s = sign(A) in {-1, 0, 1}, else 1) the parts are
        # (s^2 sum_i g_i +- s sum_i |g_i|) / 2 and the purity reads s sum g_i, |s| sum |g_i|.
        scale, total, mass = _sums(J)
        if signs is None:
            keep_positive, keep_negative = self._draw(total, mass)
            kept = 0.5 * ((total + mass) * keep_positive + (total - mass) * keep_negative)
        else:
            keep_positive, keep_negative = self._draw(signs * total, signs.abs() * mass)
            kept = 0.5 * (
                signs.square() * total * (keep_positive | keep_negative)
                + signs * mass * (keep_positive.to(J.dtype) - keep_negative.to(J.dtype))
            )
        return Combination(direction=scale * (self.leak * total + (1 - self.leak) * kept))

    def _input_signs(self, ctx: Context, J: Tensor) -> Tensor | None:
        """``sign(A)`` flattened as the Jacobian's columns, where the paper reads it."""
        if not self.input_sign or ctx.level != "representation" or ctx.representation is None:
            return None
        shapes = tuple(tuple(r.shape) for r in ctx.representation)
        if shapes != tuple(tuple(s) for s in ctx.block_shapes):
            raise RuntimeError(
                f"graddrop: the representation's shapes {shapes} are not the Jacobian's blocks "
                f"{[tuple(s) for s in ctx.block_shapes]}"
            )
        return torch.cat([torch.sign(r).reshape(-1) for r in ctx.representation]).to(
            device=J.device, dtype=J.dtype
        )

    def _draw(self, total: Tensor, mass: Tensor) -> tuple[Tensor, Tensor]:
        """Per unit: keep the positive parts (``P > U``), keep the negative parts (``P < U``)."""
        purity = 0.5 * (1 + total / (mass + _EPS))
        uniform = torch.rand(purity.shape, generator=self.generator, dtype=purity.dtype)
        uniform = uniform.to(purity.device)
        return purity > uniform, purity < uniform


def _sums(units: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(s, sum_i u_i / s, sum_i |u_i| / s)`` with ``s = max |u|``: the purity is scale-free
    and the sums cannot overflow. Column chunks of about a million entries keep the
    temporaries small (no ``T x P`` copy)."""
    low, high = torch.aminmax(units)  # (vector_norm(ord=inf) is 20x slower on CPU)
    scale = torch.maximum(-low, high).clamp_min(torch.finfo(units.dtype).tiny)
    columns = max(1, _CHUNK_ENTRIES // max(1, units.shape[0]))
    totals, masses = [], []
    for start in range(0, units.shape[1], columns):
        chunk = units[:, start : start + columns]
        normalised = chunk / scale
        totals.append(normalised.sum(dim=0))
        masses.append(normalised.abs_().sum(dim=0))
    return scale, torch.cat(totals), torch.cat(masses)
