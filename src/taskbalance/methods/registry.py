"""Name -> method class registry, with helpful errors for unknown names and hyperparameters."""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

from taskbalance._validation import suggest
from taskbalance.methods.base import Method

__all__ = ["available", "create", "get", "register"]

_REGISTRY: dict[str, type[Method]] = {}

# Names other libraries use for a method + setting of ours: say how to get it.
_VARIANTS = {
    "mgda_ub": "MGDA-UB is 'mgda' at representation level: Balancer('mgda', shared_params, "
    "level='representation') and backward(losses, representation=z)",
    "pcgrad_mean": "use methods.create('pcgrad', reduction='mean')",
    "mean": "TorchJD's Mean is 'ew' divided by the number of tasks: use 'ew' (sum) or "
    "methods.create('fixed', weights=[1 / T] * T)",
}

M = TypeVar("M", bound=type[Method])


def register(cls: M) -> M:
    """Class decorator: make ``cls`` creatable by its ``name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"method name {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Registry names of every method, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> type[Method]:
    """The class registered under ``name``; ``ValueError`` naming the closest names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"a method name must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    if key in _VARIANTS:
        raise ValueError(f"{name!r} is not a separate method: {_VARIANTS[key]}.")
    if key not in _REGISTRY:
        raise ValueError(
            f"unknown method {name!r}.{suggest(key, _REGISTRY)} "
            f"Available: {', '.join(available())}."
        )
    return _REGISTRY[key]


def hyperparameters(cls: type[Method]) -> list[str]:
    """Names of the keyword arguments ``cls`` accepts."""
    params = inspect.signature(cls.__init__).parameters.values()
    skipped = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in params if p.name != "self" and p.kind not in skipped]


def create(name: str, **hparams: Any) -> Method:
    """Instantiate the method registered as ``name`` with the given hyperparameters."""
    cls = get(name)
    valid = hyperparameters(cls)
    for key in hparams:
        if key not in valid:
            listed = ", ".join(valid) if valid else "none"
            raise ValueError(
                f"method {cls.name!r} has no hyperparameter {key!r}.{suggest(key, valid)} "
                f"Valid hyperparameters: {listed}."
            )
    return cls(**hparams)
