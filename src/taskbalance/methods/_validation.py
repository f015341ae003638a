"""Hyperparameter checks shared by the method constructors."""

from __future__ import annotations

import math
import numbers

__all__ = ["check_fraction", "check_positive", "check_seed"]


def check_positive(method: str, name: str, value: float, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{method}: {name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{method}: {name} must be {bound}, got {value!r}")
    return float(value)


def check_fraction(method: str, name: str, value: float) -> float:
    value = check_positive(method, name, value, allow_zero=True)
    if value >= 1:
        raise ValueError(f"{method}: {name} must be in [0, 1), got {value!r}")
    return value


def check_seed(method: str, seed: object) -> int:
    """A random seed: a whole number, NumPy's included (``2.5`` was truncated to 2, ``inf``
    an ``OverflowError``)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"{method}: seed must be a whole number, got {seed!r}")
    return int(seed)
