"""Gradient health and task relations: monitor, diagnoses, task affinity and grouping."""

from taskbalance.health.affinity import (
    Grouping,
    LookaheadAffinity,
    lookahead_affinity,
    rank_groupings,
    suggest_groups,
)
from taskbalance.health.diagnose import Diagnosis, HealthThresholds
from taskbalance.health.monitor import HealthMonitor

__all__ = [
    "Diagnosis",
    "Grouping",
    "HealthMonitor",
    "HealthThresholds",
    "LookaheadAffinity",
    "lookahead_affinity",
    "rank_groupings",
    "suggest_groups",
]
