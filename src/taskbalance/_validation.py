"""Boundary checks shared by the public entry points."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

__all__ = ["check_choice", "is_positive_int", "run_folder", "suggest"]


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


def is_positive_int(value: object) -> bool:
    """Whether ``value`` is an ``int`` >= 1 (``True`` is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def run_folder(label: str) -> str:
    """The folder name of a run labelled ``label``: anything but letters, digits, ``_``,
    ``.`` and ``-`` becomes ``_`` (so a label never names a path outside the output)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")
