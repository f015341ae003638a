"""Composable gradient transforms (clipping) applied by the balancer.

Choosing a clipping rule:

* ``ClipGlobalNorm``: a fixed bound on the step; simple, but the threshold must be tuned and
  one task's spike shrinks every task's contribution.
* ``ClipPerTaskNorm``: a fixed bound per task before combining: no task can dominate through
  an exploding gradient.
* ``AutoClip`` / ``AutoClipPerTask``: the threshold is a percentile of the observed norms, so
  there is nothing to tune and it follows the gradients' natural decay; the per-task variant
  keeps one history per task (use it when tasks' gradient scales differ a lot).
* ``AGC``: unit-wise, relative to the weights' norms: for deep or normaliser-free networks
  whose layers have very different scales (a global threshold would be wrong for most).
* ``ClipValue``: only when individual coordinates explode (it changes the direction).

They compose: ``[AutoClipPerTask(), AGC(0.02)]``.
"""

from taskbalance.transforms.adaptive import AGC, AutoClip, AutoClipPerTask
from taskbalance.transforms.base import CombinedTransform, PerTaskTransform, Transform
from taskbalance.transforms.clip import ClipGlobalNorm, ClipPerTaskNorm, ClipValue

__all__ = [
    "AGC",
    "AutoClip",
    "AutoClipPerTask",
    "ClipGlobalNorm",
    "ClipPerTaskNorm",
    "ClipValue",
    "CombinedTransform",
    "PerTaskTransform",
    "Transform",
]
