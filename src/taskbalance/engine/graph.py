"""Walking the autograd graph to find the leaf tensors a set of losses depends on."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["depends_on", "reachable_leaves"]


def reachable_leaves(
    roots: Sequence[torch.Tensor],
    *,
    stop_at: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Leaf tensors requiring grad that ``roots`` depend on, in a stable order.

    With ``stop_at`` (e.g. the shared representation, or several such tensors), the walk does
    not go past them:
    the result is then the leaves the losses reach *without* passing through it (the heads'
    parameters, plus any shared parameter that bypasses the representation).
    """
    stops = [] if stop_at is None else [stop_at] if isinstance(stop_at, torch.Tensor) else stop_at
    stop_nodes = {id(t.grad_fn) for t in stops if t.grad_fn is not None}
    seen_nodes: set[int] = set()
    found: list[torch.Tensor] = []
    found_ids: set[int] = {id(t) for t in stops}
    stack = [r.grad_fn for r in reversed(roots) if r.grad_fn is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes or id(node) in stop_nodes:
            continue
        seen_nodes.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            if id(variable) not in found_ids:
                found.append(variable)
                found_ids.add(id(variable))
            continue
        for child, _ in reversed(node.next_functions):
            if child is not None:
                stack.append(child)
    return found


def depends_on(root: torch.Tensor, targets: Sequence[torch.Tensor]) -> bool:
    """Whether ``root`` is computed from any of ``targets`` (leaf tensors, or non-leaf
    tensors such as a shared representation), by walking its autograd graph."""
    if root.grad_fn is None:
        return False
    target_nodes = {id(t.grad_fn) for t in targets if t.grad_fn is not None}
    target_leaves = {id(t) for t in targets if t.grad_fn is None}
    seen: set[int] = set()
    stack = [root.grad_fn]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if id(node) in target_nodes:
            return True
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            if id(variable) in target_leaves:
                return True
            continue
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return False
