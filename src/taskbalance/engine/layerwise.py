"""The Gram matrix of the task gradients without ever holding the ``T x P`` Jacobian.

For methods that read only ``G = J J^T`` (MGDA, UPGrad, CAGrad, Nash-MTL, ...) the Jacobian is
an intermediate: ``G = sum_p J_p J_p^T`` over the parameter tensors ``p`` (``J_p`` is the
``T x |p|`` slice of task gradients for ``p``). This module computes the ``T`` vector-Jacobian
products in one vectorised backward (``torch.vmap`` over ``torch.autograd.grad``) and, as soon
as the ``T`` rows of one tensor's gradient exist, folds them into the Gram matrix and drops
them. A gradient hook on each input tensor sees the rows (the hook fires once per tensor, with
the gradient summed over every use of the tensor, so weight sharing is handled exactly); a
small custom autograd function with a ``vmap`` rule lifts the hook out of the vmap so it sees
all ``T`` rows at once, adds ``J_p J_p^T`` to the accumulator, and hands autograd back a
zero-stride tensor instead of the block, so nothing of size ``T x |p|`` outlives its own
contribution. Peak extra memory is then one tensor's ``T x |p|`` block plus the ``T`` copies of
the activation gradients of the backward pass (the same as TorchJD's autogram engine), instead
of the whole ``T x P`` Jacobian.

The weighted combination ``J^T w`` that follows is one ordinary backward of
``sum_i w_i (dL_i/dz)`` (or of ``sum_i w_i L_i``) instead of a matrix product with ``J``;
see :class:`taskbalance.engine.task_gradients.GramianGradients`.

The same mechanism serves methods that need the Jacobian itself: :func:`stacked_jacobian`
copies each tensor's rows straight into their columns of one preallocated ``(T, P)`` matrix,
so the Jacobian exists once, never as blocks plus a concatenated copy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge

from taskbalance.engine.jacobian import warn_once
from taskbalance.engine.layer_rules import LayerRule, RuleMismatchError, RulePlan, plan_rules

__all__ = ["layerwise_gramian", "stacked_jacobian"]

logger = logging.getLogger(__name__)

RowSink = Callable[[int, Tensor], None]
"""Receives ``(input index, (T, *input.shape) rows)`` once per input tensor."""


class _HandRows(torch.autograd.Function):
    """Identity on a gradient; under vmap, hands the ``T`` physical rows to a sink. With
    ``drop``, returns a zero-stride tensor in their place (so autograd keeps nothing of size
    ``T x |p|`` of a parameter's rows); without, the result is meant to be ignored (a node's
    output gradient that the node then uses unchanged)."""

    @staticmethod
    def forward(grad: Tensor, sink: Callable[[Tensor], None], drop: bool) -> Tensor:
        raise RuntimeError("a row hook ran outside of a vectorised backward")

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        pass

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple[int | None, None, None],
        grad: Tensor,
        sink: Callable[[Tensor], None],
        drop: bool,
    ) -> tuple[Tensor, None]:
        dim = in_dims[0]
        if dim is None:  # the same gradient for every row
            rows = grad.unsqueeze(0).expand(info.batch_size, *grad.shape)
        else:
            rows = grad.movedim(dim, 0)
        sink(rows)
        zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
        return (zero.expand(rows.shape[1:]) if drop else zero), None


def _hand_rows(grad: Tensor, sink: Callable[[Tensor], None], drop: bool) -> Tensor:
    result: Tensor = _HandRows.apply(grad, sink, drop)  # type: ignore[no-untyped-call]
    return result


def _hook_for(index: int, sink: RowSink) -> Callable[[Tensor], Tensor]:
    """A gradient hook that hands the ``T`` rows it sees to ``sink`` and drops them."""

    def hook(grad: Tensor) -> Tensor:
        return _hand_rows(grad, lambda rows: sink(index, rows), drop=True)

    return hook


class _RuleReadings:
    """The rules' contributions as their nodes' gradients arrive; ``ok`` turns false when a
    rule's assumptions do not hold in this backward (then the caller falls back)."""

    def __init__(self, plan: RulePlan, total: Tensor) -> None:
        self.plan, self.total = plan, total
        self.read: set[int] = set()
        self.ok = True

    def pre_hook(self, rule: LayerRule) -> Callable[[tuple[Tensor | None, ...]], None]:
        def hook(grad_outputs: tuple[Tensor | None, ...]) -> None:
            first, *others = grad_outputs
            if any(other is not None for other in others):
                self.ok = False  # a second output (a norm's statistics) carries a gradient
            if first is not None:
                _hand_rows(first, lambda rows: self.add(rule, rows), drop=False)

        return hook

    def add(self, rule: LayerRule, rows: Tensor) -> None:
        try:
            self.total.add_(rule.gramian(rows))
        except RuleMismatchError:
            self.ok = False
            return
        self.read.add(id(rule))

    def complete(self) -> bool:
        return self.ok and all(id(rule) in self.read for rule in self.plan.rules)


def _vectorised_rows(
    outputs: Tensor,
    inputs: Sequence[Tensor],
    grad_outputs: Tensor,
    sink: RowSink,
    what: str,
    readings: _RuleReadings | None = None,
    retain_graph: bool = True,
) -> bool:
    """Run the ``T`` vector-Jacobian products as one vectorised backward, handing each input's
    rows to ``sink``; ``False`` (logged once) when the backward cannot be vectorised. With
    ``readings`` (a plan of :mod:`taskbalance.engine.layer_rules`), the inputs its rules cover
    are not differentiated: the rules read their nodes' output gradients instead."""
    plan = None if readings is None else readings.plan
    generic = list(range(len(inputs))) if plan is None else plan.generic
    handles = [
        inputs[i].register_hook(_hook_for(i, sink))  # type: ignore[no-untyped-call]
        for i in generic
    ]
    captured: list[LayerRule] = []
    if plan is not None and readings is not None:
        handles += [rule.node.register_prehook(readings.pre_hook(rule)) for rule in plan.hooked]
        captured = plan.captured
    unreached: list[int] = []
    targets: list[Any] = [inputs[i] for i in generic]
    targets += [GradientEdge(rule.node, 0) for rule in captured]

    def rows(grad_output: Tensor) -> tuple[Tensor, ...]:
        grads = torch.autograd.grad(
            outputs,
            targets,
            grad_outputs=grad_output,
            retain_graph=retain_graph,
            allow_unused=True,
        )
        at_rules = grads[len(generic) :]
        unreached.extend(i for i, g in enumerate(at_rules) if g is None)
        return tuple(torch.zeros(()) if g is None else g for g in at_rules)

    try:
        captured_rows = torch.vmap(rows)(grad_outputs)
    except RuntimeError as error:
        warn_once(error, f"the {what} needs a vectorisable backward (%s); using blocks instead")
        return False
    finally:
        for handle in handles:
            handle.remove()
    if readings is not None:
        if unreached:
            readings.ok = False  # a captured node got no gradient: nothing to read there
        for index, (rule, rows_of_rule) in enumerate(zip(captured, captured_rows, strict=True)):
            if index not in unreached:
                readings.add(rule, rows_of_rule)
    return True


def layerwise_gramian(
    outputs: Tensor, inputs: Sequence[Tensor], grad_outputs: Tensor, *, rules: bool = True
) -> Tensor | None:
    """``(T, T)`` float64 Gram matrix of the rows ``grad_outputs[i]^T d outputs / d inputs``.

    Args:
        outputs: tensor attached to the graph (the losses, or the shared representation).
        inputs: tensors to differentiate with respect to (the shared parameters).
        grad_outputs: ``(T, *outputs.shape)`` output gradients, one per row.
        rules: use the per-layer rules of :mod:`taskbalance.engine.layer_rules` where they
            apply (``Linear``, ``Conv1d/2d``, ``Embedding``, norm affine parameters), so that
            those layers' ``T x |p|`` rows are never formed.

    Returns:
        The Gram matrix, or ``None`` when the model's backward cannot be vectorised (an
        operation without a vmap rule). The products are formed in the rows' precision
        (float32 at least): check :func:`~taskbalance.engine.gramian.in_safe_range` and, for
        gradients beyond ``1e15`` or below ``1e-15``, materialise the Jacobian instead, whose
        Gram matrix is formed with rescaling. The graph is retained.
    """
    num_rows = grad_outputs.shape[0]
    total = torch.zeros(num_rows, num_rows, dtype=torch.float64, device=grad_outputs.device)

    def fold(_: int, rows: Tensor) -> None:
        flat = rows.reshape(num_rows, -1)
        if flat.element_size() < 4:  # float16 / bfloat16 rows (mixed precision): products in fp32
            flat = flat.float()
        total.add_((flat @ flat.T).to(torch.float64))

    plan = plan_rules(outputs, inputs) if rules else None
    if plan is not None and plan.rules:
        readings = _RuleReadings(plan, total)
        if not _vectorised_rows(
            outputs, inputs, grad_outputs, fold, "layer-wise Gram matrix", readings
        ):
            return None
        if readings.complete():
            return total
        logger.debug("a layer rule did not apply in this backward; generic Gram path instead")
        total.zero_()
    if not _vectorised_rows(outputs, inputs, grad_outputs, fold, "layer-wise Gram matrix"):
        return None
    return total


def stacked_jacobian(
    outputs: Tensor, inputs: Sequence[Tensor], grad_outputs: Tensor, *, retain_graph: bool = True
) -> Tensor | None:
    """``(T, P)`` Jacobian, each input's rows written into their columns as they appear.

    Same arguments as :func:`layerwise_gramian`; columns follow ``inputs`` (flattened, in
    order), zeros for an input the outputs do not depend on. ``None`` when the backward
    cannot be vectorised. ``retain_graph=False`` frees the saved tensors it runs through
    (only for a backward known to vectorise: a failure part-way would leave the graph
    unusable for the fallback).
    """
    sizes = [x.numel() for x in inputs]
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    dtype = torch.promote_types(grad_outputs.dtype, inputs[0].dtype)
    matrix = torch.empty(
        grad_outputs.shape[0], offsets[-1], dtype=dtype, device=grad_outputs.device
    )
    written: set[int] = set()

    def store(index: int, rows: Tensor) -> None:
        columns = matrix[:, offsets[index] : offsets[index + 1]]
        columns.copy_(rows.reshape(rows.shape[0], -1))
        written.add(index)

    if not _vectorised_rows(
        outputs, inputs, grad_outputs, store, "stacked Jacobian", retain_graph=retain_graph
    ):
        return None
    for index in set(range(len(sizes))) - written:  # inputs the outputs do not depend on
        matrix[:, offsets[index] : offsets[index + 1]] = 0
    return matrix
