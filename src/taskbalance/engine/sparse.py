"""Sparse gradients (``nn.Embedding(sparse=True)``) through a step that needs dense ones.

A loss-weighting step is one ordinary backward, and the embedding's gradient stays sparse.
The rows of a task Jacobian, and the gradients' all-reduce, are dense: there a sparse
gradient is made dense by :func:`dense_gradient`, which notes the parameter and the entries
its gradient stored, so that the update written to ``.grad`` can be sparse again
(``torch.optim.SparseAdam`` takes only sparse gradients) with the entries a plain backward
would store: every entry some task's gradient stored, even where the update is exactly 0
(SparseAdam decays the moments of every stored row), and every entry the update moves (after
an all-reduce, the other ranks' rows). The notes live for one step
(:func:`densified_inputs`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["DensifiedGradient", "dense_gradient", "densified_inputs"]


@dataclass
class DensifiedGradient:
    """What a parameter's sparse gradients stored in one step (see :func:`dense_gradient`)."""

    sparse_dim: int
    #: the coalesced indices of each sparse gradient made dense, ``(sparse_dim, nnz)`` each
    indices: list[Tensor] = field(default_factory=list)

    def sparse(self, dense: Tensor) -> Tensor:
        """``dense`` (an update of the parameter) as a coalesced sparse tensor storing the
        union of the noted entries and the entries where ``dense`` is not 0."""
        moved = dense.to_sparse(self.sparse_dim).indices()
        entries = torch.unique(torch.cat([*self.indices, moved], dim=1), dim=1)  # (sorted)
        return torch.sparse_coo_tensor(  # (valid by construction: unique, sorted, in range)
            entries, dense[tuple(entries)], dense.shape, is_coalesced=True, check_invariants=False
        )


_densified: ContextVar[dict[int, DensifiedGradient] | None] = ContextVar("densified", default=None)


@contextlib.contextmanager
def densified_inputs() -> Iterator[dict[int, DensifiedGradient]]:
    """Within this scope, the inputs whose sparse gradients were made dense by
    :func:`dense_gradient`: ``id(input) -> DensifiedGradient``."""
    token = _densified.set({})
    try:
        found = _densified.get()
        assert found is not None
        yield found
    finally:
        _densified.reset(token)


def dense_gradient(grad: Tensor, of: Tensor) -> Tensor:
    """``grad`` (the gradient of ``of``) as a dense tensor, noting ``of`` and the entries
    ``grad`` stored when it was sparse."""
    if not grad.is_sparse:
        return grad
    found = _densified.get()
    grad = grad.coalesce()
    if found is not None:
        note = found.setdefault(id(of), DensifiedGradient(grad.sparse_dim()))
        note.indices.append(grad.indices())
    return grad.to_dense()
