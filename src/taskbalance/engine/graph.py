"""Walking the autograd graph to find the leaf tensors a set of losses depends on.

A non-leaf tensor ``z`` is identified by its *edge*: the output ``z.output_nr`` of the node
``z.grad_fn``. The node alone is not enough: a node with several outputs (a compiled graph,
``torch.split``, a fused kernel) produces ``z`` and its siblings, and a loss computed from a
sibling does not depend on ``z``, although it reaches the same node.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["depends_on", "reachable_leaves"]

Edge = tuple[int, int]


def _edges(tensors: Sequence[torch.Tensor]) -> set[Edge]:
    return {(id(t.grad_fn), t.output_nr) for t in tensors if t.grad_fn is not None}


def reachable_leaves(
    roots: Sequence[torch.Tensor],
    *,
    stop_at: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Leaf tensors requiring grad that ``roots`` depend on, in a stable order.

    With ``stop_at`` (e.g. the shared representation, or several such tensors), the walk does
    not go past them: the result is then the leaves the losses reach *without* passing
    through them (the heads' parameters, plus any shared parameter that bypasses the
    representation, e.g. through a sibling output of the node that produced it).
    """
    stops = [] if stop_at is None else [stop_at] if isinstance(stop_at, torch.Tensor) else stop_at
    stop_edges = _edges(stops)
    seen_nodes: set[int] = set()
    found: list[torch.Tensor] = []
    found_ids: set[int] = {id(t) for t in stops}
    stack = [
        r.grad_fn
        for r in reversed(roots)
        if r.grad_fn is not None and (id(r.grad_fn), r.output_nr) not in stop_edges
    ]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            if id(variable) not in found_ids:
                found.append(variable)
                found_ids.add(id(variable))
            continue
        for child, slot in reversed(node.next_functions):
            if child is not None and (id(child), slot) not in stop_edges:
                stack.append(child)
    return found


def depends_on(root: torch.Tensor, targets: Sequence[torch.Tensor]) -> bool:
    """Whether ``root`` is computed from any of ``targets`` (leaf tensors, or non-leaf
    tensors such as a shared representation), by walking its autograd graph."""
    if root.grad_fn is None:
        return False
    target_edges = _edges(targets)
    target_leaves = {id(t) for t in targets if t.grad_fn is None}
    if (id(root.grad_fn), root.output_nr) in target_edges:
        return True
    seen: set[int] = set()
    stack = [root.grad_fn]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            if id(variable) in target_leaves:
                return True
            continue
        for child, slot in node.next_functions:
            if child is None:
                continue
            if (id(child), slot) in target_edges:
                return True
            stack.append(child)
    return False
