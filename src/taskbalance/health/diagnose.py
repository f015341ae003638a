"""Rules that turn gradient statistics into diagnoses with a suggested remedy."""

from __future__ import annotations

import math
from dataclasses import dataclass

from taskbalance._validation import is_positive_int

__all__ = ["Diagnosis", "HealthThresholds"]


@dataclass(frozen=True)
class HealthThresholds:
    """When the monitor warns (all ratios are of norms).

    Attributes:
        warmup_checks: checks used to set each quantity's early-training baseline (median).
        vanishing_ratio: a layer is vanishing when its gradient-to-weight ratio is below this
            fraction of the largest layer's, or a task when its gradient norm is below this
            fraction of its own baseline.
        exploding_factor: a norm above this multiple of its recent median is exploding.
        dominance_share: a task supplying more than this share of the combined update dominates.
        starvation_fraction: a task getting less than this fraction of its fair share
            (``1/T``) of the update starves.
        conflict_cosine: two tasks conflict persistently when the running mean of their
            gradient cosine stays below this value.
        patience: consecutive checks a condition must hold before a warning.
        repeat_every: after a warning, the same warning is repeated at most once per this many
            checks (rate limit).
    """

    warmup_checks: int = 20
    vanishing_ratio: float = 1e-3
    exploding_factor: float = 10.0
    dominance_share: float = 0.9
    starvation_fraction: float = 0.05
    conflict_cosine: float = -0.1
    patience: int = 10
    repeat_every: int = 500

    def __post_init__(self) -> None:
        for name in ("warmup_checks", "patience", "repeat_every"):
            if not is_positive_int(getattr(self, name)):
                raise ValueError(f"{name} must be a whole number >= 1, got {getattr(self, name)!r}")
        # name: (low, high, low allowed, high allowed); 1 turns the dominance warning off,
        # 0 the starvation one
        bounds = {
            "vanishing_ratio": (0.0, 1.0, False, False),
            "exploding_factor": (1.0, math.inf, False, False),
            "dominance_share": (0.0, 1.0, False, True),
            "starvation_fraction": (0.0, 1.0, True, False),
        }
        for name, (low, high, low_ok, high_ok) in bounds.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            above = value >= low if low_ok else value > low
            below = value <= high if high_ok else value < high
            if not (math.isfinite(value) and above and below):
                interval = f"{'[' if low_ok else '('}{low:g}, {high:g}{']' if high_ok else ')'}"
                raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
        if not -1.0 <= self.conflict_cosine <= 1.0:
            raise ValueError(
                f"conflict_cosine must be a cosine in [-1, 1], got {self.conflict_cosine!r}"
            )


@dataclass(frozen=True)
class Diagnosis:
    """One finding: what, about which task(s) or layer, at which step, and what to do."""

    kind: str  # vanishing | exploding | dominating | starving | conflict | stalled
    subject: str  # "task 'depth'", "layer 'trunk.0.weight'", "tasks 'a' and 'b'"
    step: int
    detail: str
    remedy: str

    def message(self) -> str:
        return f"[{self.kind}] {self.subject} at step {self.step}: {self.detail}. {self.remedy}"


REMEDIES = {
    "vanishing_layer": (
        "Check saturating activations (sigmoid/tanh), initialisation, normalisation or "
        "residual connections; AGC keeps every layer's update proportional to its weights"
    ),
    "vanishing_task": (
        "Its loss may have plateaued or its head saturated; weight it up with a loss-balancing "
        "method (uw, famo, dwa) or check its labels and loss"
    ),
    "exploding": (
        "Clip per task before combining (ClipPerTaskNorm or AutoClipPerTask), lower the "
        "learning rate, or check the loss for outliers"
    ),
    "dominating": (
        "Balance the losses (loss_ratio, uw, famo, dwa) or the gradients (imtl_g, nash_mtl, "
        "mgda), or rescale that loss"
    ),
    "starving": (
        "Raise its weight, or use a balancing method (imtl_g, nash_mtl, famo) that guarantees "
        "every task progress"
    ),
    "conflict": (
        "Use a conflict-aware method (pcgrad, cagrad, upgrad) or give the two tasks separate "
        "branches (see taskbalance.health.suggest_groups)"
    ),
    "stalled": (
        "Look for a task whose gradient is 0 (a constant loss, a dead head) and fix or drop it; "
        "while it lasts, a method that keeps every task moving (ew, uw, cagrad, nash_mtl, "
        "imtl_g) does not stop at such points"
    ),
}
