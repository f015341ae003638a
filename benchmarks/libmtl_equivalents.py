"""LibMTL's counterparts of our methods, driven outside LibMTL's Trainer for timing.

LibMTL 1.1.5 (the PyPI release) declares torchvision, which would pull a second torch build;
install it without dependencies: ``pip install --no-deps LibMTL==1.1.5``. Its package
``__init__`` imports the torchvision-based architectures, so the weighting modules are loaded
here through a stub package (only ``LibMTL/weighting`` is executed).

A LibMTL weighting is a mixin of its Trainer's model: it reads ``task_num``, ``device``,
``rep_grad``, ``epoch``, ``get_share_params()`` and ``zero_grad_share_params()`` from ``self``
and writes the shared parameters' ``.grad`` itself (``backward(losses, **kwargs)``). The
harness provides exactly those, at parameter level (``rep_grad=False``), with the
hyperparameters set to ours. Nash-MTL is not in LibMTL 1.1.5; its CAGrad only runs with
exactly three tasks.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["LIBMTL", "available", "harness"]

# our name -> (LibMTL class, LibMTL backward kwargs)
LIBMTL: dict[str, tuple[str, dict[str, Any]]] = {
    "ew": ("EW", {}),
    "uw": ("UW", {}),
    "dwa": ("DWA", {"T": 2.0}),
    "gls": ("GLS", {}),
    "mgda": ("MGDA", {"mgda_gn": "none"}),
    "pcgrad": ("PCGrad", {}),
    "gradvac": ("GradVac", {"beta": 0.5}),
    "imtl": ("IMTL", {}),
    "gradnorm": ("GradNorm", {"alpha": 1.5}),
    # CAGrad is left out: LibMTL 1.1.5's objective hard-codes three tasks (x.reshape(1, 3))
}


def _weighting_module() -> Any:
    if "LibMTL.weighting" in sys.modules:
        return sys.modules["LibMTL.weighting"]
    spec = importlib.util.find_spec("LibMTL")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("LibMTL is not installed: pip install --no-deps LibMTL==1.1.5")
    stub = types.ModuleType("LibMTL")
    stub.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("LibMTL", stub)
    return importlib.import_module("LibMTL.weighting")


def available() -> dict[str, tuple[str, dict[str, Any]]]:
    """The counterparts, or ``{}`` when LibMTL is not installed."""
    try:
        _weighting_module()
    except ImportError:
        return {}
    return LIBMTL


def harness(method: str, trunk: nn.Module, num_tasks: int) -> tuple[Any, dict[str, Any]]:
    """A LibMTL weighting object wired to ``trunk`` and the kwargs its ``backward`` expects."""
    class_name, kwargs = LIBMTL[method]
    base = getattr(_weighting_module(), class_name)

    class Harness(base):  # type: ignore[misc, valid-type]
        def get_share_params(self) -> Iterator[nn.Parameter]:
            return trunk.parameters()

        def zero_grad_share_params(self) -> None:
            trunk.zero_grad(set_to_none=False)

    weighting = Harness()
    weighting.task_num = num_tasks
    weighting.task_name = [f"task{i}" for i in range(num_tasks)]
    weighting.device = torch.device("cpu")
    weighting.rep_grad = False
    weighting.epoch = 1  # past the first epoch (GradNorm, DWA use their full rule)
    weighting.train_loss_buffer = torch.ones(num_tasks, 2)
    weighting.init_param()
    return weighting, kwargs
