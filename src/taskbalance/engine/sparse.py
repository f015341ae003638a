"""Sparse gradients (``nn.Embedding(sparse=True)``) through a step that needs dense ones.

A loss-weighting step is one ordinary backward, and the embedding's gradient stays sparse.
The rows of a task Jacobian, and the gradients' all-reduce, are dense: there a sparse
gradient is made dense by :func:`dense_gradient`, which notes the parameter, so that the
update written to ``.grad`` can be sparse again (``torch.optim.SparseAdam`` takes only sparse
gradients). The notes live for one step (:func:`densified_inputs`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from torch import Tensor

__all__ = ["dense_gradient", "densified_inputs"]

_densified: ContextVar[dict[int, int] | None] = ContextVar("densified", default=None)


@contextlib.contextmanager
def densified_inputs() -> Iterator[dict[int, int]]:
    """Within this scope, the inputs whose sparse gradients were made dense by
    :func:`dense_gradient`: ``id(input) -> sparse_dim`` of their gradient."""
    token = _densified.set({})
    try:
        found = _densified.get()
        assert found is not None
        yield found
    finally:
        _densified.reset(token)


def dense_gradient(grad: Tensor, of: Tensor) -> Tensor:
    """``grad`` (the gradient of ``of``) as a dense tensor, noting ``of`` when it was sparse."""
    if not grad.is_sparse:
        return grad
    found = _densified.get()
    if found is not None:
        found[id(of)] = grad.sparse_dim()
    return grad.to_dense()
