"""Boundary checks shared by the public entry points."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable

__all__ = ["check_choice", "finite_number", "is_positive_int", "run_folder", "suggest"]


def suggest(word: str, choices: Iterable[str]) -> str:
    """A ' Did you mean ...?' suffix for an unknown name, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def check_choice(value: str, choices: Iterable[str], what: str) -> str:
    """``value`` if it is one of ``choices``; else ``ValueError`` with the closest names."""
    options = list(choices)
    if value not in options:
        raise ValueError(
            f"unknown {what} {value!r}.{suggest(str(value), options)} "
            f"Available: {', '.join(options)}."
        )
    return value


def finite_number(name: str, value: float, *, allow_zero: bool = False) -> float:
    """``value`` as a float if it is a finite number ``> 0`` (``>= 0`` with ``allow_zero``);
    ``TypeError`` for a non-number (``True`` is not 1), ``ValueError`` naming ``name`` else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def is_positive_int(value: object) -> bool:
    """Whether ``value`` is an ``int`` >= 1 (``True`` is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def run_folder(label: str) -> str:
    """The folder name of a run labelled ``label``: anything but letters, digits, ``_``,
    ``.`` and ``-`` becomes ``_`` (so a label never names a path outside the output)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")
