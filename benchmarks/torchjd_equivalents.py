"""TorchJD's counterparts of our gradient methods, for side-by-side timing and agreement checks.

Needs ``pip install 'taskbalance[bench]'`` (``torchjd[full]``: quadprog, cvxpy). Hyperparameters
are set equal where both libraries expose them. ``gramian`` names the TorchJD ``Weighting`` that
works on the Gramian alone (TorchJD's fastest path, used with its ``autogram`` engine);
``aggregator`` builds the ``Aggregator`` that works on the Jacobian (``autojac``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Equivalent", "available"]


@dataclass(frozen=True)
class Equivalent:
    ours: dict[str, Any]  # our hyperparameters
    aggregator: Callable[[int], Any]  # T -> TorchJD Aggregator
    weighting: Callable[[int], Any] | None  # T -> TorchJD Weighting on the Gramian, if any


def _build() -> dict[str, Equivalent]:
    from torchjd import aggregation as a

    return {
        "mgda": Equivalent({}, lambda t: a.MGDA(), lambda t: a.MGDAWeighting()),
        "upgrad": Equivalent({}, lambda t: a.UPGrad(), lambda t: a.UPGradWeighting()),
        "dualproj": Equivalent({}, lambda t: a.DualProj(), lambda t: a.DualProjWeighting()),
        "imtl_g": Equivalent({}, lambda t: a.IMTLG(), lambda t: a.IMTLGWeighting()),
        "pcgrad": Equivalent({}, lambda t: a.PCGrad(), lambda t: a.PCGradWeighting()),
        "cagrad": Equivalent(
            {"c": 0.5}, lambda t: a.CAGrad(c=0.5), lambda t: a.CAGradWeighting(c=0.5)
        ),
        "aligned_mtl": Equivalent({}, lambda t: a.AlignedMTL(), lambda t: a.AlignedMTLWeighting()),
        "fairgrad": Equivalent(
            {"alpha": 1.0},
            lambda t: a.FairGrad(alpha=1.0),
            lambda t: a.FairGradWeighting(alpha=1.0),
        ),
        "gradvac": Equivalent({}, lambda t: a.GradVac(), lambda t: a.GradVacWeighting()),
        "nash_mtl": Equivalent(
            {"max_norm": 1.0}, lambda t: a.NashMTL(n_tasks=t, max_norm=1.0), None
        ),
        "config": Equivalent({}, lambda t: a.ConFIG(), None),
        "graddrop": Equivalent({}, lambda t: a.GradDrop(), None),
    }


def available() -> dict[str, Equivalent]:
    """The equivalents, or ``{}`` when TorchJD is not installed."""
    try:
        return _build()
    except ImportError:
        return {}
