"""Balancing methods: one small class per method, created by name through the registry.

>>> from taskbalance import methods
>>> "pcgrad" in methods.available()
True
>>> methods.create("pcgrad", seed=1)
PCGrad(seed=1, reduction='sum')
"""

from taskbalance.methods import gradient, weighting
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import available, create, get, register

__all__ = [
    "Combination",
    "Context",
    "Method",
    "available",
    "create",
    "get",
    "gradient",
    "register",
    "weighting",
]
