"""Gradient-health monitor: per-task and per-layer statistics over training, with warnings.

Attach it to a balancer (``Balancer(..., monitor=HealthMonitor())``). On the steps it observes
(every ``every`` steps) it reads what the step computed anyway (:class:`StepInfo`: task
weights, task-gradient norms and cosines when a gradient method ran, per-layer norms of the
update the balancer wrote) and

* records, for plots and logs: per-task gradient norms, per-layer gradient norms, the task
  cosine matrix, the conflict rate (share of task pairs with a negative cosine), the ratio of
  the largest to the smallest task-gradient norm, each task's share of the update, and (with
  :meth:`watch`) the update-to-weight ratio of every layer;
* diagnoses vanishing and exploding gradients, dominating and starving tasks, and persistent
  conflicts between two tasks (:mod:`taskbalance.health.diagnose`), each as a rate-limited
  warning on the ``taskbalance.health`` logger naming the task or layer and a remedy, and in
  :attr:`diagnoses` / :meth:`summary`.

Cost: with a gradient method, nothing beyond one norm per shared parameter on observed steps.
With a loss-weighting method the per-task norms do not exist; ``task_gradients=True`` asks the
balancer to compute the Gram matrix on observed steps (the only case where the monitor adds
backward work, and only every ``every`` steps). Off (no monitor) costs nothing.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from taskbalance._validation import is_positive_int
from taskbalance.health.diagnose import REMEDIES, Diagnosis, HealthThresholds
from taskbalance.step_info import StepInfo

__all__ = ["HealthMonitor"]

logger = logging.getLogger("taskbalance.health")

_HISTORY = 50


class HealthMonitor:
    """Records gradient statistics and warns about unhealthy training (see module docstring).

    Args:
        every: observe one step in ``every`` (counted in balancer steps).
        task_gradients: compute per-task gradient norms on observed steps even for
            loss-weighting methods (costs the per-task backward on those steps only).
        thresholds: when to warn.
        warn: log warnings (diagnoses are collected either way).
    """

    def __init__(
        self,
        every: int = 1,
        task_gradients: bool = False,
        thresholds: HealthThresholds | None = None,
        warn: bool = True,
    ) -> None:
        if not is_positive_int(every):
            raise ValueError(f"every must be a positive int, got {every!r}")
        if not isinstance(task_gradients, bool) or not isinstance(warn, bool):
            raise TypeError(
                f"task_gradients and warn must be True or False, got {task_gradients!r} and "
                f"{warn!r}"
            )
        self.every = every
        self.task_gradients = task_gradients
        self.thresholds = thresholds or HealthThresholds()
        self.warn = warn
        self.records: list[dict[str, Any]] = []
        self.diagnoses: list[Diagnosis] = []
        self._checks = 0
        self._baselines: dict[str, list[float]] = defaultdict(list)
        self._recent: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=_HISTORY))
        self._streaks: dict[str, int] = defaultdict(int)
        self._last_warned: dict[str, int] = {}
        self._cosine_sum: Tensor | None = None
        self._cosine_count = 0
        self._cosine_ema: Tensor | None = None
        self._pending_update: dict[str, Tensor] = {}
        self._update_ratios: dict[str, float] = {}

    # ----------------------------------------------------------------- balancer side
    def wants(self, step: int) -> bool:
        """Whether the balancer's step ``step`` is observed."""
        return step % self.every == 0

    def observe(self, info: StepInfo) -> list[Diagnosis]:
        """Record one observed step and return the diagnoses it raised."""
        self._checks += 1
        record: dict[str, Any] = {"step": info.step, "skipped": info.skipped}
        found: list[Diagnosis] = []
        names = info.task_names
        if info.skipped:
            if info.reason and "non-finite" in info.reason:
                subject = (
                    f"task(s) {info.reason.split('task(s)')[-1].strip()}"
                    if "task(s)" in info.reason
                    else "the combined gradient"
                )
                found += self._raise("exploding", subject, info.step, info.reason, always=True)
            self.records.append(record)
            return self._emit(found)
        record["losses"] = dict(zip(names, info.losses.tolist(), strict=True))
        if info.task_grad_norms is not None:
            norms = info.task_grad_norms.tolist()
            record["task_grad_norms"] = dict(zip(names, norms, strict=True))
            positive = [n for n in norms if n > 0]
            record["norm_ratio"] = max(positive) / min(positive) if positive else math.nan
            found += self._task_norm_rules(names, norms, info.step)
            found += self._stall_rule(info, norms)
            shares = self._shares(info)
            if shares is not None:
                record["update_share"] = dict(zip(names, shares, strict=True))
                found += self._share_rules(names, shares, info.step)
        if info.cosines is not None:
            cosines = info.cosines.detach().to(torch.float64).cpu()
            record["conflict_rate"] = info.conflict_rate
            self._cosine_sum = cosines if self._cosine_sum is None else self._cosine_sum + cosines
            self._cosine_count += 1
            self._cosine_ema = (
                cosines if self._cosine_ema is None else 0.9 * self._cosine_ema + 0.1 * cosines
            )
            found += self._conflict_rules(names, info.step)
        if info.layer_grad_norms is not None and info.layer_names:
            layer_norms = info.layer_grad_norms.tolist()
            record["layer_grad_norms"] = dict(zip(info.layer_names, layer_norms, strict=True))
            if info.layer_weight_norms is not None:
                weight_norms = info.layer_weight_norms.tolist()
                found += self._layer_rules(info.layer_names, layer_norms, weight_norms, info.step)
        if self._update_ratios:
            record["update_to_weight"] = dict(self._update_ratios)
        self.records.append(record)
        return self._emit(found)

    # ----------------------------------------------------------------- optimizer side
    def watch(
        self, optimizer: torch.optim.Optimizer, named_parameters: Iterable[tuple[str, Tensor]]
    ) -> None:
        """Also record each layer's update-to-weight ratio ``|w_new - w_old| / |w_old|`` on
        observed steps, through the optimizer's step hooks."""
        named = list(named_parameters)
        state = {"step": 0}

        def before(*_: Any) -> None:
            if self.wants(state["step"]):
                self._pending_update = {n: p.detach().clone() for n, p in named}

        def after(*_: Any) -> None:
            if self._pending_update:
                for name, p in named:
                    old = self._pending_update[name]
                    denominator = float(old.norm())
                    change = float((p.detach() - old).norm())
                    self._update_ratios[name] = (
                        change / denominator if denominator > 0 else math.inf
                    )
                self._pending_update = {}
            state["step"] += 1

        optimizer.register_step_pre_hook(before)
        optimizer.register_step_post_hook(after)

    # ----------------------------------------------------------------- rules
    def _shares(self, info: StepInfo) -> list[float] | None:
        if info.task_grad_norms is None or len(info.task_names) < 2:
            return None
        contribution = info.task_grad_norms.detach().to(torch.float64).cpu()
        if info.weights is not None:
            contribution = contribution * info.weights.detach().to(torch.float64).cpu().abs()
        if info.task_scales is not None:
            contribution = contribution * info.task_scales.detach().to(torch.float64).cpu()
        total = float(contribution.sum())
        if not total > 0 or not math.isfinite(total):
            return None
        return (contribution / total).tolist()

    def _task_norm_rules(
        self, names: tuple[str, ...], norms: list[float], step: int
    ) -> list[Diagnosis]:
        th = self.thresholds
        found: list[Diagnosis] = []
        for name, norm in zip(names, norms, strict=True):
            key = f"task:{name}"
            if not math.isfinite(norm):
                found += self._raise(
                    "exploding", f"task {name!r}", step, "non-finite gradient norm", always=True
                )
                continue
            # exactly 0 while another task's is not: its own baseline is 0 as well, so the
            # relative rule below never fires for a task that was dead from the start
            dead = norm == 0 and any(other > 0 for other in norms)
            if self._persist(f"dead:{key}", dead):
                found += self._raise(
                    "vanishing",
                    f"task {name!r}",
                    step,
                    "gradient is exactly 0 (a constant loss, a dead head, or labels that never "
                    "vary): gradient methods treat it as solved",
                    remedy="vanishing_task",
                )
            baseline = self._baseline(key, norm)
            found += self._jump_rule(key, f"task {name!r}", norm, step)
            low = baseline is not None and norm < th.vanishing_ratio * baseline
            if self._persist(f"vanish:{key}", low):
                found += self._raise(
                    "vanishing",
                    f"task {name!r}",
                    step,
                    f"gradient norm {norm:.3g} is below {th.vanishing_ratio:g} of its early "
                    f"median {baseline:.3g}",
                    remedy="vanishing_task",
                )
        return found

    def _stall_rule(self, info: StepInfo, norms: list[float]) -> list[Diagnosis]:
        """The method's combination vanished while the tasks' gradients did not
        (:attr:`StepInfo.stalled`): a Pareto-stationary point, where training stops."""
        if not self._persist("stalled", info.stalled):
            return []
        return self._raise(
            "stalled",
            "the update",
            info.step,
            f"the method's combination of the task gradients is 0 while the largest task "
            f"gradient norm is {max(norms):.3g}: a Pareto-stationary point for the method, "
            "where the shared parameters stop moving",
        )

    def _share_rules(
        self, names: tuple[str, ...], shares: list[float], step: int
    ) -> list[Diagnosis]:
        th = self.thresholds
        fair = 1.0 / len(names)
        found: list[Diagnosis] = []
        for name, share in zip(names, shares, strict=True):
            if self._persist(f"dominate:{name}", share > th.dominance_share):
                found += self._raise(
                    "dominating",
                    f"task {name!r}",
                    step,
                    f"supplies {100 * share:.1f}% of the update",
                )
            if self._persist(f"starve:{name}", share < th.starvation_fraction * fair):
                found += self._raise(
                    "starving", f"task {name!r}", step, f"gets {100 * share:.2f}% of the update"
                )
        return found

    def _conflict_rules(self, names: tuple[str, ...], step: int) -> list[Diagnosis]:
        assert self._cosine_ema is not None
        found: list[Diagnosis] = []
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                mean_cosine = float(self._cosine_ema[i, j])
                if self._persist(
                    f"conflict:{i}:{j}", mean_cosine < self.thresholds.conflict_cosine
                ):
                    found += self._raise(
                        "conflict",
                        f"tasks {names[i]!r} and {names[j]!r}",
                        step,
                        "their gradients keep pointing apart "
                        f"(running mean cosine {mean_cosine:.2f})",
                    )
        return found

    def _layer_rules(
        self, layers: tuple[str, ...], norms: list[float], weights: list[float], step: int
    ) -> list[Diagnosis]:
        ratios = [n / w if w > 0 else n for n, w in zip(norms, weights, strict=True)]
        finite = [r for r in ratios if math.isfinite(r)]
        largest = max(finite) if finite else 0.0
        found: list[Diagnosis] = []
        for layer, norm, ratio in zip(layers, norms, ratios, strict=True):
            key = f"layer:{layer}"
            if not math.isfinite(norm):
                found += self._raise(
                    "exploding", f"layer {layer!r}", step, "non-finite gradient", always=True
                )
                continue
            found += self._jump_rule(key, f"layer {layer!r}", norm, step)
            vanishing = largest > 0 and ratio < self.thresholds.vanishing_ratio * largest
            if self._persist(f"vanish:{key}", vanishing):
                found += self._raise(
                    "vanishing",
                    f"layer {layer!r}",
                    step,
                    f"gradient-to-weight ratio {ratio:.2g} is below "
                    f"{self.thresholds.vanishing_ratio:g} of the largest layer's ({largest:.2g})",
                    remedy="vanishing_layer",
                )
        return found

    def _jump_rule(self, key: str, subject: str, norm: float, step: int) -> list[Diagnosis]:
        """Exploding: a norm above ``exploding_factor`` times its recent median."""
        recent = self._recent[key]
        found: list[Diagnosis] = []
        if len(recent) >= 5:
            median = statistics.median(recent)
            if median > 0 and norm > self.thresholds.exploding_factor * median:
                detail = (
                    f"gradient norm {norm:.3g} is {norm / median:.0f}x its recent median "
                    f"{median:.3g}"
                )
                found = self._raise("exploding", subject, step, detail, always=True)
        recent.append(norm)
        return found

    # ----------------------------------------------------------------- bookkeeping
    def _baseline(self, key: str, value: float) -> float | None:
        early = self._baselines[key]
        if len(early) < self.thresholds.warmup_checks:
            early.append(value)
            return None
        return statistics.median(early)

    def _persist(self, key: str, condition: bool) -> bool:
        self._streaks[key] = self._streaks[key] + 1 if condition else 0
        return self._streaks[key] >= self.thresholds.patience

    def _raise(
        self,
        kind: str,
        subject: str,
        step: int,
        detail: str,
        *,
        remedy: str | None = None,
        always: bool = False,
    ) -> list[Diagnosis]:
        key = f"{kind}:{subject}"
        last = self._last_warned.get(key)
        if (
            last is not None
            and self._checks - last < self.thresholds.repeat_every
            and not (always and self._checks - last >= self.thresholds.patience)
        ):
            return []
        self._last_warned[key] = self._checks
        return [Diagnosis(kind, subject, step, detail, REMEDIES[remedy or kind])]

    def _emit(self, found: list[Diagnosis]) -> list[Diagnosis]:
        for diagnosis in found:
            self.diagnoses.append(diagnosis)
            if self.warn:
                logger.warning(diagnosis.message())
        return found

    # ----------------------------------------------------------------- results
    def mean_cosines(self) -> Tensor | None:
        """Mean task-gradient cosine matrix over the observed steps (a cheap task affinity)."""
        if self._cosine_sum is None:
            return None
        return self._cosine_sum / self._cosine_count

    def summary(self) -> str:
        """A short report of what was observed and diagnosed."""
        lines = [f"gradient health: {self._checks} observed steps, {len(self.diagnoses)} warnings"]
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for d in self.diagnoses:
            counts[(d.kind, d.subject)] += 1
        for (kind, subject), count in sorted(counts.items()):
            last = next(
                d for d in reversed(self.diagnoses) if (d.kind, d.subject) == (kind, subject)
            )
            lines.append(f"- {kind}: {subject} ({count}x, last at step {last.step}): {last.detail}")
        rates = [r["conflict_rate"] for r in self.records if r.get("conflict_rate") is not None]
        if rates:
            lines.append(f"- mean conflict rate: {statistics.mean(rates):.2f}")
        if not self.diagnoses:
            lines.append("- no problem detected")
        return "\n".join(lines)

    def state_dict(self) -> dict[str, Any]:
        return {
            "checks": self._checks,
            "baselines": dict(self._baselines),
            "recent": {k: list(v) for k, v in self._recent.items()},
            "streaks": dict(self._streaks),
            "last_warned": dict(self._last_warned),
            "cosine_sum": self._cosine_sum,
            "cosine_count": self._cosine_count,
            "cosine_ema": self._cosine_ema,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._checks = int(state["checks"])
        self._baselines = defaultdict(list, {k: list(v) for k, v in state["baselines"].items()})
        self._recent = defaultdict(
            lambda: deque(maxlen=_HISTORY),
            {k: deque(v, maxlen=_HISTORY) for k, v in state["recent"].items()},
        )
        self._streaks = defaultdict(int, state["streaks"])
        self._last_warned = dict(state["last_warned"])
        self._cosine_sum = state["cosine_sum"]
        self._cosine_count = int(state["cosine_count"])
        self._cosine_ema = state["cosine_ema"]
