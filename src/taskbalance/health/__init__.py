"""Gradient health and task relations: monitor, diagnoses, task affinity and grouping."""

from taskbalance.health.diagnose import Diagnosis, HealthThresholds
from taskbalance.health.monitor import HealthMonitor

__all__ = ["Diagnosis", "HealthMonitor", "HealthThresholds"]
