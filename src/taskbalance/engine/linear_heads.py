"""Linear task heads: the representation gradients without a backward per task.

Where task ``i``'s loss reads the shared representation ``z`` (``N x D``) only through one
linear layer of its own, ``y_i = z W_i^T + b_i`` (``nn.Linear`` on a batch of vectors: one
``addmm`` / ``mm`` node in the autograd graph), everything the step needs per task follows
from ``Delta_i = dL_i/dy_i`` (``N x C_i``), which one backward of ``sum_i L_i`` stopping at
the heads' outputs gives for every task at once (each ``y_i`` reaches only ``L_i``):

* the rows of the representation Jacobian, ``dL_i/dz = Delta_i W_i``;
* their Gram matrix without forming the ``T x N x D`` rows:
  ``G_ij = <Delta_i W_i, Delta_j W_j> = <Delta_i^T Delta_j, W_i W_j^T>_F``, i.e. with
  ``Delta = [Delta_1 ... Delta_T]`` and ``W = [W_1; ...; W_T]`` stacked along the outputs,
  ``G = S^T ((Delta^T Delta) * (W W^T)) S`` (``S`` the outputs-to-task indicator);
* for the objective ``sum_i a_i L_i``: the representation's output gradient
  ``sum_i a_i Delta_i W_i = (Delta diag(a_S)) W`` and the heads' gradients
  ``a_i Delta_i^T z`` and ``a_i 1^T Delta_i`` (one product for all heads).

This replaces ``T`` backward passes through the heads (:mod:`taskbalance.engine.heads`) by
one, and the ``T x N x D`` rows by ``C x C``-sized products: measured on the benchmark MLP
(T = 10 heads ``Linear(256, 10)``, batch 256, one thread) 1.1 ms against 3.7 ms for the
per-task backwards and the rows' Gram matrix. Any other head (a deeper one, a loss that
reads ``z`` or the head's parameters a second way, a learnable parameter inside the loss,
``alpha``/``beta`` other than 1) is left to :func:`taskbalance.engine.heads.head_backwards`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge, get_gradient_edge

from taskbalance.engine.heads import HeadGradients
from taskbalance.engine.host import to_device

__all__ = ["LinearHeads", "linear_heads"]


class LinearHeads(HeadGradients):
    """:class:`~taskbalance.engine.heads.HeadGradients` of linear heads, kept as the heads'
    output gradients ``Delta_i``; the rows ``dL_i/dz`` are formed only if asked for."""

    def __init__(
        self,
        representation: Tensor,
        deltas: list[Tensor],
        weights: list[Tensor],
        biases: list[Tensor | None],
    ) -> None:
        params = [[w] if b is None else [w, b] for w, b in zip(weights, biases, strict=True)]
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "grads", [])
        self._z = representation.detach()
        self._deltas = deltas
        self._weights = [w.detach() for w in weights]
        sizes = [d.shape[1] for d in deltas]
        self._sizes = sizes
        # each output's task, built on the host and sent without waiting for the device
        segment = torch.repeat_interleave(torch.arange(len(deltas)), torch.tensor(sizes))
        self._segment = to_device(segment, representation.device)

    def __setattr__(self, name: str, value: Any) -> None:  # (the dataclass is frozen)
        object.__setattr__(self, name, value)

    @property
    def rows_dtype_device(self) -> tuple[torch.dtype, torch.device]:
        """The dtype and device of the rows (the representation's)."""
        return self._z.dtype, self._z.device

    @cached_property
    def _stacked(self) -> tuple[Tensor, Tensor]:
        """``(Delta, W)``: the output gradients side by side and the weights stacked."""
        return torch.cat(self._deltas, dim=1), torch.cat(self._weights, dim=0)

    @cached_property
    def rows(self) -> Tensor:
        return torch.stack([d @ w for d, w in zip(self._deltas, self._weights, strict=True)])

    def gramian(self) -> Tensor:
        """``(T, T)`` Gram matrix of the rows ``dL_i/dz``, in the representation's dtype."""
        delta, weight = self._stacked
        products = (delta.T @ delta) * (weight @ weight.T)
        num_tasks = len(self._deltas)
        by_task = products.new_zeros(num_tasks, products.shape[1])
        by_task.index_add_(0, self._segment, products)
        return products.new_zeros(num_tasks, num_tasks).index_add_(1, self._segment, by_task)

    def combined_rows(self, factors: Tensor) -> Tensor:
        delta, weight = self._stacked
        per_output = factors.to(delta.dtype)[self._segment]
        combined: Tensor = (delta * per_output) @ weight
        return combined

    def weighted(
        self, factors: Tensor, unscale: float = 1.0, then: float = 1.0
    ) -> tuple[list[Tensor], list[Tensor]]:
        delta, _ = self._stacked
        per_output = (factors.to(delta.dtype) * unscale)[self._segment]
        scaled = delta * per_output
        weight_grads = torch.split(scaled.T @ self._z, self._sizes)
        bias_grads = torch.split(scaled.sum(dim=0), self._sizes)
        params: list[Tensor] = []
        grads: list[Tensor] = []
        for task_params, weight_grad, bias_grad in zip(
            self.params, weight_grads, bias_grads, strict=True
        ):
            params.extend(task_params)
            grads.append(weight_grad)
            if len(task_params) == 2:
                grads.append(bias_grad)
        if then != 1.0 and grads:
            torch._foreach_mul_(grads, then)
        return params, grads


def linear_heads(
    losses: Sequence[Tensor], representation: Tensor, heads: Sequence[Sequence[Tensor]]
) -> LinearHeads | None:
    """:class:`LinearHeads` when every loss reads ``representation`` through one linear head
    of its own parameters (``heads[i]``) and nothing else that requires a gradient; else None
    (nothing has been computed then). The backward to the heads' outputs frees the graph
    above them."""
    if representation.dim() != 2 or len(losses) != len(heads):
        return None
    z_edge = get_gradient_edge(representation)
    z_key = (id(z_edge.node), z_edge.output_nr)
    readers: list[Any] = []
    weights: list[Tensor] = []
    biases: list[Tensor | None] = []
    for loss, head in zip(losses, heads, strict=True):
        found = _linear_reader(loss, z_key, representation)
        if found is None:
            return None
        reader, weight, bias = found
        own = {id(p) for p in head}
        if own != {id(weight)} | ({id(bias)} if bias is not None else set()):
            return None
        readers.append(reader)
        weights.append(weight)
        biases.append(bias)
    stacked = torch.stack(list(losses))
    deltas = torch.autograd.grad(
        stacked,
        [GradientEdge(r, 0) for r in readers],
        grad_outputs=torch.ones_like(stacked),
        retain_graph=False,
    )
    return LinearHeads(representation, list(deltas), weights, biases)


def _linear_reader(
    loss: Tensor, z_key: tuple[int, int], representation: Tensor
) -> tuple[Any, Tensor, Tensor | None] | None:
    """The one ``addmm``/``mm`` node through which ``loss`` reads ``z``, with the head's
    weight and bias; None where the graph above it holds any other input requiring a
    gradient or another path to ``z``."""
    if loss.grad_fn is None:
        return None
    reader: Any = None
    seen: set[int] = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if getattr(node, "variable", None) is not None:
            return None  # a leaf above the head (a learnable scale inside the loss)
        edges = [(child, slot) for child, slot in node.next_functions if child is not None]
        if any((id(child), slot) == z_key for child, slot in edges):
            if reader is not None or not _is_linear(node, z_key):
                return None  # z read a second way, or not by a linear layer
            reader = node  # (its inputs, z and the head's parameters, are checked below)
            continue
        stack.extend(child for child, _ in edges)
    if reader is None:
        return None
    inputs = reader.next_functions
    transpose = inputs[-1][0]
    if transpose is None or type(transpose).__name__ != "TBackward0":
        return None
    ((weight_node, _),) = transpose.next_functions
    weight = getattr(weight_node, "variable", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        return None
    bias: Tensor | None = None
    if type(reader).__name__ == "AddmmBackward0" and inputs[0][0] is not None:
        bias = getattr(inputs[0][0], "variable", None)
        if not isinstance(bias, Tensor) or bias.shape != (weight.shape[0],):
            return None
    if weight.dtype != representation.dtype or weight.shape[1] != representation.shape[1]:
        return None
    return reader, weight, bias


def _is_linear(node: Any, z_key: tuple[int, int]) -> bool:
    """``y = b + z W^T`` (``AddmmBackward0`` with ``alpha = beta = 1``) or ``y = z W^T``
    (``MmBackward0``), ``z`` the first matrix."""
    name = type(node).__name__
    inputs = node.next_functions
    if name == "AddmmBackward0":
        if len(inputs) != 3 or getattr(node, "_saved_alpha", None) != 1:
            return False
        if getattr(node, "_saved_beta", None) != 1:
            return False
        mat1 = inputs[1]
    elif name == "MmBackward0":
        if len(inputs) != 2:
            return False
        mat1 = inputs[0]
    else:
        return False
    return mat1[0] is not None and (id(mat1[0]), mat1[1]) == z_key
