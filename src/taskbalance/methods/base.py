"""The method protocol: what every balancing method receives, returns and keeps.

A method is a small object that maps a :class:`Context` (the task losses, and the Gram matrix
or Jacobian of the task gradients when it declared that it needs them) to a
:class:`Combination`: either task weights ``w`` (``T``), applied as ``sum_i w_i g_i``, or a
direction ``d`` (``P``) in the space of the gradients it was given. A method never calls
``backward`` itself and never reads device values on the host; the engine computes what it
declared in :attr:`Method.needs`, and the balancer applies the result. A method that does not
read the Jacobian gets host copies (the Gram matrix in float64, the losses) once the balancer
has read them, and runs on the host (see :mod:`taskbalance.engine.host`); one that reads the
Jacobian gets everything on the device.

Scale convention: loss-weighting methods return weights that sum to ``T`` (``ew`` is the plain
sum of the losses, as in LibMTL); gradient methods follow their paper and document their scale.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from taskbalance.engine.needs import Need
from taskbalance.methods._adam import AdamState

__all__ = ["Combination", "Context", "Method"]

_ADAM_FIELDS = {"exp_avg", "exp_avg_sq", "step"}


@dataclass(frozen=True)
class Context:
    """Everything a method may read for one step.

    Attributes:
        num_tasks: ``T``.
        losses: detached task losses ``(T,)``, or ``None`` when the caller has none (e.g.
            :func:`taskbalance.aggregate` without ``losses=``).
        gramian: ``(T, T)`` float64 Gram matrix ``J J^T`` when the method needs it (or more).
        jacobian: ``(T, P)`` task-gradient matrix when the method needs it.
        metrics: task metrics ``(T,)`` the caller reported for this step, if any.
        step: index of this step (0-based, counts only steps that were not skipped).
        task_names: names of the tasks, in order.
        block_shapes: shape of each block of the Jacobian's columns (one per shared parameter
            at parameter level; the representation's shape at representation level).
        level: ``"parameters"`` or ``"representation"``.
        gradient_scale: ``s``: the Gram matrix and Jacobian here are those of ``J / s`` (a
            power of two; 1 unless the raw Gram matrix would leave float64's range).
        representation: at representation level, for a method that reads the Jacobian, the
            (detached) shared representation(s) the Jacobian's columns are gradients of, in
            the order of ``block_shapes`` (GradDrop reads their signs); else ``None``.
    """

    num_tasks: int
    losses: Tensor | None = None
    gramian: Tensor | None = None
    jacobian: Tensor | None = None
    metrics: Tensor | None = None
    step: int = 0
    task_names: tuple[str, ...] = ()
    block_shapes: tuple[torch.Size, ...] = ()
    level: str = "parameters"
    gradient_scale: float = 1.0
    representation: tuple[Tensor, ...] | None = None

    def require_losses(self, method: str) -> Tensor:
        if self.losses is None:
            raise ValueError(f"method {method!r} weights tasks from their losses: pass losses=...")
        return self.losses

    def require_gramian(self, method: str) -> Tensor:
        if self.gramian is None:
            raise RuntimeError(f"method {method!r} needs the Gram matrix but none was computed")
        return self.gramian

    def require_jacobian(self, method: str) -> Tensor:
        if self.jacobian is None:
            raise RuntimeError(f"method {method!r} needs the Jacobian but none was computed")
        return self.jacobian


@dataclass(frozen=True)
class Combination:
    """What a method returns: task weights ``(T,)`` or a direction ``(P,)`` (exactly one)."""

    weights: Tensor | None = None
    direction: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.weights is None) == (self.direction is None):
            raise ValueError("a Combination holds exactly one of weights or direction")


class Method(ABC):
    """Base class of every balancing method.

    Subclasses set the class attributes, implement :meth:`combine`, and list the names of
    their state attributes (tensors or ``torch.Generator``) in ``state_attributes`` so that
    :meth:`state_dict` / :meth:`load_state_dict` / :meth:`reset` work without extra code.
    """

    name: ClassVar[str]
    family: ClassVar[str]
    needs: ClassVar[Need]
    reference: ClassVar[str] = ""
    # what the weights sum to / how long the update is, following the paper or reference code
    scale: ClassVar[str] = ""
    # what the method needs beyond ``needs`` (metrics, epoch ends, a Jacobian for an option)
    needs_note: ClassVar[str] = ""
    state_attributes: ClassVar[tuple[str, ...]] = ()
    # False for methods whose state is indexed by gradient coordinates (tracked gradients):
    # at representation level those coordinates are samples of a batch, which change.
    representation_level: ClassVar[bool] = True
    # degree b of the update's homogeneity in the gradients, d(sJ) = s^b d(J) (see scale_degree)
    homogeneity: ClassVar[float | None] = None

    @abstractmethod
    def combine(self, ctx: Context) -> Combination:
        """Compute the combination for one step (may update the method's state)."""

    def __call__(self, ctx: Context) -> Combination:
        combination = self.combine(ctx)
        if combination.weights is not None and combination.weights.shape != (ctx.num_tasks,):
            raise RuntimeError(
                f"{self.name} returned weights of shape {tuple(combination.weights.shape)}, "
                f"expected ({ctx.num_tasks},)"
            )
        return combination

    def scale_degree(self) -> float | None:
        """The degree ``b`` with ``d(s J) = s^b d(J)`` for every ``s > 0`` (1: the update
        scales with the gradients, 0: it does not depend on their scale), or ``None`` when the
        update has no such property (state in gradient units, absolute thresholds).

        Where the Gram matrix would leave float64's range (gradients beyond ~1e40 or below
        ~1e-40), a method with a degree is solved exactly on ``J / s`` (``s`` a power of two)
        and its result mapped back: weights times ``s^(b-1)``, a direction times ``s^b``."""
        return self.homogeneity

    def supports_task_subsets(self) -> bool:
        """Whether a step may involve only some of the tasks (a batch without labels for a
        task). True for methods without per-task state (a seeded generator is fine)."""
        return set(self.state_attributes) <= {"generator"}

    def end_epoch(self) -> None:  # noqa: B027 (optional hook, no-op by default)
        """Called at the end of every epoch (by :meth:`Balancer.end_epoch` or the trainer).

        Only methods whose rule is defined per epoch (e.g. DWA) override it."""

    def hparams(self) -> dict[str, Any]:
        """Constructor arguments of this instance (for configs, logs and ``repr``)."""
        return {}

    def reset(self) -> None:
        """Forget all state, as if freshly constructed with the same hyperparameters."""
        fresh = type(self)(**self.hparams())
        for attribute in self.state_attributes:
            setattr(self, attribute, getattr(fresh, attribute))
        # (nested methods are replaced by fresh ones as well)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for attribute in self.state_attributes:
            value = getattr(self, attribute)
            if isinstance(value, torch.Generator):
                state[attribute] = value.get_state()
            elif isinstance(value, AdamState):
                state[attribute] = {k: v.clone() for k, v in vars(value).items()}
            elif isinstance(value, Method):
                state[attribute] = value.state_dict()
            elif isinstance(value, Tensor):
                state[attribute] = value.detach().clone()
            else:
                state[attribute] = value
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = set(self.state_attributes) - set(state)
        unexpected = set(state) - set(self.state_attributes)
        if missing or unexpected:
            raise ValueError(
                f"state for {self.name!r} does not match: missing {sorted(missing)}, "
                f"unexpected {sorted(unexpected)}"
            )
        for attribute in self.state_attributes:
            current = getattr(self, attribute)
            value = state[attribute]
            if isinstance(current, torch.Generator):
                current.set_state(value)
            elif isinstance(current, Method):
                current.load_state_dict(value)
            elif isinstance(value, Mapping) and set(value) == _ADAM_FIELDS:
                setattr(self, attribute, AdamState(**{k: v.clone() for k, v in value.items()}))
            elif isinstance(value, Tensor):
                setattr(self, attribute, value.detach().clone())
            else:
                setattr(self, attribute, value)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({args})"
