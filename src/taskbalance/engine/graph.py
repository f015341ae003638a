"""Walking the autograd graph to find the leaf parameters a set of losses depends on."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

__all__ = ["reachable_leaves"]


def reachable_leaves(
    roots: Sequence[torch.Tensor], exclude: Iterable[torch.Tensor] = ()
) -> list[torch.Tensor]:
    """Leaf tensors that require grad and that ``roots`` depend on, in a stable order.

    Leaves listed in ``exclude`` (compared by identity) are left out. This is how the balancer
    finds the task-specific parameters (heads) when the user names only the shared ones.
    """
    excluded = {id(t) for t in exclude}
    seen_nodes: set[int] = set()
    found: list[torch.Tensor] = []
    found_ids: set[int] = set()
    stack = [r.grad_fn for r in reversed(roots) if r.grad_fn is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            if id(variable) not in excluded and id(variable) not in found_ids:
                found.append(variable)
                found_ids.add(id(variable))
            continue
        for child, _ in reversed(node.next_functions):
            if child is not None:
                stack.append(child)
    return found
