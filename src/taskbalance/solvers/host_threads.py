"""NumPy/SciPy's BLAS on as many threads as torch.

The host solvers call SciPy's LAPACK (and NumPy's BLAS) between torch operations. Their
OpenBLAS keeps its own thread pool, sized to the machine rather than to
``torch.get_num_threads()``, and its threads spin for a while after each call: with torch on
one thread, a NumPy product in the middle of the dual-cone solver made the next factorisations
2.6-3.5x slower (measured at T = 1000). :func:`blas_threads_like_torch` limits them to
torch's thread count for the duration of a solve, through ``threadpoolctl`` (installed with
scikit-learn, i.e. with the ``cli`` and ``bench`` extras); without it, it does nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["blas_threads_like_torch"]

_HAS_THREADPOOLCTL = importlib.util.find_spec("threadpoolctl") is not None
_controller: Any = None


@contextlib.contextmanager
def blas_threads_like_torch() -> Iterator[None]:
    """Within the block, NumPy/SciPy's BLAS uses at most ``torch.get_num_threads()``
    threads (~20 us per use, after a first call of ~1 ms that finds the loaded libraries)."""
    global _controller
    if not _HAS_THREADPOOLCTL:
        yield
        return
    if _controller is None:
        if importlib.util.find_spec("scipy") is not None:
            import scipy.linalg  # noqa: F401 (load SciPy's BLAS before looking for it)
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    with _controller.limit(limits=torch.get_num_threads(), user_api="blas"):
        yield
