"""What one balancing step computed, for logging and diagnostics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["StepInfo", "cosine_matrix"]


def cosine_matrix(gramian: Tensor) -> Tensor:
    """Task-gradient cosine similarities from a Gram matrix (0 where a gradient is zero):
    ``G_ij / sqrt(G_ii G_jj)``, clamped to ``[-1, 1]``. Computed in NumPy on the host (the
    matrix is ``T x T``; the engine's is there already) and returned where it came from."""
    values = gramian.detach().to("cpu", torch.float64).numpy()
    with np.errstate(invalid="ignore", over="ignore"):  # (non-finite entries stay NaN / inf)
        norms = np.sqrt(np.maximum(values.diagonal(), 0.0))
        outer = np.outer(norms, norms)
        cosines = np.divide(values, outer, out=np.zeros_like(values), where=outer > 0)
    np.clip(cosines, -1.0, 1.0, out=cosines)
    return torch.from_numpy(cosines).to(gramian.device, gramian.dtype)


@dataclass(frozen=True)
class StepInfo:
    """Result of :meth:`taskbalance.Balancer.backward`.

    Tensors stay on the device they were computed on; :meth:`as_dict` moves them to the host.

    Attributes:
        task_names: the tasks, in order.
        losses: detached task losses ``(T,)``.
        weights: task weights the method chose ``(T,)``, or ``None`` when the method returned a
            direction (or the step was skipped).
        task_scales: factors of the per-task transforms ``(T,)`` (e.g. per-task clipping),
            ``None`` without such transforms. The applied weight of task ``i`` is
            ``weights[i] * task_scales[i]``.
        task_grad_norms: per-task gradient norms ``(T,)`` (before transforms), when per-task
            gradients were computed; ``None`` for loss-weighting methods.
        cosines: ``(T, T)`` task-gradient cosine matrix when the Gram matrix was computed.
        grad_norm: global norm of everything written to ``.grad`` this step (after transforms).
        skipped: ``True`` when nothing was written to ``.grad`` (see ``reason``).
        reason: why the step was skipped.
        level: ``"parameters"`` or ``"representation"``.
        step: index of the step (counts steps that were not skipped).
        reused_weights: ``True`` on the in-between steps of ``Balancer(update_every=k)``,
            where the last weights were reused without per-task gradients.
        stalled: ``True`` when a gradient method's combination of the task gradients is 0
            (below 1e-9 of ``|w|_1 max_i |g_i|``) while some task
            gradient is not: a Pareto-stationary point for the method, where the shared
            parameters stop moving (MGDA or IMTL-G with a task whose gradient is 0, MGDA or
            UPGrad with exactly opposite gradients).
        layer_names, layer_grad_norms, layer_weight_norms: per shared parameter tensor, the
            norm of the update written and of the weights (only on steps a
            :class:`~taskbalance.health.HealthMonitor` observes).
    """

    task_names: tuple[str, ...]
    losses: Tensor
    level: str
    step: int
    weights: Tensor | None = None
    task_scales: Tensor | None = None
    task_grad_norms: Tensor | None = None
    cosines: Tensor | None = None
    grad_norm: Tensor | None = None
    skipped: bool = False
    reason: str | None = None
    reused_weights: bool = False
    stalled: bool = False
    layer_names: tuple[str, ...] = ()
    layer_grad_norms: Tensor | None = None
    layer_weight_norms: Tensor | None = None

    @property
    def conflict_rate(self) -> float | None:
        """Share of task pairs whose gradients have a negative cosine."""
        if self.cosines is None or len(self.task_names) < 2:
            return None
        upper = torch.triu_indices(len(self.task_names), len(self.task_names), offset=1)
        pairs = self.cosines[upper[0], upper[1]]
        return float((pairs < 0).to(torch.float64).mean())

    def as_dict(self) -> dict[str, float]:
        """Flat ``name -> float`` view for loggers (``loss/task``, ``weight/task``, ...)."""
        out: dict[str, float] = {
            "skipped": float(self.skipped),
            "stalled": float(self.stalled),
            "step": float(self.step),
        }
        vectors = {
            "loss": self.losses,
            "weight": self.weights,
            "task_scale": self.task_scales,
            "grad_norm": self.task_grad_norms,
        }
        for prefix, vector in vectors.items():
            if vector is not None:
                for name, value in zip(self.task_names, vector.tolist(), strict=True):
                    out[f"{prefix}/{name}"] = float(value)
        if self.cosines is not None:
            values = self.cosines.tolist()
            for i, a in enumerate(self.task_names):
                for j in range(i + 1, len(self.task_names)):
                    out[f"cosine/{a}/{self.task_names[j]}"] = float(values[i][j])
        if self.grad_norm is not None:
            out["grad_norm"] = float(self.grad_norm)
        if self.layer_grad_norms is not None:
            for name, value in zip(self.layer_names, self.layer_grad_norms.tolist(), strict=True):
                out[f"layer_grad_norm/{name}"] = float(value)
        rate = self.conflict_rate
        if rate is not None:
            out["conflict_rate"] = rate
        return out
