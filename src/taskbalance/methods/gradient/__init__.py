"""Gradient-manipulation methods: combine task gradients (via the Gram matrix or Jacobian)."""

from taskbalance.methods.gradient.mgda import MGDA
from taskbalance.methods.gradient.pcgrad import PCGrad

__all__ = ["MGDA", "PCGrad"]
