"""Loss-weighting methods: weights from losses, metrics or learned parameters."""

from taskbalance.methods.weighting.dtp import DynamicTaskPrioritization
from taskbalance.methods.weighting.dwa import DynamicWeightAverage
from taskbalance.methods.weighting.equal import EqualWeighting
from taskbalance.methods.weighting.famo import FAMO
from taskbalance.methods.weighting.fixed import FixedWeighting
from taskbalance.methods.weighting.geometric import GeometricLossStrategy
from taskbalance.methods.weighting.learned_scales import IMTLL, UncertaintyWeighting
from taskbalance.methods.weighting.loss_ratio import LossRatioWeighting
from taskbalance.methods.weighting.metric_weighting import MetricWeighting
from taskbalance.methods.weighting.random import RandomLossWeighting
from taskbalance.methods.weighting.stch import SmoothTchebycheff

__all__ = [
    "FAMO",
    "IMTLL",
    "DynamicTaskPrioritization",
    "DynamicWeightAverage",
    "EqualWeighting",
    "FixedWeighting",
    "GeometricLossStrategy",
    "LossRatioWeighting",
    "MetricWeighting",
    "RandomLossWeighting",
    "SmoothTchebycheff",
    "UncertaintyWeighting",
]
