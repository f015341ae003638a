"""Gradient-manipulation methods: combine task gradients (via the Gram matrix or Jacobian)."""

from taskbalance.methods.gradient.aligned_mtl import AlignedMTL
from taskbalance.methods.gradient.cagrad import CAGrad
from taskbalance.methods.gradient.config import ConFIG
from taskbalance.methods.gradient.cr_mogm import CRMOGM
from taskbalance.methods.gradient.db_mtl import DBMTL
from taskbalance.methods.gradient.dual_cone import DualProj, UPGrad
from taskbalance.methods.gradient.excess_mtl import ExcessMTL
from taskbalance.methods.gradient.graddrop import GradDrop
from taskbalance.methods.gradient.gradnorm import GradNorm
from taskbalance.methods.gradient.gradvac import GradVac
from taskbalance.methods.gradient.imtl import IMTL
from taskbalance.methods.gradient.imtl_g import IMTLG
from taskbalance.methods.gradient.mgda import MGDA
from taskbalance.methods.gradient.moco import MoCo
from taskbalance.methods.gradient.nash_mtl import FairGrad, NashMTL
from taskbalance.methods.gradient.pcd import PCD
from taskbalance.methods.gradient.pcgrad import PCGrad

__all__ = [
    "CRMOGM",
    "DBMTL",
    "IMTL",
    "IMTLG",
    "MGDA",
    "PCD",
    "AlignedMTL",
    "CAGrad",
    "ConFIG",
    "DualProj",
    "ExcessMTL",
    "FairGrad",
    "GradDrop",
    "GradNorm",
    "GradVac",
    "MoCo",
    "NashMTL",
    "PCGrad",
    "UPGrad",
]
