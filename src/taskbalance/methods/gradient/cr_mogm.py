"""CR-MOGM: another method's weights smoothed across steps (``cr_mogm``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from taskbalance.engine.needs import Need
from taskbalance.methods._validation import check_fraction
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import create, register


@register
class CRMOGM(Method):
    """Correlation-reduced stochastic multi-objective gradient manipulation (Zhou et al.,
    NeurIPS 2022): an exponential moving average of another method's task weights.

    On mini-batches, MGDA-like weights ``lambda_hat_k`` computed from the same batch as the
    gradients they combine are correlated with them, which biases the update; the paper
    proves convergence once the weights are smoothed across steps::

        lambda_k = alpha lambda_(k-1) + (1 - alpha) lambda_hat_k,   lambda_0 = lambda_hat_1

    (so the first step is the wrapped method's own). The update is ``sum_i lambda_k,i g_i``.
    ``alpha = 0`` is the wrapped method itself. The paper's Corollary 1 lets ``alpha`` grow
    towards 1 as the learning rate decays; ``alpha`` may be changed between steps.

    The wrapped method must return weights (not a direction: GradDrop, MoCo and DB-MTL
    cannot be wrapped). Where the balancer solves the wrapped method on rescaled gradients
    (beyond float64's range), the average is taken of the weights of the unscaled gradients.

    Args:
        method: the wrapped method's registry name (paper: ``"mgda"``).
        alpha: weight of the previous average, in ``[0, 1)`` (TorchJD's default 0.9).
        method_hparams: the wrapped method's hyperparameters.

    Scale: the wrapped method's (an average of its weights).
    """

    name = "cr_mogm"
    scale = "the wrapped method's"
    needs_note = "what the wrapped method needs"
    family = "gradient manipulation"
    needs = Need.GRAMIAN  # (the default's, mgda; each instance reports its own method's)
    reference = (
        "Zhou et al., On the Convergence of Stochastic Multi-Objective Gradient Manipulation "
        "and Beyond, NeurIPS 2022."
    )
    state_attributes = ("method", "average")

    def __init__(
        self,
        method: str = "mgda",
        alpha: float = 0.9,
        method_hparams: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(method, str):
            raise TypeError(f"cr_mogm: method must be a registry name, got {method!r}")
        self.method: Method = create(method, **dict(method_hparams or {}))
        if isinstance(self.method, CRMOGM):
            raise ValueError("cr_mogm: wrap a balancing method, not cr_mogm itself")
        self.alpha = check_fraction(self.name, "alpha", alpha)
        # what the engine computes and at which level: the wrapped method's
        self.needs = self.method.needs  # type: ignore[misc]
        self.representation_level = self.method.representation_level  # type: ignore[misc]
        self.average: Tensor | None = None

    def hparams(self) -> dict[str, Any]:
        return {
            "method": self.method.name,
            "alpha": self.alpha,
            "method_hparams": self.method.hparams(),
        }

    def end_epoch(self) -> None:
        self.method.end_epoch()  # (an epoch-based wrapped method, e.g. dwa, needs them)

    def scale_degree(self) -> float | None:
        return self.method.scale_degree()

    def combine(self, ctx: Context) -> Combination:
        weights = self.method(ctx).weights
        if weights is None:
            raise ValueError(
                f"cr_mogm averages task weights, and {self.method.name!r} returns a direction: "
                "wrap a method that returns weights (e.g. 'mgda', 'pcgrad', 'nash_mtl')"
            )
        # the weights for the unscaled gradients (ctx may hold J / s: see make_context)
        degree = self.scale_degree()
        factor = 1.0 if degree is None else ctx.gradient_scale ** (degree - 1.0)
        weights = weights * factor
        if self.average is None:
            self.average = weights.clone()
        elif self.average.shape != weights.shape:
            raise ValueError(
                f"cr_mogm averages the weights of {self.average.numel()} tasks, got "
                f"{weights.numel()}; call reset() to start over"
            )
        else:
            average = self.average.to(weights)
            self.average = self.alpha * average + (1.0 - self.alpha) * weights
        return Combination(weights=self.average / factor)
