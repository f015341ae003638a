"""Settings of the two-objective toy problem: ours, and each paper's own (read from the
authors' published toy scripts; no code of theirs is used).

* ``cagrad`` (Liu et al., NeurIPS 2021; ``Cranial-XIX/CAGrad``, ``toy.py``): three starts
  (-8.5, 7.5), (-8.5, -5), (9, 9); 100,000 Adam steps, lr 1e-3; f1 not scaled; every method
  works on the *mean* of the two losses: "Adam" is the mean gradient, PCGrad averages its
  projected gradients, MGDA's weights sum to 1, CAGrad uses c = 0.5 and divides by 1 + c.
* ``nashmtl`` (Navon et al., ICML 2022; ``AvivNavon/nash-mtl``, ``experiments/toy``): five
  starts, 35,000 Adam steps, lr 1e-3, f1 scaled by 0.1; LS is the sum of the losses, CAGrad
  c = 0.4 divided by 1 + c^2, Nash-MTL on the raw Gram matrix with the update clipped to norm 1.
* ``famo`` (Liu et al., NeurIPS 2023; ``Cranial-XIX/FAMO``, ``experiments/toy``): the Nash-MTL
  setting run for 50,000 steps; FAMO with the minimum losses (-2.1, -21), logit learning rate
  0.025 and gamma 0 (its ``run.sh``: "the objective is not changing").
* ``ours``: the five starts and 35,000 steps of the Nash-MTL setting for every method we
  compare (``taskbalance bench toy``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["PAPERS", "SETTINGS", "STARTS", "ToySetup", "setup"]

STARTS = ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))

# method -> hyperparameters of the papers' toy experiments, for `taskbalance bench toy`
SETTINGS: dict[str, dict[str, Any]] = {
    "ew": {},
    "mgda": {},
    "pcgrad": {},
    "cagrad": {"c": 0.5},
    "nash_mtl": {"max_norm": 1.0},  # the reference code clips the update to norm 1
    # FAMO's toy script: min losses (-2.1, -21) and gamma (weight decay of the logits) 0, "as
    # the objective is not changing" (its run.sh); with gamma 0.01 two starts stall
    "famo": {"min_losses": [-21 * 0.1, -21.0], "weight_decay": 0.0},
    "imtl_g": {},
    "upgrad": {},
}


@dataclass(frozen=True)
class ToySetup:
    """Where the runs start, how long they run, how f1 is scaled, and each entry's method."""

    name: str
    source: str
    starts: tuple[tuple[float, float], ...]
    steps: int
    scale: float
    # label -> (registered method, hyperparameters)
    entries: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)

    def method(self, label: str) -> tuple[str, dict[str, Any]]:
        """The method and hyperparameters behind ``label`` (a method name runs with our toy
        settings when the setup does not list it)."""
        if label in self.entries:
            return self.entries[label]
        return label, SETTINGS.get(label, {})


_NASH_BASELINES: dict[str, tuple[str, dict[str, Any]]] = {
    "ls": ("ew", {}),
    "mgda": ("mgda", {}),
    "pcgrad": ("pcgrad", {}),
    "cagrad": ("cagrad", {"c": 0.4, "rescale": 1}),
}

OURS = ToySetup(
    "ours",
    "the Nash-MTL starts and step budget, each method with its paper's toy hyperparameters",
    STARTS,
    35_000,
    0.1,
)

PAPERS: dict[str, ToySetup] = {
    "cagrad": ToySetup(
        "cagrad",
        "Liu et al., Conflict-Averse Gradient Descent, NeurIPS 2021: Cranial-XIX/CAGrad toy.py",
        ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0)),
        100_000,
        1.0,
        {
            "adam (mean)": ("fixed", {"weights": [0.5, 0.5]}),
            "mgda": ("mgda", {}),
            "pcgrad (mean)": ("pcgrad", {"reduction": "mean"}),
            "cagrad": ("cagrad", {"c": 0.5, "rescale": 2}),
        },
    ),
    "nashmtl": ToySetup(
        "nashmtl",
        "Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022: AvivNavon/nash-mtl "
        "experiments/toy",
        STARTS,
        35_000,
        0.1,
        {**_NASH_BASELINES, "nash_mtl": ("nash_mtl", {"max_norm": 1.0})},
    ),
    "famo": ToySetup(
        "famo",
        "Liu et al., FAMO: Fast Adaptive Multitask Optimization, NeurIPS 2023: Cranial-XIX/FAMO "
        "experiments/toy",
        STARTS,
        50_000,
        0.1,
        {
            **_NASH_BASELINES,
            "nash_mtl": ("nash_mtl", {"max_norm": 1.0}),
            "famo": ("famo", {"min_losses": [-2.1, -21.0], "weight_decay": 0.0, "lr": 0.025}),
        },
    ),
}


def setup(paper: str | None) -> ToySetup:
    """The setup of ``paper`` (``None``: ours)."""
    if paper is None:
        return OURS
    if paper not in PAPERS:
        raise ValueError(f"toy: unknown paper {paper!r}; choose from {', '.join(PAPERS)}")
    return PAPERS[paper]
