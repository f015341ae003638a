"""The Balancer: losses -> engine -> method -> transforms -> ``.grad``.

One step of :meth:`Balancer.backward`:

1. stack the task losses; a non-finite loss skips the step (nothing is written).
2. engine: compute what the method (and the transforms) need and nothing more: no per-task
   gradient for loss-weighting methods; otherwise the per-task gradients by batched
   vector-Jacobian products, with respect to the shared parameters (``level="parameters"``) or
   the shared representation (``level="representation"``), and their Gram matrix.
3. per-task transforms (e.g. per-task clipping) rescale each task's gradient.
4. method: weights ``w`` or a direction ``d``.
5. gradients of every parameter involved:

   * weights at parameter level: shared parameters get ``J^T w`` (the Jacobian is already
     there); task-specific parameters get ``grad(sum_i w_i L_i)`` from a backward that stops
     at them (head parameters of task ``i`` thus get ``w_i dL_i/dtheta``);
   * weights otherwise (loss weighting, or representation level): one ordinary backward of
     ``sum_i w_i L_i``;
   * a direction at parameter level: shared parameters get ``d``; a direction at
     representation level is back-propagated from the representation into the shared
     parameters; task-specific parameters get the (unweighted) gradient of their own loss.

6. combined transforms (global-norm / value clipping) on all those gradients; a non-finite
   result skips the step; else the gradients are *added* to ``.grad`` (so gradient
   accumulation over micro-batches works as with ``loss.backward()``).

Task-specific parameters are found by walking the autograd graph from the losses (every leaf
that requires grad and is not shared), or given explicitly with ``task_params=``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, cast, get_args

import numpy as np
import torch
from torch import Tensor

from taskbalance._validation import check_choice, is_positive_int
from taskbalance.distributed import (
    Communicator,
    DistributedMode,
    check_parameters,
    shard_jacobian,
)
from taskbalance.engine.gramian import in_float64_range, in_safe_range, representable_factor
from taskbalance.engine.graph import (
    depends_on,
    leaves_by_root,
    reachable_leaves,
    reentrant_checkpoint_in,
)
from taskbalance.engine.heads import HeadGradients, head_backwards
from taskbalance.engine.host import (
    STEP_LOSSES,
    defer,
    deferred,
    fetch,
    step_reads,
    to_device,
)
from taskbalance.engine.jacobian import batched_vjp, representation_jacobian
from taskbalance.engine.layerwise import layerwise_gramian, stacked_jacobian
from taskbalance.engine.linear_heads import LinearHeads, linear_heads
from taskbalance.engine.needs import Need
from taskbalance.engine.sparse import DensifiedGradient, densified_inputs
from taskbalance.engine.task_gradients import (
    GramianGradients,
    RowScaledGradients,
    TaskGradients,
)
from taskbalance.health.monitor import HealthMonitor
from taskbalance.methods.base import Combination, Context, Method
from taskbalance.methods.registry import create
from taskbalance.models.contract import MultiTaskModel
from taskbalance.step_info import StepInfo, cosine_matrix
from taskbalance.transforms.base import (
    CombinedTransform,
    PerTaskTransform,
    Transform,
    fast_global_norm,
    global_norm,
    stored_entries,
)

__all__ = ["Balancer", "EnginePath", "Level", "LossesLike", "resolve_method"]

logger = logging.getLogger(__name__)

# "auto" engine: the layer-wise Gram path costs one more backward through the trunk but, with
# the per-layer Gram rules, never forms the layers' rows: on the benchmark MLP its floor is
# 1.26x the Jacobian path's at T = 2, 1.15x at T = 3, equal at T = 6, 0.94x at T = 8, 0.88x
# at T = 10, 0.74x at T = 16 (benchmarks/step_time.py --engines gramian jacobian), with far
# less memory (gram_memory.py); so it is taken from this many tasks, or below that when the
# Jacobian it avoids would be at least this large
_LAYERWISE_MIN_TASKS = 8
_LAYERWISE_MIN_JACOBIAN_BYTES = 256 * 2**20

Level = Literal["parameters", "representation"]
EnginePath = Literal["auto", "gramian", "jacobian"]
LossesLike = Mapping[str, Tensor] | Sequence[Tensor] | Tensor
MetricsLike = Mapping[str, float] | Sequence[float] | Tensor


def resolve_method(method: Method | str) -> Method:
    """A method instance from an instance or a registry name."""
    if isinstance(method, str):
        return create(method)
    if not isinstance(method, Method):
        raise TypeError(
            f"expected a method name or a taskbalance Method, got {type(method).__name__}"
        )
    return method


def make_context(
    method: Method,
    grads: RowScaledGradients | None,
    *,
    num_tasks: int,
    losses: Tensor | None,
    metrics: Tensor | None = None,
    step: int = 0,
    task_names: tuple[str, ...] = (),
    level: str = "parameters",
    representation: tuple[Tensor, ...] | None = None,
) -> Context:
    """The :class:`Context` holding what ``method`` declared it needs (the representation
    only for a method that reads the Jacobian, detached).

    Where the Gram matrix leaves ``[1e-80, 1e80]`` (gradients beyond ~1e40 or below ~1e-40,
    where the methods' own arithmetic, or float64 itself, would over- or underflow), a method
    with a :meth:`~taskbalance.methods.base.Method.scale_degree` is given the exact Gram
    matrix (and Jacobian) of ``J / s`` instead, ``s`` a power of two; apply
    :func:`unnormalise` to its combination. A method without one gets the raw matrices,
    and an error when they are not finite."""
    gramian = grads.gramian if grads is not None else None
    jacobian = (
        grads.matrix if isinstance(grads, TaskGradients) and method.needs >= Need.JACOBIAN else None
    )
    scale = 1.0
    if grads is not None and gramian is not None and not in_float64_range(gramian, 1e-80, 1e80):
        if method.scale_degree() is not None:
            gramian, scale = grads.normalised_gramian()
            if jacobian is not None:
                jacobian = jacobian / scale
        elif method.needs == Need.GRAMIAN and not bool(torch.isfinite(gramian).all()):
            raise ValueError(
                f"the task gradients (norms up to {float(grads.norms().max()):.3g}) square "
                f"beyond float64, and {method.name!r} depends on their absolute size, so it "
                "cannot be solved on rescaled gradients: scale the losses down"
            )
        elif method.needs == Need.GRAMIAN and bool(
            ((gramian.diagonal() == 0) & (grads.norms() > 0).to(gramian.device)).any()
        ):
            # (a task whose squared norm underflowed to 0 would read as no gradient at all)
            raise ValueError(
                f"the task gradients (norms down to {float(grads.norms().min()):.3g}) square "
                f"below float64's smallest number, and {method.name!r} depends on their "
                "absolute size, so it cannot be solved on rescaled gradients: scale the "
                "losses up"
            )
    if jacobian is not None and gramian is not None:
        # a method that reads the Jacobian works on the device: its Gram matrix goes there too
        gramian = to_device(gramian, jacobian.device)
    return Context(
        num_tasks=num_tasks,
        losses=losses,
        gramian=gramian,
        jacobian=jacobian,
        metrics=metrics,
        step=step,
        task_names=task_names,
        block_shapes=grads.shapes if grads is not None else (),
        level=level,
        gradient_scale=scale,
        representation=(
            tuple(r.detach() for r in representation)
            if jacobian is not None and representation is not None
            else None
        ),
    )


def unnormalise(method: Method, combination: Combination, ctx: Context) -> Combination:
    """A combination computed on ``J / s`` (``s = ctx.gradient_scale``) as the one for ``J``:
    weights times ``s^(b-1)``, a direction times ``s^b``, ``b`` the method's scale degree."""
    scale = ctx.gradient_scale
    if scale == 1.0:
        return combination
    degree = method.scale_degree()
    assert degree is not None  # make_context normalises only methods with a degree
    if combination.weights is not None:
        return Combination(weights=combination.weights * scale ** (degree - 1.0))
    assert combination.direction is not None
    return Combination(direction=combination.direction * scale**degree)


def _checked_task_names(task_names: Sequence[str] | None) -> tuple[str, ...] | None:
    """``task_names`` as a tuple of distinct strings (a plain string is not a list of names:
    ``"ab"`` read as tasks ``a`` and ``b``; a repeated name made the logs overwrite one task's
    weight with another's)."""
    if task_names is None or (not isinstance(task_names, str) and len(task_names) == 0):
        return None
    if isinstance(task_names, str) or not all(isinstance(n, str) for n in task_names):
        raise TypeError(f"task_names must be a list of strings, got {task_names!r}")
    names = tuple(task_names)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"task_names must be distinct, got {repeated} more than once")
    return names


def _as_representations(representation: Any) -> tuple[Tensor, ...] | None:
    """``representation=`` as a tuple of tensors (one tensor, a tuple / list, or a dict such
    as ``{"sequence": h, "pooled": p}`` when heads read different shared tensors)."""
    if representation is None:
        return None
    items = (
        list(representation.values())
        if isinstance(representation, Mapping)
        else list(representation)
        if isinstance(representation, tuple | list)
        else [representation]
    )
    if not items or not all(isinstance(z, Tensor) and z.requires_grad for z in items):
        raise ValueError(
            "representation must be a tensor attached to the graph (requires grad), or a "
            "tuple / dict of such tensors (e.g. the sequence and the pooled output)"
        )
    return tuple(items)


def _check_representation_used(losses: Sequence[Tensor], representation: Sequence[Tensor]) -> None:
    if not any(depends_on(loss, list(representation)) for loss in losses):
        if any("DDPSink" in type(z.grad_fn).__name__ for z in representation):
            raise ValueError(
                "the representation is an output of DistributedDataParallel's forward with "
                "find_unused_parameters=True (or static_graph): DDP passes its outputs through "
                "a sink node, so the losses are not computed from the tensor it returns. Take "
                "the representation from the inner module (ddp.module), or drop "
                "find_unused_parameters (taskbalance writes the gradients itself and does not "
                "need it), or pass no representation"
            )
        raise ValueError(
            "none of the losses depends on `representation`: pass the tensor the heads read "
            "in this forward pass (the trunk output the heads were applied to, not the output "
            "of another forward call; with torch.compile, compile the trunk, not the whole "
            "model, or pass no representation). A model made with Balancer.for_model hands "
            "over the representation of its last forward call: call balancer.backward before "
            "the model's next forward with autograd on"
        )


@contextlib.contextmanager
def _explained_compile_errors() -> Iterator[None]:
    """torch.compile may donate a compiled graph's saved buffers to its backward, which then
    runs once only; per-task gradients need several backward passes through the trunk."""
    try:
        yield
    except RuntimeError as error:
        if "donated buffers" not in str(error):
            raise
        raise ValueError(
            "a torch.compile'd module in this graph gave its saved buffers to its backward, "
            "which then runs only once, but balancing back-propagates through the shared part "
            "once per task: `import torch._functorch.config` and set "
            "torch._functorch.config.donated_buffer = False before the first compiled call, "
            "or compile only the task heads"
        ) from error


def _single(representation: tuple[Tensor, ...] | None) -> bool:
    return representation is not None and len(representation) == 1


def _no_combination(weights: Tensor) -> list[Tensor]:
    raise RuntimeError("representation-level task gradients are combined through the losses")


def _non_finite_reason(params: list[Tensor], grads: list[Tensor], balancer: Balancer) -> str:
    """Which parameters got non-finite gradients from the combination (for the skip log)."""
    names = {id(p): n for n, p in zip(balancer.shared_names, balancer.shared_params, strict=True)}
    bad = [
        names.get(id(p), f"task parameter {tuple(p.shape)}")
        for p, g in zip(params, grads, strict=True)
        if not bool(torch.isfinite(g).all())
    ]
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    return f"non-finite combined gradient ({shown})"


def _named_parameter_list(
    params: Iterable[Tensor] | Iterable[tuple[str, Tensor]],
) -> tuple[tuple[str, ...], list[Tensor]]:
    """Shared parameters given as tensors or as ``(name, tensor)`` pairs (names for logs)."""
    items = [params] if isinstance(params, Tensor) else list(params)
    names: list[str] = []
    tensors: list[Any] = []
    for index, item in enumerate(items):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            names.append(item[0])
            tensors.append(item[1])
        else:
            names.append(f"shared.{index}")
            tensors.append(item)
    return tuple(names), _as_parameter_list(tensors, "shared_params")


def _as_parameter_list(params: Iterable[Tensor], what: str) -> list[Tensor]:
    if isinstance(params, Tensor):
        params = [params]
    result = list(params)
    seen: set[int] = set()
    for p in result:
        if not isinstance(p, Tensor):
            raise TypeError(f"{what} must be tensors, got {type(p).__name__}")
        if p.grad_fn is not None:
            raise ValueError(
                f"{what} must be parameters (leaf tensors); a tensor of shape "
                f"{tuple(p.shape)} is the result of a computation"
            )
        if id(p) in seen:
            raise ValueError(f"{what} lists the same tensor twice")
        seen.add(id(p))
    return result


class Balancer:
    """Combines task losses into gradients, according to a balancing method.

    Args:
        method: a :class:`~taskbalance.methods.Method` or a registry name (``"pcgrad"``).
        shared_params: parameters shared by the tasks (the trunk), e.g.
            ``model.trunk.parameters()``, or ``(name, parameter)`` pairs such as
            ``model.trunk.named_parameters()`` (the names appear in health reports).
        transforms: gradient transforms applied in order (per-task ones before combining,
            combined ones after), e.g. ``[ClipPerTaskNorm(1.0), ClipGlobalNorm(5.0)]``.
        level: ``"parameters"`` (per-task gradients w.r.t. ``shared_params``) or
            ``"representation"`` (w.r.t. the shared features passed to :meth:`backward`;
            much cheaper, as in MGDA-UB).
        task_params: task-specific parameters; found from the autograd graph when omitted.
        task_names: names of the tasks when losses are given as a sequence.
        batched: compute per-task gradients with one batched backward (falls back to a loop
            automatically where unsupported).
        monitor: a :class:`~taskbalance.health.HealthMonitor` observing the steps (gradient
            norms per task and layer, conflicts, warnings).
        engine: how per-task gradients are computed at parameter level when the method, the
            transforms and the monitor need only their Gram matrix. ``"gramian"``: the Gram
            matrix is accumulated layer by layer during the batched backward and the ``T x P``
            Jacobian is never held (with the per-layer rules of
            :mod:`taskbalance.engine.layer_rules` peak memory grows with ``T`` times the
            activation gradients, not ``T`` times the parameters), at the price of one more
            backward through the trunk
            for ``J^T w``; ``"jacobian"``: the Jacobian is materialised (faster for few tasks);
            ``"auto"``: the Gram path from 8 tasks, or when the Jacobian would take more than
            256 MiB.
        update_every: for gradient methods that return weights, compute per-task gradients
            and new weights only every ``k`` steps; in between, reuse the last applied weights
            with one ordinary backward of ``sum_i w_i L_i`` (amortises the per-task cost to
            ``1/k``). Methods that return a direction are recomputed every step.
        distributed: with ``torch.distributed`` initialised and more than one process,
            ``"auto"``/``"global"`` (default) balance the global batch exactly: the method
            sees the losses and task gradients of all ranks' batches together and every rank
            writes the same gradient, the one-process gradient on the global batch;
            ``"local"`` balances each rank's batch alone and averages the results (an
            approximation, cheaper); ``"off"`` ignores the process group. See
            :mod:`taskbalance.distributed` for the semantics and what is exchanged.
        process_group: the process group to balance over (default: the default group).

    Example::

        balancer = Balancer("pcgrad", model.trunk.parameters())
        optimizer.zero_grad()
        info = balancer.backward({"digit": l1, "parity": l2})
        if not info.skipped:
            optimizer.step()
    """

    def __init__(
        self,
        method: Method | str,
        shared_params: Iterable[Tensor] | Iterable[tuple[str, Tensor]],
        *,
        transforms: Sequence[Transform] = (),
        level: Level = "parameters",
        task_params: Iterable[Tensor] | None = None,
        task_names: Sequence[str] | None = None,
        batched: bool = True,
        engine: EnginePath = "auto",
        update_every: int = 1,
        monitor: HealthMonitor | None = None,
        distributed: DistributedMode = "auto",
        process_group: Any = None,
    ) -> None:
        self.method = resolve_method(method)
        self._declared_names, self._declared_params = _named_parameter_list(shared_params)
        check_choice(distributed, get_args(DistributedMode), "distributed mode")
        self.distributed: DistributedMode = distributed
        self.process_group = process_group
        self._comm: Communicator | None = None
        self._scaler_step = False
        self._losses_checked = False
        if not self._declared_params:
            raise ValueError("shared_params is empty: pass the trunk's parameters")
        # frozen parameters are skipped, as torch.optim does (re-checked at every step)
        self.shared_names, self.shared_params = self._trainable()
        check_choice(level, get_args(Level), "level")
        self.level: Level = level
        if level == "representation" and not self.method.representation_level:
            raise ValueError(
                f"{self.method.name!r} keeps per-coordinate gradient state across steps, which "
                "has no meaning for representation gradients (their coordinates are the samples "
                "of each batch): use level='parameters'"
            )
        if isinstance(transforms, Transform) or not isinstance(transforms, Iterable):
            raise TypeError(
                f"transforms must be a list of taskbalance transforms, got "
                f"{type(transforms).__name__}: e.g. transforms=[ClipGlobalNorm(1.0)]"
            )
        self.transforms = list(transforms)
        for transform in self.transforms:
            if not isinstance(transform, Transform):
                raise TypeError(
                    f"transforms must be taskbalance transforms, got {type(transform).__name__}"
                )
        self.task_params = (
            None if task_params is None else _as_parameter_list(task_params, "task_params")
        )
        shared_ids = {id(p) for p in self.shared_params}
        if self.task_params is not None and any(id(p) in shared_ids for p in self.task_params):
            raise ValueError("a tensor is listed both in shared_params and task_params")
        self.task_names: tuple[str, ...] | None = _checked_task_names(task_names)
        if not isinstance(batched, bool):
            raise TypeError(f"batched must be True or False, got {batched!r}")
        self.batched = batched
        check_choice(engine, get_args(EnginePath), "engine")
        self.engine: EnginePath = engine
        self._layerwise_ok = True
        # the vectorised backwards that have run without failing (only those may free the
        # graph as they go: a failure part-way would leave nothing for the fallback)
        self._vectorised: set[str] = set()
        if not is_positive_int(update_every):
            raise ValueError(f"update_every must be a positive int, got {update_every!r}")
        self.update_every = update_every
        self._cached_weights: Tensor | None = None
        self._model: MultiTaskModel | None = None
        if monitor is not None and not isinstance(monitor, HealthMonitor):
            raise TypeError(
                f"monitor must be a taskbalance HealthMonitor or None, got {type(monitor).__name__}"
            )
        self.monitor = monitor
        self.step = 0
        self._skips = 0
        self._warned_bypass = False
        self._checked_sharing = False
        self._checked_checkpointing = False
        self._warned_stall = False
        self._densified: dict[int, DensifiedGradient] = {}  # (of the current step: _write)

    def _trainable(self) -> tuple[tuple[str, ...], list[Tensor]]:
        pairs = [
            (n, p)
            for n, p in zip(self._declared_names, self._declared_params, strict=True)
            if p.requires_grad
        ]
        return tuple(n for n, _ in pairs), [p for _, p in pairs]

    def _refresh_trainable(self) -> None:
        """Follow parameters frozen or unfrozen since the last step."""
        current = self.shared_params
        trainable = [p for p in self._declared_params if p.requires_grad]
        if len(trainable) != len(current) or any(
            p is not q for p, q in zip(trainable, current, strict=True)
        ):
            names, params = self._trainable()
            logger.info(
                "shared parameters now trainable: %d of %d", len(params), len(self._declared_params)
            )
            self.shared_names, self.shared_params = names, params
        if not self.shared_params:
            raise ValueError(
                "every shared parameter is frozen (requires_grad=False): unfreeze some, or "
                "balance only the task-specific parameters with a plain backward"
            )

    @classmethod
    def for_model(cls, method: Method | str, model: MultiTaskModel, **kwargs: Any) -> Balancer:
        """A balancer for a :class:`~taskbalance.models.MultiTaskModel`: shared and task
        parameters come from the model's contract, and :meth:`backward` reads the model's
        representation of the last forward pass when none is given."""
        if kwargs.get("level") == "representation" and not model.supports_representation:
            raise ValueError(
                f"{type(model).__name__} has no single shared representation: use "
                "level='parameters'"
            )
        shared_ids = {id(p) for p in model.shared_parameters()}
        named = [(n, p) for n, p in model.named_parameters() if id(p) in shared_ids]
        balancer = cls(method, named, task_params=list(model.task_parameters()), **kwargs)
        balancer._model = model
        return balancer

    @property
    def needs(self) -> Need:
        """What the engine computes each step: the most any method or transform needs."""
        return max([self.method.needs, *(t.needs for t in self.transforms)])

    @property
    def num_tasks(self) -> int | None:
        return None if self.task_names is None else len(self.task_names)

    # ----------------------------------------------------------------- input validation
    def _stack_losses(self, losses: LossesLike) -> tuple[tuple[str, ...], list[Tensor], Tensor]:
        if isinstance(losses, Mapping):
            names = tuple(losses)
            if self.task_names is not None and set(names) == set(self.task_names):
                names = self.task_names
            values = [losses[n] for n in names]
        elif isinstance(losses, Tensor):
            if losses.ndim != 1:
                raise ValueError(
                    f"losses given as one tensor must have shape (T,), got {tuple(losses.shape)}"
                )
            values = list(losses.unbind())
            names = self.task_names or tuple(f"task{i}" for i in range(len(values)))
        elif isinstance(losses, Sequence):
            values = list(losses)
            names = self.task_names or tuple(f"task{i}" for i in range(len(values)))
        else:
            raise TypeError(
                f"losses must be a dict of task -> loss, a sequence of losses or a (T,) tensor; "
                f"got {type(losses).__name__}"
            )
        if not values:
            raise ValueError("no losses given: pass one loss per task")
        for name, value in zip(names, values, strict=False):
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"the loss of task {name!r} is a {type(value).__name__}; it must be a tensor "
                    "attached to the autograd graph"
                )
            if value.numel() != 1:
                raise ValueError(
                    f"the loss of task {name!r} has shape {tuple(value.shape)}; reduce it to a "
                    "scalar (e.g. .mean()) first"
                )
            if not value.is_floating_point():
                # (a complex loss was cast to its real part without a word; torch's backward
                # refuses one too)
                raise TypeError(
                    f"the loss of task {name!r} is a {value.dtype} tensor; a loss must be a real "
                    "floating-point scalar (for a complex output, take e.g. .abs() or .real)"
                )
        if self.task_names is None:
            self.task_names = names
        elif (
            isinstance(losses, Mapping)
            and set(names) < set(self.task_names)
            and self.method.supports_task_subsets()
        ):
            # a step with only some tasks (e.g. no labels for the others in this batch)
            order = {n: i for i, n in enumerate(self.task_names)}
            pairs = sorted(zip(names, values, strict=True), key=lambda item: order[item[0]])
            names = tuple(n for n, _ in pairs)
            values = [v for _, v in pairs]
        elif len(values) != len(self.task_names) or names != self.task_names:
            if isinstance(losses, Mapping) and set(names) < set(self.task_names):
                raise ValueError(
                    f"this step has losses for {list(names)} only, but {self.method.name!r} keeps "
                    f"per-task state and needs every task {list(self.task_names)} at each step; "
                    "use a method without per-task state, or batches labelled for every task"
                )
            given = list(names) if isinstance(losses, Mapping) else f"{len(values)} losses"
            raise ValueError(
                f"this Balancer was set up for tasks {list(self.task_names)} "
                f"({len(self.task_names)}), got {given}; the tasks must stay the same "
                "from step to step"
            )
        dtype = values[0].dtype
        if all(v.dtype == dtype and v.dim() == 0 for v in values):  # the usual case: as given
            return names, values, torch.stack(values)
        for v in values[1:]:
            dtype = torch.promote_types(dtype, v.dtype)
        scalars = [v.reshape(()).to(dtype) for v in values]
        return names, scalars, torch.stack(scalars)

    def _metrics_tensor(self, metrics: MetricsLike | None, names: tuple[str, ...]) -> Tensor | None:
        if metrics is None:
            return None
        if isinstance(metrics, Mapping):
            unknown = [k for k in metrics if k not in names]
            missing = [n for n in names if n not in metrics]
            if unknown or missing:
                raise ValueError(
                    f"metrics must name every task {list(names)}; "
                    f"missing {missing}, unknown {unknown}"
                )
            metrics = [float(metrics[n]) for n in names]
        values = torch.as_tensor(metrics, dtype=torch.float64).flatten()
        if values.numel() != len(names):
            raise ValueError(f"got {values.numel()} metrics for {len(names)} tasks")
        return values

    # ----------------------------------------------------------------- the step
    def backward(
        self,
        losses: LossesLike,
        representation: Tensor | Sequence[Tensor] | Mapping[str, Tensor] | None = None,
        *,
        metrics: MetricsLike | None = None,
        loss_scale: float = 1.0,
        scaler: Any = None,
        accumulation_steps: int = 1,
    ) -> StepInfo:
        """Compute the balanced gradients of ``losses`` and add them to ``.grad``.

        Args:
            losses: one scalar loss per task: a dict ``name -> loss``, a sequence, or a
                ``(T,)`` tensor. The set of tasks must stay the same across steps.
            representation: the shared features (output of the trunk) that the losses were
                computed from; required at ``level="representation"``. Several tensors (a
                tuple or dict, e.g. a transformer's sequence output for a tagging head and its
                pooled output for a classification head): the representation gradient of a
                task is then the concatenation of its gradients w.r.t. each.
            metrics: optional per-task metrics for methods that use them.
            loss_scale: back-propagate ``loss_scale * L`` (float16 mixed precision: keeps small
                gradients from underflowing) and divide every gradient by it before the
                method and the transforms see it, so balancing works on true gradients.
            scaler: a ``torch.amp.GradScaler`` (float16 mixed precision), used exactly like
                ``scaler.scale(loss).backward()``: the task gradients come from losses scaled
                by its current scale and are unscaled before the method and the transforms;
                ``.grad`` receives the *scaled* combined gradient, so the unchanged
                ``scaler.step(optimizer); scaler.update()`` unscales it once. A step whose
                losses or gradients overflow writes ``inf`` to a shared parameter's ``.grad``
                (and is reported as skipped): the scaler then skips ``optimizer.step()`` and
                lowers its scale, as after an overflowing ``backward``. A disabled scaler is
                ignored.
            accumulation_steps: this call is one of ``k`` micro-batches of one optimizer
                step: pass the micro-batch's own losses (not divided by ``k``); the method
                balances them and ``1/k`` of its update is added to ``.grad``, so the ``k``
                calls add the mean of their updates, for every method. (Dividing the losses by
                ``k`` instead is right only for updates linear in the losses' scale: Nash-MTL's
                and FairGrad's do not shrink, DB-MTL's log-loss gradients do not, and their
                accumulated step grew with ``k``.) ``StepInfo`` reports this call's update.

        Returns:
            A :class:`StepInfo`. When ``skipped`` is true nothing was written to ``.grad``:
            skip ``optimizer.step()`` (parameters whose ``.grad`` is ``None`` are not touched
            by ``torch.optim`` optimizers anyway).
        """
        model = self._model
        if representation is None and model is not None and model.supports_representation:
            representation = model.representation
        if not is_positive_int(accumulation_steps):
            raise ValueError(
                f"accumulation_steps must be a positive int, got {accumulation_steps!r}"
            )
        reps = _as_representations(representation)
        names, values, stacked = self._stack_losses(losses)
        self._refresh_trainable()
        with step_reads(), densified_inputs() as self._densified:
            return self._step(
                names, values, stacked, reps, metrics, loss_scale, scaler, accumulation_steps
            )

    def _step(
        self,
        names: tuple[str, ...],
        values: list[Tensor],
        stacked: Tensor,
        reps: tuple[Tensor, ...] | None,
        metrics: MetricsLike | None,
        loss_scale: float,
        scaler: Any,
        accumulation_steps: int = 1,
    ) -> StepInfo:
        """One step, stage by stage: losses -> task gradients (what the method needs) ->
        method -> transforms -> ``.grad``. Host reads: see :mod:`taskbalance.engine.host`."""
        loss_scale, write_scale = self._loss_scale(loss_scale, scaler, stacked)
        write_scale /= accumulation_steps
        metrics_tensor = self._metrics_tensor(metrics, names)
        comm = self._communicator()
        detached = stacked.detach()
        if comm is not None and comm.is_global:
            detached = comm.mean(detached)  # the global losses (non-finite on every rank alike)
        self._validate_step(stacked, reps, loss_scale)
        # the losses' finiteness is read with the step's first host read (the Gram matrix,
        # or the update's norm), or before a method with state sees them
        defer(STEP_LOSSES, detached)
        self._losses_checked = False
        local_comm = comm is not None and not comm.is_global
        if loss_scale != 1.0:
            values = [v * loss_scale for v in values]
            stacked = stacked * loss_scale
        reuse = (
            self._cached_weights is not None
            and self._cached_weights.shape == (len(names),)
            and self.step % self.update_every != 0
        )
        observing = self.monitor is not None and self.monitor.wants(self.step)
        need = self.needs
        if observing and self.monitor is not None and self.monitor.task_gradients:
            need = max(need, Need.GRAMIAN)
        if need > Need.LOSSES:
            self._refuse_complex_gradients(reps)
        task_params, separable, heads = self._task_params(values, reps, need)
        head_pass: HeadGradients | None = None
        with _explained_compile_errors():
            if not reuse:
                grads, head_pass = self._task_gradients(
                    values, stacked, reps, separable, heads, need
                )
            else:
                grads = None
        if grads is not None and loss_scale != 1.0:
            grads = grads.divided_by(loss_scale)
        if grads is not None and comm is not None and comm.is_global:
            grads = self._global_task_gradients(comm, grads)
        if grads is not None:
            grads.raw_gramian  # noqa: B018 (the step's first host read: the losses travel with it)
        check_now = not reuse and (
            grads is not None or bool(self.method.state_attributes) or local_comm
        )
        if check_now and (skipped := self._check_losses(names, detached, comm)) is not None:
            return skipped  # (the method never sees a non-finite loss)
        broken = (
            grads is not None
            and not bool(torch.isfinite(grads.raw_gramian).all())  # (on the host)
            and not grads.all_finite()  # else the Gram matrix only overflowed: rescaled below
        )
        if local_comm and grads is not None:
            assert comm is not None
            broken = comm.any(broken)  # every rank skips, or none
        if broken:
            return self._skip(names, detached, "non-finite task gradient")
        if grads is not None:
            self._check_connected(values, reps, grads, names)
        grads, scales = self._per_task_transforms(grads)
        combination = self._combination(
            grads, reuse, names, detached, metrics_tensor, comm, scales, reps
        )
        with _explained_compile_errors():
            params, param_grads = self._parameter_gradients(
                combination,
                grads,
                head_pass,
                stacked,
                scales,
                reps,
                task_params,
                1.0 / loss_scale,
                separable=separable,
            )
        if comm is not None:
            params, param_grads = self._averaged(comm, params, param_grads, grads is not None)
        for transform in self.transforms:
            if isinstance(transform, CombinedTransform):
                param_grads = transform.apply(param_grads, params)
        # the step's last host read: the update's norm (with the losses, if nothing read yet)
        total_norm = fast_global_norm(param_grads)
        (norm_on_host,) = fetch(total_norm)
        if (skipped := self._check_losses(names, detached, comm)) is not None:
            return skipped
        weights = combination.weights
        if not math.isfinite(float(norm_on_host)):
            total_norm = global_norm(param_grads)  # exact where the fast norm overflowed
            if not bool(torch.isfinite(total_norm)) and not all(
                bool(torch.isfinite(g).all()) for g in param_grads
            ):
                # (a finite gradient whose norm exceeds float64 is written: only entries that
                # are really inf or NaN make a step unusable)
                reason = _non_finite_reason(params, param_grads, self)
                return self._skip(names, detached, reason, weights=weights)
        stalled = grads is not None and _stalled(grads, combination, float(norm_on_host))
        if stalled and not self._warned_stall:
            assert grads is not None
            self._warn_stalled(grads, names)
        self._write(params, param_grads, write_scale)
        info = StepInfo(
            task_names=names,
            losses=detached,
            level=self.level,
            step=self.step,
            weights=weights,
            task_scales=scales,
            task_grad_norms=grads.norms() if grads is not None else None,
            cosines=cosine_matrix(grads.cosine_gramian()) if grads is not None else None,
            grad_norm=total_norm,
            reused_weights=reuse,
            stalled=stalled,
            **(self._layer_statistics(params, param_grads) if observing else {}),
        )
        if observing and self.monitor is not None:
            self.monitor.observe(info)
        self.step += 1
        return info

    # ----------------------------------------------------------------- step stages
    def _refuse_complex_gradients(self, reps: tuple[Tensor, ...] | None) -> None:
        """Raise where the task gradients would be complex: their Gram matrix and norms would
        need the real inner product ``Re(g_i^H g_j)`` of ``C^n`` read as ``R^2n``, which the
        engine does not form (it kept the real part of ``g_i^T g_j`` and was silently wrong)."""
        if self.level == "representation":
            where = [f"representation {i}" for i, r in enumerate(reps or ()) if r.is_complex()]
        else:
            pairs = zip(self.shared_names, self.shared_params, strict=True)
            where = [n for n, p in pairs if p.is_complex()]
        if where:
            raise ValueError(
                f"per-task gradients of complex tensors are not supported ({', '.join(where)}: "
                f"{self.method.name!r}, its transforms or the monitor read them): keep the "
                "shared parameters (or the representation) real, e.g. store a complex weight "
                "as torch.view_as_real pairs, or use a loss-weighting method, whose single "
                "backward of sum_i w_i L_i handles complex parameters"
            )

    def _loss_scale(self, loss_scale: float, scaler: Any, stacked: Tensor) -> tuple[float, float]:
        """``(loss_scale, write_scale)``: what the losses are multiplied by before the
        backward, and what the written gradients are (a GradScaler's current scale)."""
        self._scaler_step = scaler is not None and bool(scaler.is_enabled())
        if not self._scaler_step:
            return loss_scale, 1.0
        if loss_scale != 1.0:
            raise ValueError("pass scaler= or loss_scale=, not both")
        scaler.scale(stacked.detach())  # what scaler.scale(loss) does: creates its scale
        scale = float(scaler.get_scale())
        return scale, scale

    def _validate_step(
        self, stacked: Tensor, reps: tuple[Tensor, ...] | None, loss_scale: float
    ) -> None:
        if not stacked.requires_grad:
            raise ValueError(
                "none of the losses requires grad: were they computed under torch.no_grad() "
                "or from detached tensors?"
            )
        if self.level == "representation" and reps is None:
            raise ValueError(
                "level='representation' needs the shared features: call "
                "backward(losses, representation=z) with the trunk output z the heads read"
            )
        if not (math.isfinite(loss_scale) and loss_scale > 0):
            raise ValueError(f"loss_scale must be a finite number > 0, got {loss_scale!r}")
        if not self._checked_checkpointing:  # (one walk of the whole graph, first step only)
            if reentrant_checkpoint_in([stacked]):
                raise ValueError(
                    "the losses go through torch.utils.checkpoint(..., use_reentrant=True), "
                    "whose segments hide the parameters inside them from the balancer (their "
                    "gradients come only from a plain backward): they would get no gradient. "
                    "Checkpoint with use_reentrant=False (PyTorch's recommendation; for a "
                    "Transformers model pass {'use_reentrant': False} to "
                    "gradient_checkpointing_enable / activation_checkpointing_enable, the "
                    "default from Transformers 5)"
                )
            self._checked_checkpointing = True

    def _check_losses(
        self, names: tuple[str, ...], detached: Tensor, comm: Communicator | None
    ) -> StepInfo | None:
        """The skip of a step whose losses are not all finite (read once per step)."""
        if self._losses_checked:
            return None
        self._losses_checked = True
        flags = [math.isfinite(value) for value in deferred(STEP_LOSSES).tolist()]  # host copy
        finite = all(flags)
        if comm is not None and not comm.is_global:
            finite = not comm.any(not finite)
        if finite:
            return None
        bad = [n for n, ok in zip(names, flags, strict=True) if not ok]
        where = f"task(s) {bad}" if bad else "a task on another rank"
        return self._skip(names, detached, f"non-finite loss for {where}")

    def _per_task_transforms(
        self, grads: RowScaledGradients | None
    ) -> tuple[RowScaledGradients | None, Tensor | None]:
        """Per-task factors (clipping before combining) as a lazy row scaling."""
        scales: Tensor | None = None
        if grads is None:
            return grads, scales
        for transform in self.transforms:
            if isinstance(transform, PerTaskTransform):
                current = grads.norms() if scales is None else grads.norms() * scales
                factor = transform.row_scale(current).to(torch.float64)
                scales = factor if scales is None else scales * factor
        return (grads if scales is None else grads.scale_rows(scales)), scales

    def _combination(
        self,
        grads: RowScaledGradients | None,
        reuse: bool,
        names: tuple[str, ...],
        detached: Tensor,
        metrics: Tensor | None,
        comm: Communicator | None,
        scales: Tensor | None,
        reps: tuple[Tensor, ...] | None,
    ) -> Combination:
        """The method's weights or direction (or the cached weights of a reuse step). A
        method that does not read the Jacobian runs on the host once the step's losses were
        read there (with the Gram matrix, or before a stateful method); the others on the
        device."""
        if reuse:
            assert self._cached_weights is not None
            return Combination(weights=self._cached_weights)
        on_host = self._losses_checked and self.method.needs < Need.JACOBIAN
        ctx = make_context(
            self.method,
            grads,
            num_tasks=len(names),
            losses=deferred(STEP_LOSSES).to(detached.dtype) if on_host else detached,
            metrics=metrics,
            step=self.step,
            task_names=names,
            level=self.level,
            representation=reps if self.level == "representation" else None,
        )
        if comm is not None and not comm.is_global:
            # each rank's own losses: a refusal on one rank stops every rank
            combination = comm.together(lambda: unnormalise(self.method, self.method(ctx), ctx))
        else:  # (one process, or the same inputs on every rank: all raise alike)
            combination = unnormalise(self.method, self.method(ctx), ctx)
        if comm is not None and comm.is_global and combination.weights is not None:
            # every rank computed the same weights from the same inputs; rank 0's are
            # applied everywhere so that the ranks' parameters stay bit-identical
            combination = Combination(weights=comm.same_everywhere(combination.weights))
        if self.update_every > 1 and combination.weights is not None:
            weights = combination.weights
            if scales is not None:  # (in float64: weights may come in the losses' dtype)
                weights = weights.to(torch.float64) * to_device(scales, weights.device)
            self._cached_weights = weights.detach().clone()
        return combination

    def _write(self, params: list[Tensor], grads: list[Tensor], write_scale: float) -> None:
        """Add the update to ``.grad`` (scaled for a GradScaler, in each parameter's dtype;
        sparse where autograd gives the parameter a sparse gradient and the task Jacobian
        made it dense, as for ``nn.Embedding(sparse=True)``: storing the rows a plain backward
        would, see :class:`~taskbalance.engine.sparse.DensifiedGradient`), then run the
        parameters' ``register_post_accumulate_grad_hook`` hooks, which a plain backward runs
        and writing ``.grad`` by hand would skip."""
        for p, g in zip(params, grads, strict=True):
            if write_scale != 1.0:
                # (a GradScaler's scale, which its step divides back; 1 / accumulation_steps)
                g = g * write_scale
            if g.dtype != p.dtype:
                g = g.to(p.dtype)
            if id(p) in self._densified and not g.is_sparse:
                g = self._densified[id(p)].sparse(g)
            if p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)
        for p in params:  # as autograd does once it accumulated a gradient into .grad
            hooks = getattr(p, "_post_accumulate_grad_hooks", None)
            if hooks:  # (e.g. an optimizer step in backward; see the FAQ)
                for hook in tuple(hooks.values()):
                    hook(p)

    def _warn_stalled(self, grads: RowScaledGradients, names: tuple[str, ...]) -> None:
        """Once: the shared update vanished while some task's gradient did not (see
        :attr:`StepInfo.stalled`); a HealthMonitor reports it on every observed step."""
        self._warned_stall = True
        zero = [
            n for n, d in zip(names, grads.raw_gramian.diagonal().tolist(), strict=True) if d == 0
        ]
        logger.warning(
            "step %d: the %s update of the shared parameters is 0 while the task gradients "
            "are not%s: a Pareto-stationary point for the method, where they stop moving "
            "(warned once; a HealthMonitor reports it as 'stalled' on every observed step)",
            self.step,
            self.method.name,
            f" (zero gradient: task(s) {zero})" if zero else "",
        )

    def _layer_statistics(self, params: list[Tensor], grads: list[Tensor]) -> dict[str, Any]:
        """Per shared parameter: the norm of the update written and of the weights."""
        by_id = {id(p): g for p, g in zip(params, grads, strict=True)}
        grad_norms = [
            torch.linalg.vector_norm(stored_entries(by_id[id(p)])).to(torch.float64)
            if id(p) in by_id
            else torch.zeros((), dtype=torch.float64, device=p.device)
            for p in self.shared_params
        ]
        weight_norms = [
            torch.linalg.vector_norm(p.detach()).to(torch.float64) for p in self.shared_params
        ]
        return {
            "layer_names": self.shared_names,
            "layer_grad_norms": torch.stack(grad_norms),
            "layer_weight_norms": torch.stack(weight_norms),
        }

    # ----------------------------------------------------------------- distributed
    def _communicator(self) -> Communicator | None:
        """The communicator of this step (None in a single process), checked once."""
        comm = Communicator.resolve(self.distributed, self.process_group)
        if comm is not None and self._comm is None:
            check_parameters(self.shared_params)
            if (
                comm.is_global
                and self.level == "representation"
                and self.method.needs >= Need.JACOBIAN
            ):
                raise ValueError(
                    f"{self.method.name!r} needs the representation Jacobian itself, which "
                    "cannot be formed for the global batch without gathering every rank's "
                    "representation gradients: use level='parameters' or distributed='local'"
                )
        self._comm = comm
        return comm

    def _global_task_gradients(
        self, comm: Communicator, grads: RowScaledGradients
    ) -> RowScaledGradients:
        """The task gradients of the global batch from this rank's (see
        :mod:`taskbalance.distributed`)."""
        if self.level == "representation":
            return GramianGradients(
                comm.global_representation_gramian(grads.raw_gramian),
                grads.shapes,
                _no_combination,
            )
        if not isinstance(grads, TaskGradients):  # the Gram-only path is off when distributed
            raise RuntimeError("distributed balancing at parameter level needs the Jacobian")
        if self.needs == Need.GRAMIAN and comm.shards_columns:  # only G and J^T w needed
            return shard_jacobian(comm, grads.blocks)
        return TaskGradients(comm.global_blocks(grads.blocks))

    def _averaged(
        self,
        comm: Communicator,
        params: list[Tensor],
        grads: list[Tensor],
        from_global_jacobian: bool,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Average over the ranks what was computed from this rank's graph: everything, but
        the shared gradients when they were combined from the global Jacobian."""
        shared_done = comm.is_global and from_global_jacobian and self.level == "parameters"
        shared_ids = {id(p) for p in self.shared_params} if shared_done else set()
        local = [p for p in self._all_params(params) if id(p) not in shared_ids]
        by_id = {id(p): g for p, g in zip(params, grads, strict=True)}
        averaged_params, averaged = comm.average_gradients(local, [by_id.get(id(p)) for p in local])
        done = [
            (p, by_id[id(p)]) for p in self.shared_params if id(p) in shared_ids and id(p) in by_id
        ]
        return [p for p, _ in done] + averaged_params, [g for _, g in done] + averaged

    def _all_params(self, params: list[Tensor]) -> list[Tensor]:
        """Shared then task parameters in a fixed order (the same on every rank)."""
        shared_ids = {id(p) for p in self.shared_params}
        return self.shared_params + [p for p in params if id(p) not in shared_ids]

    def _reached_shared(self, stacked: Tensor) -> Callable[[Tensor], bool]:
        """Whether a shared parameter is reached by the losses (one graph walk): parameters
        no task uses keep ``.grad = None`` (so that e.g. AdamW's decay leaves them alone), as
        after a plain ``backward``."""
        leaves = {id(p) for p in reachable_leaves([stacked])}
        return lambda p: id(p) in leaves

    def _check_connected(
        self,
        losses: list[Tensor],
        representation: tuple[Tensor, ...] | None,
        grads: RowScaledGradients,
        names: tuple[str, ...],
    ) -> None:
        """Raise when a task's gradient is zero because its loss is not computed from what
        the gradients are taken of (the representation, or every shared parameter): gradient
        methods would otherwise weight a task that cannot move (MGDA gives it all the weight,
        Nash-MTL ~1e6), silently. A gradient that is zero by value (a dead unit, a constant
        loss) is left to the method. Costs a graph walk only when a gradient row is zero."""
        zero = (grads.norms() == 0).tolist()
        if not any(zero):
            return
        at_representation = self.level == "representation"
        targets = list(representation) if at_representation and representation else []
        targets = targets or self.shared_params
        cut = [
            name
            for name, loss, is_zero in zip(names, losses, zero, strict=True)
            if is_zero and not depends_on(loss, targets)
        ]
        if not cut:
            return
        what = "the representation" if at_representation else "any shared parameter"
        raise ValueError(
            f"the loss of task(s) {cut} does not depend on {what}, so its gradient is zero "
            "by construction and gradient methods would weight it wrongly: make its head read "
            "the shared representation, leave it out of the balancer's losses, or list its "
            "parameters among shared_params"
        )

    def _task_params(
        self, losses: list[Tensor], representation: tuple[Tensor, ...] | None, need: Need
    ) -> tuple[list[Tensor], bool, list[list[Tensor]] | None]:
        """Task-specific parameters; whether the shared parameters reach the losses only
        through ``representation`` (then per-task gradients can be chained through it); and,
        where per-task gradients are computed and the losses read one representation through
        heads that share no computation, each task's own parameters (see
        :mod:`taskbalance.engine.heads`). Declared task parameters need no walk of the graph
        unless per-task gradients are chained through the representation (the walk checks
        that nothing bypasses it)."""
        no_task_gradients = need < Need.GRAMIAN and self.level == "parameters"
        if self.task_params is not None and (representation is None or no_task_gradients):
            return [p for p in self.task_params if p.requires_grad], False, None
        per_task: list[list[Tensor]] | None = None
        if need >= Need.GRAMIAN and (representation is None or _single(representation)):
            stop = None if representation is None else representation[0]
            per_task, disjoint = leaves_by_root(losses, stop_at=stop)
            leaves = list({id(p): p for ps in per_task for p in ps}.values())
            if not self._checked_sharing:
                self._warn_task_specific_shared(per_task)
            if representation is not None and not disjoint:
                per_task = None  # (without one, each task's own parameters are kept below)
        else:
            leaves = reachable_leaves(losses, stop_at=representation)
        shared_ids = {id(p) for p in self.shared_params}
        bypass = any(id(p) in shared_ids for p in leaves)
        if bypass and representation is not None:
            _check_representation_used(losses, representation)
        if bypass and self.level == "representation" and not self._warned_bypass:
            self._warned_bypass = True
            logger.warning(
                "some shared parameters reach the losses without passing through the "
                "representation; at representation level they get only the gradient that "
                "flows through it for direction-returning methods"
            )
        separable = _single(representation) and not bypass
        if self.task_params is not None:
            task_params = [p for p in self.task_params if p.requires_grad]
        else:
            task_params = [p for p in leaves if id(p) not in shared_ids]
        # several representation tensors: per-task gradients come from the stacked losses
        if per_task is None or (representation is not None and not separable):
            return task_params, separable, None
        own = {id(p) for p in task_params}
        heads = [[p for p in ps if id(p) in own] for ps in per_task]
        several = sum(map(len, heads)) != len({id(p) for head in heads for p in head})
        if representation is None and several:
            return task_params, separable, None  # a task parameter that several tasks reach
        return task_params, separable, heads

    def _warn_task_specific_shared(self, per_task: list[list[Tensor]]) -> None:
        """Once: shared parameters that only one task's loss reaches (a head passed with the
        trunk, e.g. ``Balancer("mgda", model.parameters())``) are balanced as if shared."""
        self._checked_sharing = True
        if len(per_task) < 2:
            return
        reached: dict[int, list[int]] = {}
        for task, params in enumerate(per_task):
            for p in params:
                reached.setdefault(id(p), []).append(task)
        shared = [reached.get(id(p), []) for p in self.shared_params]
        if len({task for tasks in shared for task in tasks}) < len(per_task):
            return  # a task reaches no shared parameter: refused by _check_connected
        own = [
            (name, tasks[0])
            for name, tasks in zip(self.shared_names, shared, strict=True)
            if len(tasks) == 1
        ]
        if not own:
            return
        names = self.task_names or ()
        listed = ", ".join(
            f"{name!r} (task {names[task] if task < len(names) else task!r})"
            for name, task in own[:6]
        )
        logger.warning(
            "%d shared parameter(s) reach one task's loss only: %s%s. They are that task's "
            "own parameters, yet %r balances them as shared, which changes its weights "
            "(LibMTL and TorchJD's mtl_backward balance the shared parameters only). Leave "
            "them out of shared_params (they then get their task's ordinary gradient, as the "
            "heads do), or ignore this if balancing them is intended",
            len(own),
            listed,
            ", ..." if len(own) > 6 else "",
            self.method.name,
        )

    def _task_gradients(
        self,
        losses: list[Tensor],
        stacked: Tensor,
        representation: tuple[Tensor, ...] | None,
        separable: bool,
        heads: list[list[Tensor]] | None,
        need: Need,
    ) -> tuple[RowScaledGradients | None, HeadGradients | None]:
        """The engine: per-task gradients at the chosen level, only if something needs them;
        and the heads' own gradients where they came out of the same backwards (``heads``
        given: one disjoint head per task, see :mod:`taskbalance.engine.heads`).

        * representation level: ``dL_i/dz``, one backward through each head;
        * parameter level with a representation the trunk reaches the losses through:
          ``dL_i/dz`` as above, then all ``T`` rows carried through the trunk in one batched
          backward (no head is traversed more than once per task);
        * parameter level otherwise: one batched backward of the stacked losses.

        At parameter level, when only the Gram matrix is needed (and :meth:`_gramian_only`
        says so), the batched backward folds each parameter's rows into the Gram matrix as
        they appear instead of returning the Jacobian; when the Jacobian itself is needed, it
        writes them into their columns of one ``(T, P)`` matrix (no concatenation).
        """
        if need < Need.GRAMIAN:
            return None, None
        head_pass: HeadGradients | None = None
        gram_only = need == Need.GRAMIAN and self._gramian_only(len(losses))
        if heads is not None and representation is not None:
            head_pass = linear_heads(losses, representation[0], heads)
            if head_pass is None:
                head_pass = head_backwards(losses, representation[0], heads, retain_graph=False)
        elif heads is not None and not gram_only:
            # without a representation: each task's own parameters first, so that the
            # batched backward below is the graph's last and may free it
            head_pass = head_backwards(losses, None, heads, retain_graph=True)
        if self.level == "representation":
            assert representation is not None
            if isinstance(head_pass, LinearHeads) and need == Need.GRAMIAN:
                (heads_gramian,) = fetch(head_pass.gramian().to(torch.float64))
                if in_safe_range(heads_gramian):  # (else the rows' rescaled path below)
                    return GramianGradients(
                        heads_gramian, [representation[0].shape], self._head_combiner(head_pass)
                    ), head_pass
            if head_pass is not None and head_pass.rows is not None:
                return TaskGradients([head_pass.rows]), head_pass
            return TaskGradients([representation_jacobian(losses, z) for z in representation]), None
        if separable:
            assert representation is not None
            outputs = representation[0]
            rows = None if head_pass is None else head_pass.rows
            grad_outputs = representation_jacobian(losses, outputs) if rows is None else rows
        else:
            outputs = stacked
            grad_outputs = torch.eye(len(losses), dtype=stacked.dtype, device=stacked.device)
        if gram_only:
            on_device = layerwise_gramian(outputs, self.shared_params, grad_outputs)
            gramian = None if on_device is None else fetch(on_device)[0]
            if gramian is None:  # the backward cannot be vectorised: do not try again
                self._layerwise_ok = False
            elif in_safe_range(gramian):
                return GramianGradients(
                    gramian,
                    [p.shape for p in self.shared_params],
                    self._combiner(outputs, grad_outputs, last_use=separable),
                ), head_pass
            # else the float32 products over/underflowed (this step only): blocks, rescaled
        # with the representation, the Jacobian's backward is the last one below it: it frees
        # the trunk's saved tensors as a plain backward would (where it is known to vectorise)
        if need == Need.JACOBIAN and self.batched and self._layerwise_ok:
            free = (separable or head_pass is not None) and "stacked" in self._vectorised
            matrix = stacked_jacobian(
                outputs, self.shared_params, grad_outputs, retain_graph=not free
            )
            if matrix is not None:
                self._vectorised.add("stacked")
                shapes = [p.shape for p in self.shared_params]
                return TaskGradients.from_columns(matrix, shapes), head_pass
            self._layerwise_ok = False
        free = (separable or head_pass is not None) and (
            not self.batched or "batched" in self._vectorised
        )
        blocks, ok = batched_vjp(
            outputs,
            self.shared_params,
            grad_outputs,
            batched=self.batched,
            retain_graph=not free,
        )
        if self.batched and ok:
            self._vectorised.add("batched")
        self.batched = self.batched and ok
        return TaskGradients(blocks), head_pass

    def _gramian_only(self, num_tasks: int) -> bool:
        """Whether to take the layer-wise Gram path (see ``engine`` in the class docstring)."""
        if self.engine == "jacobian" or not (self.batched and self._layerwise_ok):
            return False
        if self._comm is not None and self._comm.is_global:
            return False  # the global Jacobian is exchanged, not only a Gram matrix
        if self.engine == "gramian" or num_tasks >= _LAYERWISE_MIN_TASKS:
            return True
        jacobian_bytes = num_tasks * sum(p.numel() * p.element_size() for p in self.shared_params)
        return jacobian_bytes > _LAYERWISE_MIN_JACOBIAN_BYTES

    def _combiner(
        self, outputs: Tensor, grad_outputs: Tensor, *, last_use: bool
    ) -> Callable[[Tensor], list[Tensor]]:
        """``w -> J^T w`` for the Gram path: one backward of ``sum_i w_i grad_outputs[i]``.
        ``last_use``: nothing traverses the graph below ``outputs`` after it (``outputs`` is
        the representation, whose heads are above it), so the backward frees the trunk's
        saved tensors as a plain ``backward`` would; called at most once then."""
        shared = self.shared_params

        def combine(weights: Tensor) -> list[Tensor]:
            on_device = to_device(weights, grad_outputs.device, grad_outputs.dtype)
            combined = torch.tensordot(on_device, grad_outputs, dims=1)
            result = torch.autograd.grad(
                outputs,
                shared,
                grad_outputs=combined,
                retain_graph=not last_use,
                allow_unused=True,
            )
            return [
                torch.zeros_like(p) if g is None else g for p, g in zip(shared, result, strict=True)
            ]

        return combine

    @staticmethod
    def _head_combiner(head_pass: LinearHeads) -> Callable[[Tensor], list[Tensor]]:
        """``w -> [sum_i w_i dL_i/dz]`` from linear heads' output gradients."""

        def combine(weights: Tensor) -> list[Tensor]:
            dtype, device = head_pass.rows_dtype_device
            return [head_pass.combined_rows(to_device(weights, device, dtype))]

        return combine

    def _parameter_gradients(
        self,
        combination: Combination,
        grads: RowScaledGradients | None,
        head_pass: HeadGradients | None,
        stacked: Tensor,
        scales: Tensor | None,
        representation: tuple[Tensor, ...] | None,
        task_params: list[Tensor],
        unscale: float = 1.0,
        *,
        separable: bool = False,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Gradients of all parameters involved, from the method's combination (gradients
        that autograd computes from the scaled losses are multiplied by ``unscale``). With
        ``head_pass``, the heads are not traversed again: their gradients and the
        representation's output gradient are combined from it. On the Gram path without a
        separable representation, ``J^T w`` and the heads' gradients are one backward of
        ``sum_i a_i L_i`` (which also frees the graph)."""
        device = stacked.device
        factor = 1.0
        if combination.weights is not None and self.method.needs is not Need.LOSSES:
            # (a gradient method's weights, from the host copy of the Gram matrix, also when
            # reused; a loss weighting's may be on the device and come from the losses)
            factor = representable_factor(combination.weights, stacked.dtype)
            if factor != 1.0:  # weights beyond the losses' dtype: apply w / s, then times s
                combination = Combination(weights=combination.weights / factor)
                unscale = unscale * factor
        if combination.weights is not None and grads is None:
            # loss weighting (or reused weights): one ordinary backward of sum_i w_i L_i, the
            # weights fed to it as the losses' output gradient
            applied = _as_loss_gradient(combination.weights, stacked)
            if scales is not None:
                applied = applied * to_device(scales, device, stacked.dtype)
            return _grad(
                stacked,
                self.shared_params + task_params,
                grad_output=applied,
                retain_graph=False,
                unscale=unscale,
            )
        if combination.weights is not None and grads is not None:
            weights = to_device(combination.weights, device)  # (host weights: sent once)
            applied = weights.to(stacked.dtype)
            if scales is not None:
                applied = applied * to_device(scales, device, stacked.dtype)
            if head_pass is not None and self.level == "representation":
                assert representation is not None
                trunk_params, trunk_grads = _grad(
                    representation[0],
                    self.shared_params,
                    grad_output=head_pass.combined_rows(applied),
                    retain_graph=False,
                    unscale=unscale,
                )
                head_params, head_grads = head_pass.weighted(applied, unscale / factor, factor)
                return trunk_params + head_params, trunk_grads + head_grads
            through_losses = isinstance(grads, GramianGradients) and not separable
            if self.level == "representation" or through_losses:
                return _grad(
                    stacked,
                    self.shared_params + task_params,
                    grad_output=applied,
                    retain_graph=False,
                    unscale=unscale,
                )
            reached = self._reached_shared(stacked)
            shared = grads.combine(weights)
            if factor != 1.0 and shared:
                torch._foreach_mul_(shared, factor)
            if head_pass is not None:
                head_params, head_grads = head_pass.weighted(applied, unscale / factor, factor)
            else:
                head_params, head_grads = _grad(
                    stacked, task_params, grad_output=applied, retain_graph=False, unscale=unscale
                )
            kept = [(p, g) for p, g in zip(self.shared_params, shared, strict=True) if reached(p)]
            return [p for p, _ in kept] + head_params, [g for _, g in kept] + head_grads
        if not isinstance(grads, TaskGradients) or combination.direction is None:
            raise RuntimeError(
                f"{self.method.name} returned a direction without per-task gradients"
            )
        pieces = grads.split(combination.direction)
        row_factor = (
            torch.ones_like(stacked) if scales is None else to_device(scales, device, stacked.dtype)
        )
        at_parameters = self.level == "parameters"
        if head_pass is not None:
            head_params, head_grads = head_pass.weighted(row_factor, unscale)
        else:
            head_params, head_grads = _grad(
                stacked,
                task_params,
                grad_output=row_factor,
                retain_graph=not at_parameters,
                unscale=unscale,
            )
        if at_parameters:
            reached = self._reached_shared(stacked)
            kept = [(p, g) for p, g in zip(self.shared_params, pieces, strict=True) if reached(p)]
            return [p for p, _ in kept] + head_params, [g for _, g in kept] + head_grads
        assert representation is not None
        trunk_params, trunk_grads = _grad(
            representation,
            self.shared_params,
            grad_output=[piece / unscale for piece in pieces],
            retain_graph=False,
            unscale=unscale,
        )
        return trunk_params + head_params, trunk_grads + head_grads

    def _skip(
        self, names: tuple[str, ...], losses: Tensor, reason: str, *, weights: Tensor | None = None
    ) -> StepInfo:
        written = "nothing was written to .grad"
        if self._scaler_step:
            # tell the GradScaler, as an overflowing backward would: it finds inf in .grad,
            # skips optimizer.step() and lowers the scale in update()
            first = self.shared_params[0]
            first.grad = torch.full_like(first, float("inf"))
            reason += " (GradScaler: inf written to .grad, its step is skipped)"
            written = f"only inf to {self.shared_names[0]!r}'s .grad, for the GradScaler"
        self._skips += 1
        if self._skips == 1 or self._skips % 100 == 0:
            logger.warning(
                "step %d skipped (%s); %s (%d skipped so far)",
                self.step,
                reason,
                written,
                self._skips,
            )
        info = StepInfo(
            task_names=names,
            losses=losses,
            level=self.level,
            step=self.step,
            weights=weights,
            skipped=True,
            reason=reason,
        )
        if self.monitor is not None:
            self.monitor.observe(info)
        return info

    def end_epoch(self) -> None:
        """Tell the method an epoch ended (epoch-based methods such as ``dwa`` need it)."""
        self.method.end_epoch()

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "method": self.method.state_dict(),
            "transforms": [t.state_dict() for t in self.transforms],
            "step": self.step,
            "task_names": list(self.task_names) if self.task_names is not None else None,
            "cached_weights": self._cached_weights,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = sorted(_STATE_KEYS - set(state))
        if missing:
            raise ValueError(
                f"not a Balancer state: missing {missing} (got keys {sorted(state)}); pass what "
                "Balancer.state_dict() returned (a method's own state goes to "
                "balancer.method.load_state_dict)"
            )
        transforms = cast(list[dict[str, Any]], state["transforms"])
        if len(transforms) != len(self.transforms):
            raise ValueError(
                f"state has {len(transforms)} transforms, this Balancer has {len(self.transforms)}"
            )
        self.method.load_state_dict(state["method"])
        for transform, transform_state in zip(self.transforms, transforms, strict=True):
            transform.load_state_dict(transform_state)
        self.step = int(state["step"])
        names = state["task_names"]
        self.task_names = tuple(names) if names is not None else None
        cached = state.get("cached_weights")
        self._cached_weights = None if cached is None else cached.clone()

    def __repr__(self) -> str:
        return (
            f"Balancer({self.method!r}, level={self.level!r}, transforms={self.transforms!r}, "
            f"shared_params={len(self.shared_params)} tensors)"
        )


_STATE_KEYS = frozenset({"method", "transforms", "step", "task_names"})
"""Keys every :meth:`Balancer.state_dict` has (``cached_weights`` is optional: older states)."""


def _as_loss_gradient(weights: Tensor, stacked: Tensor) -> Tensor:
    """``weights`` as the output gradient of the stacked losses: on their device, in their
    dtype (the tensor itself where it already is; autograd does not write to it)."""
    if weights.device == stacked.device and weights.dtype == stacked.dtype:
        return weights
    return to_device(weights, stacked.device, stacked.dtype)


_STALL_RATIO = 1e-9
"""A combination ``J^T w`` shorter than this fraction of ``|w|_1 max_i |g_i|`` is a stall:
MGDA's exact zero, IMTL-G's ~1e-16 with a zero gradient (its weight goes to that task)."""


def _stalled(grads: RowScaledGradients, combination: Combination, written_norm: float) -> bool:
    """Whether the method's combination of the (row-scaled) task gradients vanished while
    some task gradient did not. For weights on the host (every Gram method) it is read from
    the Gram matrix already there, ``|J^T w|^2 = w^T G w`` (a ``T x T`` product in NumPy, no
    device work); for a direction, only an update that is exactly 0 counts."""
    gramian = grads.gramian
    if gramian.device.type != "cpu":
        return written_norm == 0.0 and bool((gramian.diagonal() > 0).any())
    g = gramian.numpy()  # (the engine's host copy: no gradient, float64)
    largest = float(g.diagonal().max(initial=0.0))
    if not largest > 0:
        return False  # (every task gradient is 0, or the Gram matrix is not finite)
    weights = combination.weights
    if weights is None or weights.device.type != "cpu":
        return written_norm == 0.0
    w = weights.detach().numpy().astype(np.float64, copy=False)
    squared = float(w.dot(g.dot(w)))
    reach = float(np.abs(w).sum()) * math.sqrt(largest)
    return math.isfinite(squared) and squared <= (_STALL_RATIO * reach) ** 2


def _grad(
    output: Tensor | Sequence[Tensor],
    params: list[Tensor],
    *,
    retain_graph: bool,
    grad_output: Tensor | Sequence[Tensor] | None = None,
    unscale: float = 1.0,
) -> tuple[list[Tensor], list[Tensor]]:
    """Gradients of ``output`` w.r.t. ``params``; parameters it does not reach are dropped."""
    if not params:
        return [], []
    result = torch.autograd.grad(
        output,
        params,
        grad_outputs=grad_output,
        retain_graph=retain_graph,
        allow_unused=True,
    )
    pairs = [(p, g) for p, g in zip(params, result, strict=True) if g is not None]
    grads = [g if unscale == 1.0 else g * unscale for _, g in pairs]
    return [p for p, _ in pairs], grads
