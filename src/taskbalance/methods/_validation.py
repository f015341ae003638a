"""Hyperparameter checks shared by the method constructors."""

from __future__ import annotations

import math
import numbers
from typing import Literal, overload

__all__ = ["check_count", "check_fraction", "check_positive", "check_seed"]


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


@overload
def check_count(
    method: str,
    name: str,
    value: object,
    *,
    allow_zero: bool = ...,
    allow_none: Literal[False] = ...,
) -> int: ...
@overload
def check_count(
    method: str, name: str, value: object, *, allow_zero: bool = ..., allow_none: Literal[True]
) -> int | None: ...
def check_count(
    method: str, name: str, value: object, *, allow_zero: bool = False, allow_none: bool = False
) -> int | None:
    """A number of steps or periods: an ``int`` (``True`` is not a count) >= 1, or >= 0 with
    ``allow_zero``; ``None`` too with ``allow_none``."""
    if value is None and allow_none:
        return None
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "non-negative" if allow_zero else "positive"
        alternative = " or None" if allow_none else ""
        raise ValueError(f"{method}: {name} must be a {kind} int{alternative}, got {value!r}")
    return value
