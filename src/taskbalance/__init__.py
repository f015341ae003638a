"""taskbalance: multi-task learning in PyTorch that keeps tasks in balance.

Data flow of one step: losses -> gradient engine (computes only what the method needs:
nothing, the Gram matrix, or the Jacobian; at parameter or representation level) -> method
(weights or a direction) -> transforms (clipping) -> ``.grad`` -> your optimizer.
"""

from taskbalance import methods, optim, transforms
from taskbalance.aggregate import aggregate
from taskbalance.balancer import Balancer
from taskbalance.engine.needs import Need
from taskbalance.step_info import StepInfo
from taskbalance.train.tasks import Task
from taskbalance.train.trainer import Trainer

__version__ = "0.1.0"

__all__ = [
    "Balancer",
    "Need",
    "StepInfo",
    "Task",
    "Trainer",
    "__version__",
    "aggregate",
    "methods",
    "optim",
    "transforms",
]
