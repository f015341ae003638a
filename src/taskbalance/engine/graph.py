"""Walking the autograd graph to find the leaf tensors a set of losses depends on.

A non-leaf tensor ``z`` is identified by its *edge*: the output ``z.output_nr`` of the node
``z.grad_fn``. The node alone is not enough: a node with several outputs (a compiled graph,
``torch.split``, a fused kernel) produces ``z`` and its siblings, and a loss computed from a
sibling does not depend on ``z``, although it reaches the same node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["depends_on", "leaves_by_root", "reachable_leaves", "reentrant_checkpoint_in"]

Edge = tuple[int, int]


def _accumulate_grad_type() -> type[Any]:
    """The type of the node that ends the graph at a leaf tensor (its ``variable``)."""
    leaf = torch.zeros(1, requires_grad=True)
    return type(leaf.expand(1).grad_fn.next_functions[0][0])  # type: ignore[union-attr]


# comparing a node's type with it is ~2x cheaper than asking every node for a ``variable``
# attribute that all but the leaves lack
_ACCUMULATE_GRAD = _accumulate_grad_type()


def _edges(tensors: Sequence[torch.Tensor]) -> set[Edge]:
    return {(id(t.grad_fn), t.output_nr) for t in tensors if t.grad_fn is not None}


def _walk(
    roots: Sequence[torch.Tensor], stop_edges: set[Edge], seen: set[int] | None = None
) -> tuple[list[torch.Tensor], bool]:
    """Depth-first walk from ``roots`` that does not cross ``stop_edges``: the leaf tensors
    reached (in a stable order), and whether a stop edge was met. The ids of the nodes
    visited are added to ``seen`` when given."""
    seen = set() if seen is None else seen
    found: list[torch.Tensor] = []
    found_ids: set[int] = set()
    met = False
    stack: list[Any] = []
    for root in reversed(roots):
        if root.grad_fn is None:
            continue
        if (id(root.grad_fn), root.output_nr) in stop_edges:
            met = True
        else:
            stack.append(root.grad_fn)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if type(node) is _ACCUMULATE_GRAD:
            variable = node.variable
            if id(variable) not in found_ids:
                found.append(variable)
                found_ids.add(id(variable))
            continue
        for child, slot in reversed(node.next_functions):
            if child is None:
                continue
            if (id(child), slot) in stop_edges:
                met = True
            else:
                stack.append(child)
    return found, met


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
    excluded = {id(t) for t in stops}
    leaves, _ = _walk(roots, _edges(stops))
    return [leaf for leaf in leaves if id(leaf) not in excluded]


def leaves_by_root(
    roots: Sequence[torch.Tensor], *, stop_at: torch.Tensor | None = None
) -> tuple[list[list[torch.Tensor]], bool]:
    """For each root, the leaf tensors it reaches without passing through ``stop_at`` (as
    :func:`reachable_leaves` for that root alone, in the joint walk's order), and whether
    the roots' graphs (below ``stop_at``) are disjoint: no node reached from two roots, e.g.
    one head per task with its own parameters and no computation shared between heads.

    One depth-first walk, then each node's set of roots (a bit mask) is pushed down the
    graph in topological order: linear in the graph's size for any number of roots."""
    stops = set() if stop_at is None else _edges([stop_at])
    seen: set[int] = set()
    postorder: list[Any] = []
    leaves: list[tuple[Any, torch.Tensor]] = []
    masks: dict[int, int] = {}
    for index, root in enumerate(roots):
        if root.grad_fn is None or (id(root.grad_fn), root.output_nr) in stops:
            continue
        masks[id(root.grad_fn)] = masks.get(id(root.grad_fn), 0) | (1 << index)
        stack: list[tuple[Any, bool]] = [(root.grad_fn, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                postorder.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            if type(node) is _ACCUMULATE_GRAD:
                variable = node.variable
                if variable is not stop_at:
                    leaves.append((node, variable))
                continue
            for child, slot in reversed(node.next_functions):
                if child is not None and (id(child), slot) not in stops:
                    stack.append((child, False))
    disjoint = True
    for node in reversed(postorder):  # parents before children
        mask = masks.get(id(node), 0)
        disjoint = disjoint and mask & (mask - 1) == 0
        if type(node) is _ACCUMULATE_GRAD:
            continue
        for child, slot in node.next_functions:
            if child is not None and (id(child), slot) not in stops:
                masks[id(child)] = masks.get(id(child), 0) | mask
    per_root: list[list[torch.Tensor]] = [[] for _ in roots]
    for node, leaf in leaves:
        mask = masks[id(node)]
        while mask:
            lowest = mask & -mask
            per_root[lowest.bit_length() - 1].append(leaf)
            mask ^= lowest
    return per_root, disjoint


def depends_on(root: torch.Tensor, targets: Sequence[torch.Tensor]) -> bool:
    """Whether ``root`` is computed from any of ``targets`` (leaf tensors, or non-leaf
    tensors such as a shared representation), by walking its autograd graph."""
    leaves, met = _walk([root], _edges(targets))
    target_leaves = {id(t) for t in targets if t.grad_fn is None}
    return met or any(id(leaf) in target_leaves for leaf in leaves)


def _reentrant_checkpoint_type() -> type[Any] | None:
    """The node type of a reentrant ``torch.utils.checkpoint`` segment, where torch has it."""
    try:
        from torch.utils.checkpoint import CheckpointFunction
    except ImportError:  # pragma: no cover (every supported torch has it)
        return None
    node_type: type[Any] | None = getattr(CheckpointFunction, "_backward_cls", None)
    return node_type


_REENTRANT_CHECKPOINT = _reentrant_checkpoint_type()


def reentrant_checkpoint_in(roots: Sequence[torch.Tensor]) -> bool:
    """Whether the graph of ``roots`` holds a segment of ``torch.utils.checkpoint(...,
    use_reentrant=True)``: its node hides the parameters used inside it (they are no edges of
    the graph; its backward runs an inner ``backward`` that writes their ``.grad`` itself), so
    ``autograd.grad`` with those parameters as inputs gets nothing for them."""
    if _REENTRANT_CHECKPOINT is None:
        return False
    layer = {id(root.grad_fn): root.grad_fn for root in roots if root.grad_fn is not None}
    seen: set[int] = set()
    while layer:  # breadth first, one layer of new nodes at a time
        if any(type(node) is _REENTRANT_CHECKPOINT for node in layer.values()):
            return True
        seen.update(layer)
        layer = {
            id(child): child
            for node in layer.values()
            for child, _ in node.next_functions
            if child is not None and id(child) not in seen
        }
    return False
