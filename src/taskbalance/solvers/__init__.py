"""Small exact solvers on ``T x T`` matrices, shared by the gradient methods."""

from taskbalance.solvers.simplex import min_norm_simplex

__all__ = ["min_norm_simplex"]
