"""Multi-task architectures that follow one contract (:class:`MultiTaskModel`)."""

from taskbalance.models.cascade import ESMM, Cascade
from taskbalance.models.contract import MultiTaskModel
from taskbalance.models.cross_stitch import CrossStitch, CrossStitchUnit
from taskbalance.models.hard import HardSharing
from taskbalance.models.moe import PLE, MMoE
from taskbalance.models.soft import SoftSharing

__all__ = [
    "ESMM",
    "PLE",
    "Cascade",
    "CrossStitch",
    "CrossStitchUnit",
    "HardSharing",
    "MMoE",
    "MultiTaskModel",
    "SoftSharing",
]
