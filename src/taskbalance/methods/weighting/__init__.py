"""Loss-weighting methods: weights from losses, metrics or learned parameters."""

from taskbalance.methods.weighting.equal import EqualWeighting
from taskbalance.methods.weighting.fixed import FixedWeighting
from taskbalance.methods.weighting.loss_ratio import LossRatioWeighting
from taskbalance.methods.weighting.metric_weighting import MetricWeighting

__all__ = ["EqualWeighting", "FixedWeighting", "LossRatioWeighting", "MetricWeighting"]
