"""Gradient-manipulation methods: combine task gradients (via the Gram matrix or Jacobian)."""

from taskbalance.methods.gradient.aligned_mtl import AlignedMTL
from taskbalance.methods.gradient.cagrad import CAGrad
from taskbalance.methods.gradient.config import ConFIG
from taskbalance.methods.gradient.dual_cone import DualProj, UPGrad
from taskbalance.methods.gradient.imtl_g import IMTLG
from taskbalance.methods.gradient.mgda import MGDA
from taskbalance.methods.gradient.nash_mtl import FairGrad, NashMTL
from taskbalance.methods.gradient.pcgrad import PCGrad

__all__ = [
    "IMTLG",
    "MGDA",
    "AlignedMTL",
    "CAGrad",
    "ConFIG",
    "DualProj",
    "FairGrad",
    "NashMTL",
    "PCGrad",
    "UPGrad",
]
