"""Per-layer Gram rules: ``J_p J_p^T`` from a layer's input and its output gradients.

The generic Gram-only path (:mod:`taskbalance.engine.layerwise`) lets autograd form each
shared parameter's ``T x |p|`` gradient rows and folds them into ``G``. For the layers that
hold most parameters the rows are not needed: with ``x`` the layer's input and ``g_t`` the
gradient of task ``t``'s loss with respect to the layer's output, the task gradients of the
layer's parameters are simple functions of ``x`` and ``g_t``, and their Gram matrix can be
formed from those alone:

* ``Linear`` (``y = x W^T + b``, ``x`` of shape ``N x in``): ``J_{W,t} = g_t^T x``, so
  ``<J_{W,s}, J_{W,t}> = <g_s, K g_t>`` with the ``N x N`` kernel ``K = x x^T`` (Frobenius
  product), and ``J_{b,t} = 1^T g_t``. Which form is cheaper depends on the shapes:
  through the kernel costs ``N^2 in + T N^2 out + T^2 N out`` multiply-adds and ``N x out``
  per task of memory, through the rows ``T N out in + T^2 out in`` and ``out x in`` per task;
  the cheaper one is taken, the rows formed a slice of output units at a time.
* ``Conv1d``/``Conv2d``: the weight rows are the convolution's weight gradient for each
  task's ``g_t``, formed a slice of output channels at a time (never all ``T x |W|`` rows at
  once); the bias rows are ``g_t`` summed over batch and positions.
* ``Embedding``: ``J_{E,t}`` has a row per vocabulary entry, non-zero only for the indices of
  the batch; the rows of ``g_t`` are summed per distinct index (a sort, no host
  synchronisation) and ``G`` is formed on those ``(T, distinct, D)`` sums, never on
  ``T x V x D`` rows.
* ``LayerNorm``/``BatchNorm`` affine parameters: ``J_{gamma,t} = sum g_t * x_hat`` and
  ``J_{beta,t} = sum g_t`` over the non-feature dimensions, with ``x_hat`` the normalised
  input recomputed from the statistics autograd saved.

A rule is found in the autograd graph itself (the node of ``addmm``/``mm``, ``convolution``,
``embedding``, ``native_layer_norm``, ``native_batch_norm`` and the saved tensors autograd
keeps for its own backward: nothing is recorded during the forward and no module is
needed). It applies only where it is exact: the parameter's gradient reaches it through that
one node alone (a tied weight, a layer called twice, or a weight also used elsewhere keeps the
generic path), through no other operation than a transpose or a dtype copy (autocast). The
rule's node then receives its output gradient in the vectorised backward (a node pre-hook,
or, where nothing below the node needs a gradient, by capturing the gradient at the node's
input), and autograd is not asked for those parameters' gradients at all.

The cost model and shapes follow the standard per-example-gradient identities (Goodfellow,
"Efficient per-example gradient computations", 2015); here the "examples" are the tasks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["LayerRule", "RuleMismatchError", "RulePlan", "plan_rules"]

Node = Any
"""An autograd graph node (``tensor.grad_fn``)."""

_PASS_THROUGH = {"ToCopyBackward0"}
"""Nodes a parameter may pass through on its way to a rule's node: a dtype/device copy."""


def _products(flat: Tensor, other: Tensor | None = None) -> Tensor:
    """``flat @ other^T`` in float32 at least, returned in float64."""
    other = flat if other is None else other
    if flat.element_size() < 4:
        flat, other = flat.float(), other.float()
    return (flat @ other.T).to(torch.float64)


def _widen(t: Tensor) -> Tensor:
    return t.float() if t.is_floating_point() and t.element_size() < 4 else t


class RuleMismatchError(Exception):
    """Raised by a rule whose node turned out not to have the expected shapes (the step then
    takes the generic path)."""


class LayerRule(ABC):
    """The Gram matrix of some shared parameters from one node's output gradient.

    Attributes:
        node: the autograd node whose output gradient the rule reads.
        handled: indices (into the shared parameters) of the parameters it covers.
    """

    def __init__(self, node: Node, handled: Sequence[int]) -> None:
        self.node = node
        self.handled = tuple(handled)

    @abstractmethod
    def gramian(self, grad: Tensor) -> Tensor:
        """``(T, T)`` float64 contribution of the handled parameters, from the ``T`` rows
        ``grad`` of the gradient of the node's first output."""


class LinearRule(LayerRule):
    """``y = beta b + alpha x W^T`` (``addmm``/``mm``): weight through the kernel
    ``x x^T`` or through the rows, whichever costs fewer multiply-adds."""

    def __init__(
        self,
        node: Node,
        handled: Sequence[int],
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        alpha: float = 1.0,
        beta: float = 1.0,
    ) -> None:
        super().__init__(node, handled)
        self.x, self.weight, self.bias = x, weight is not None, bias is not None
        self.alpha, self.beta = alpha, beta
        out = weight.shape[0] if weight is not None else None
        self.expected = (x.shape[0], out, None if bias is None else bias.shape[0])

    def gramian(self, grad: Tensor) -> Tensor:
        num_tasks = grad.shape[0]
        rows, out, bias_size = self.expected
        if grad.dim() != 3 or grad.shape[1] != rows or out not in (None, grad.shape[2]):
            raise RuleMismatchError("the output gradient does not have the layer's shape")
        if bias_size is not None and bias_size != grad.shape[2]:
            raise RuleMismatchError("a broadcast bias")  # its gradient sums over the units too
        g = _widen(grad)  # (T, N, out)
        total = torch.zeros(num_tasks, num_tasks, dtype=torch.float64, device=grad.device)
        if self.bias:
            total += self.beta**2 * _products(g.sum(1))
        if self.weight:
            x = _widen(self.x.detach()).to(g.dtype)
            total += self.alpha**2 * linear_weight_gramian(g, x)
        return total


def linear_weight_gramian(g: Tensor, x: Tensor) -> Tensor:
    """``<g_s^T x, g_t^T x>`` for ``g`` of shape ``(T, N, out)`` and ``x`` of ``(N, in)``,
    without holding more than one ``(T, N, out)``-sized temporary."""
    num_tasks, n, out = g.shape
    fan_in = x.shape[1]
    budget = max(g.numel(), 1)
    through_kernel = n * n * fan_in + num_tasks * n * n * out + num_tasks**2 * n * out
    through_rows = num_tasks * n * out * fan_in + num_tasks**2 * out * fan_in
    flat = g.reshape(num_tasks, -1)
    if through_kernel < through_rows:
        kernel = x @ x.T  # (N, N)
        chunk = max(1, budget // max(n * out, 1))
        total = torch.empty(num_tasks, num_tasks, dtype=torch.float64, device=g.device)
        for start in range(0, num_tasks, chunk):
            mixed = torch.matmul(kernel, g[start : start + chunk])  # (c, N, out)
            total[:, start : start + chunk] = _products(flat, mixed.reshape(mixed.shape[0], -1))
        return total
    chunk = max(1, budget // max(num_tasks * fan_in, 1))
    total = torch.zeros(num_tasks, num_tasks, dtype=torch.float64, device=g.device)
    for start in range(0, out, chunk):
        rows = torch.matmul(g[:, :, start : start + chunk].transpose(1, 2), x)  # (T, c, in)
        total += _products(rows.reshape(num_tasks, -1))
    return total


class ConvolutionRule(LayerRule):
    """``convolution`` (not transposed): the weight's rows a slice of output channels at a
    time (the convolution's weight gradient per task), the bias from ``g`` summed."""

    def __init__(
        self, node: Node, handled: Sequence[int], weight: bool, bias: bool, params: dict[str, Any]
    ) -> None:
        super().__init__(node, handled)
        self.weight, self.bias, self.params = weight, bias, params

    def gramian(self, grad: Tensor) -> Tensor:
        num_tasks = grad.shape[0]
        g = _widen(grad)  # (T, B, C_out, *positions)
        total = torch.zeros(num_tasks, num_tasks, dtype=torch.float64, device=grad.device)
        if self.bias:
            reduce = [1, *range(3, g.dim())]
            total += _products(g.sum(reduce))
        if self.weight:
            total += self._weight_gramian(g)
        return total

    def _weight_gramian(self, g: Tensor) -> Tensor:
        p = self.params
        x = _widen(p["input"].detach()).to(g.dtype)
        w = p["weight"].detach().to(g.dtype)
        num_tasks, channels = g.shape[0], g.shape[2]
        per_channel = w[0].numel()
        groups = p["groups"]
        # a slice's T rows hold at most as many numbers as the T output gradients themselves
        step = channels if groups != 1 else max(1, g[0].numel() // max(per_channel, 1))
        total = torch.zeros(num_tasks, num_tasks, dtype=torch.float64, device=g.device)
        for start in range(0, channels, step):
            stop = min(channels, start + step)
            rows = torch.stack(
                [
                    torch.ops.aten.convolution_backward(
                        g[t, :, start:stop],
                        x,
                        w[start:stop],
                        None,
                        p["stride"],
                        p["padding"],
                        p["dilation"],
                        False,
                        p["output_padding"],
                        groups,
                        [False, True, False],
                    )[1]
                    for t in range(num_tasks)
                ]
            )
            total += _products(rows.reshape(num_tasks, -1))
        return total


class EmbeddingRule(LayerRule):
    """``embedding``: the rows of ``g`` summed per distinct index, ``G`` of those sums."""

    def __init__(self, node: Node, handled: Sequence[int], indices: Tensor, padding: int) -> None:
        super().__init__(node, handled)
        self.indices, self.padding = indices, padding

    def gramian(self, grad: Tensor) -> Tensor:
        num_tasks = grad.shape[0]
        flat_index = self.indices.reshape(-1)
        g = _widen(grad.reshape(num_tasks, flat_index.numel(), -1))  # (T, N, D)
        if self.padding >= 0:
            g = g * (flat_index != self.padding).to(g.dtype).view(1, -1, 1)
        ordered, order = torch.sort(flat_index)
        starts = torch.ones_like(ordered, dtype=torch.long)
        starts[1:] = (ordered[1:] != ordered[:-1]).long()
        segment_sorted = torch.cumsum(starts, 0) - 1
        segment = torch.empty_like(segment_sorted)
        segment[order] = segment_sorted
        summed = torch.zeros_like(g).index_add_(1, segment, g)
        return _products(summed.reshape(num_tasks, -1))


class NormalizationRule(LayerRule):
    """Affine parameters of ``native_layer_norm``/``native_batch_norm``:
    ``J_gamma = sum g * x_hat``, ``J_beta = sum g`` over the non-feature dimensions."""

    def __init__(
        self,
        node: Node,
        handled: Sequence[int],
        normalised: Callable[[], Tensor],
        feature_dims: Sequence[int],
        weight: bool,
        bias: bool,
    ) -> None:
        super().__init__(node, handled)
        self.normalised, self.feature_dims = normalised, tuple(feature_dims)
        self.weight, self.bias = weight, bias

    def gramian(self, grad: Tensor) -> Tensor:
        num_tasks = grad.shape[0]
        g = _widen(grad)
        reduce = [d + 1 for d in range(g.dim() - 1) if d not in self.feature_dims]
        rows: list[Tensor] = []
        if self.weight:
            x_hat = self.normalised().to(g.dtype)
            rows.append((g * x_hat).sum(reduce).reshape(num_tasks, -1))
        if self.bias:
            rows.append(g.sum(reduce).reshape(num_tasks, -1))
        return _products(torch.cat(rows, dim=1))


@dataclass
class RulePlan:
    """Which shared parameters get a rule, and how each rule's node gets its gradient.

    Attributes:
        rules: the rules found.
        generic: indices of the shared parameters autograd differentiates as before.
        hooked: rules whose node runs in the backward anyway (read by a node pre-hook).
        captured: rules whose node nothing below needs (their input gradient is captured).
    """

    rules: list[LayerRule] = field(default_factory=list)
    generic: list[int] = field(default_factory=list)
    hooked: list[LayerRule] = field(default_factory=list)
    captured: list[LayerRule] = field(default_factory=list)


class _Graph:
    """The nodes reachable from some roots and how many times each is consumed."""

    def __init__(self, roots: Sequence[Node]) -> None:
        self.nodes: dict[int, Node] = {}
        self.consumers: dict[int, int] = {}
        stack = [r for r in roots if r is not None]
        for root in stack:
            self.consumers[id(root)] = self.consumers.get(id(root), 0) + 1
        while stack:
            node = stack.pop()
            if id(node) in self.nodes:
                continue
            self.nodes[id(node)] = node
            for child, _ in node.next_functions:
                if child is None:
                    continue
                self.consumers[id(child)] = self.consumers.get(id(child), 0) + 1
                if id(child) not in self.nodes:
                    stack.append(child)

    def leaf_through(self, child: Node, transposed: bool) -> Tensor | None:
        """The leaf tensor a node's input edge ``child`` comes straight from (through one
        transpose when ``transposed``, and dtype copies), each node on the way consumed once."""
        seen_transpose = False
        while child is not None and self.consumers.get(id(child)) == 1:
            name = type(child).__name__
            if name == "AccumulateGrad":
                return child.variable if seen_transpose == transposed else None
            if name == "TBackward0" and transposed and not seen_transpose:
                seen_transpose = True
            elif name not in _PASS_THROUGH:
                return None
            (child, _), *rest = child.next_functions
            if rest:
                return None
        return None


def has_gradient_hooks(tensor: Tensor) -> bool:
    """Whether ``tensor.register_hook`` hooks change its gradient (e.g. a mask that freezes
    some rows): a rule forms ``J_p J_p^T`` without the gradient ever existing, so such a
    parameter keeps the generic path, where autograd runs the hooks on each task's row."""
    return bool(getattr(tensor, "_backward_hooks", None))


def _edge(node: Node, index: int) -> Node:
    return node.next_functions[index][0] if index < len(node.next_functions) else None


def _match(
    graph: _Graph, node: Node, shared: dict[int, int], inputs: Sequence[Tensor]
) -> LayerRule | None:
    """The rule for ``node``, if it is one of the known layers and owns shared parameters."""
    name = type(node).__name__

    def owned(index: int, transposed: bool = False, dims: int | None = None) -> int | None:
        leaf = graph.leaf_through(_edge(node, index), transposed)
        if leaf is None or id(leaf) not in shared or (dims is not None and leaf.dim() != dims):
            return None
        if has_gradient_hooks(leaf):  # (autograd applies them to its gradient; a rule would not)
            return None
        return shared[id(leaf)]

    if name in ("AddmmBackward0", "MmBackward0"):
        with_bias = name == "AddmmBackward0"
        w = owned(2 if with_bias else 1, transposed=True, dims=2)
        b = owned(0, dims=1) if with_bias else None
        if w is None and b is None:  # (saved tensors are read only for the trunk's own nodes)
            return None
        x = node._saved_mat1 if with_bias else node._saved_self
        if x is None or x.dim() != 2:
            return None
        alpha = float(node._saved_alpha) if with_bias else 1.0
        beta = float(node._saved_beta) if with_bias else 1.0
        handled = [i for i in (w, b) if i is not None]
        weight = None if w is None else inputs[w]
        bias = None if b is None else inputs[b]
        return LinearRule(node, handled, x, weight, bias, alpha, beta)
    if name == "ConvolutionBackward0":
        if node._saved_transposed:
            return None
        w, b = owned(1), owned(2, dims=1)
        if w is None and b is None:
            return None
        params = {
            "input": node._saved_input,
            "weight": node._saved_weight,
            "stride": list(node._saved_stride),
            "padding": list(node._saved_padding),
            "dilation": list(node._saved_dilation),
            "output_padding": list(node._saved_output_padding),
            "groups": int(node._saved_groups),
        }
        handled = [i for i in (w, b) if i is not None]
        return ConvolutionRule(node, handled, w is not None, b is not None, params)
    if name == "EmbeddingBackward0":
        w = owned(0, dims=2)
        if w is None or node._saved_scale_grad_by_freq:
            return None
        return EmbeddingRule(node, [w], node._saved_indices, int(node._saved_padding_idx))
    if name in ("NativeLayerNormBackward0", "NativeBatchNormBackward0"):
        w, b = owned(1), owned(2)
        if w is None and b is None:
            return None
        handled = [i for i in (w, b) if i is not None]
        normalised, feature_dims = _normaliser(node, name)
        return NormalizationRule(
            node, handled, normalised, feature_dims, w is not None, b is not None
        )
    return None


def _normaliser(node: Node, name: str) -> tuple[Callable[[], Tensor], list[int]]:
    """``x_hat`` recomputed from what autograd saved, and the feature dimensions."""
    x = node._saved_input
    if name == "NativeLayerNormBackward0":
        mean, rstd = node._saved_result1, node._saved_result2
        count = len(node._saved_normalized_shape)
        return (lambda: (x.detach() - mean) * rstd), list(range(x.dim() - count, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    if node._saved_training:
        mean, invstd = node._saved_result1, node._saved_result2
        return (lambda: (x.detach() - mean.view(shape)) * invstd.view(shape)), [1]
    running_mean, running_var = node._saved_running_mean, node._saved_running_var
    eps = float(node._saved_eps)

    def from_running() -> Tensor:
        centred: Tensor = x.detach() - running_mean.view(shape)
        return centred * torch.rsqrt(running_var.view(shape) + eps)

    return from_running, [1]


def plan_rules(outputs: Tensor, inputs: Sequence[Tensor]) -> RulePlan:
    """Find the rules for ``inputs`` (the shared parameters) in the graph of ``outputs``."""
    plan = RulePlan()
    if outputs.grad_fn is None:
        plan.generic = list(range(len(inputs)))
        return plan
    graph = _Graph([outputs.grad_fn])
    shared = {id(p): i for i, p in enumerate(inputs)}
    handled: set[int] = set()
    for node in graph.nodes.values():
        rule = _match(graph, node, shared, inputs)
        if rule is not None and not handled.intersection(rule.handled):
            plan.rules.append(rule)
            handled.update(rule.handled)
    plan.generic = [i for i in range(len(inputs)) if i not in handled]
    if not plan.rules:
        return plan
    reaches = _reaching(
        graph, {id(r.node) for r in plan.rules}, {id(inputs[i]) for i in plan.generic}
    )
    for rule in plan.rules:
        below = any(
            child is not None and reaches.get(id(child), False)
            for child, _ in rule.node.next_functions
        )
        (plan.hooked if below else plan.captured).append(rule)
    return plan


def _reaching(graph: _Graph, rule_nodes: set[int], generic: set[int]) -> dict[int, bool]:
    """Per node: whether a rule's node or a generic parameter lies at or below it (then
    autograd runs it). Iterative post-order: graphs can be deeper than Python's stack."""
    result: dict[int, bool] = {}
    for start in graph.nodes.values():
        if id(start) in result:
            continue
        stack: list[tuple[Node, bool]] = [(start, False)]
        while stack:
            node, expanded = stack.pop()
            key = id(node)
            if key in result:
                continue
            variable = getattr(node, "variable", None)
            if isinstance(variable, Tensor):
                result[key] = id(variable) in generic
                continue
            children = [c for c, _ in node.next_functions if c is not None]
            if expanded:
                result[key] = key in rule_nodes or any(result.get(id(c), False) for c in children)
                continue
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in result)
    return result
