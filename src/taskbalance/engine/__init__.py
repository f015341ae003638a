"""Gradient engine: computes exactly what a method needs (nothing, Gram matrix, Jacobian)."""

from taskbalance.engine.gramian import gramian_of_blocks
from taskbalance.engine.jacobian import batched_vjp, representation_jacobian, task_jacobian
from taskbalance.engine.needs import Need
from taskbalance.engine.task_gradients import TaskGradients

__all__ = [
    "Need",
    "TaskGradients",
    "batched_vjp",
    "gramian_of_blocks",
    "representation_jacobian",
    "task_jacobian",
]
