"""Composable gradient transforms (clipping) applied by the balancer."""

from taskbalance.transforms.base import CombinedTransform, PerTaskTransform, Transform
from taskbalance.transforms.clip import ClipGlobalNorm, ClipPerTaskNorm, ClipValue

__all__ = [
    "ClipGlobalNorm",
    "ClipPerTaskNorm",
    "ClipValue",
    "CombinedTransform",
    "PerTaskTransform",
    "Transform",
]
