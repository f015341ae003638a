"""Mixture-of-experts architectures for recommendation: MMoE and PLE."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from taskbalance._validation import is_positive_int
from taskbalance.models.contract import MultiTaskModel

__all__ = ["PLE", "MMoE"]

GateInput = Callable[[Tensor], Tensor]


def _gate_features(x: Tensor, gate_input: GateInput | None) -> Tensor:
    features = x if gate_input is None else gate_input(x)
    if features.ndim != 2:
        raise ValueError(
            f"gates read a (batch, features) tensor, got shape {tuple(features.shape)}; pass "
            "gate_input=... to choose what the gates read (e.g. an embedding of the input), "
            "rather than flattened raw inputs"
        )
    return features


def _mix(weights: Tensor, experts: Tensor) -> Tensor:
    """``sum_e weights[b, e] * experts[b, e, ...]``."""
    shape = weights.shape + (1,) * (experts.ndim - 2)
    return (weights.view(shape) * experts).sum(dim=1)


class MMoE(MultiTaskModel):
    """Multi-gate mixture of experts (Ma et al., KDD 2018).

    Data flow: ``x -> expert_e -> h_e`` (shared by all tasks); for task ``t`` a softmax gate on
    the gate features ``f(x)`` gives ``g_t = softmax(W_t f(x))`` and the tower reads
    ``sum_e g_te h_e``::

        x --> expert_1..E --> H = [h_1..h_E] --+--> gate_1 mix --> tower_1 --> y_1
        f(x) ----------------> gate_t --------/          ...
                                                  +--> gate_T mix --> tower_T --> y_T

    The stacked expert outputs ``H`` (``batch x E x d``) are the shared representation: the
    experts reach the losses only through them, so ``level="representation"`` balances the
    gradients with respect to ``H`` (gates and towers are task-specific).

    Args:
        experts: the expert modules (same output shape).
        towers: ``task name -> tower`` reading the mixed expert output.
        gate_features: number of gate input features.
        gate_input: what the gates read, ``x -> (batch, gate_features)`` (default: ``x`` itself,
            which must then be a ``(batch, features)`` tensor).
    """

    def __init__(
        self,
        experts: Sequence[nn.Module],
        towers: Mapping[str, nn.Module],
        gate_features: int,
        gate_input: GateInput | None = None,
    ) -> None:
        super().__init__(tuple(towers))
        if not experts:
            raise ValueError("MMoE needs at least one expert")
        if not is_positive_int(gate_features):
            raise ValueError(
                f"gate_features must be the (positive) width of what the gates read, got "
                f"{gate_features!r}"
            )
        self.experts = nn.ModuleList(experts)
        self.gates = nn.ModuleDict({t: nn.Linear(gate_features, len(experts)) for t in towers})
        self.towers = nn.ModuleDict(dict(towers))
        self.gate_input = gate_input

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        expert_outputs = self.remember(torch.stack([e(x) for e in self.experts], dim=1))
        features = _gate_features(x, self.gate_input)
        return {
            task: self.towers[task](
                _mix(torch.softmax(self.gates[task](features), dim=-1), expert_outputs)
            )
            for task in self.task_names
        }

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.experts.parameters()

    def task_parameters(self, task: str | None = None) -> Iterator[nn.Parameter]:
        tasks = self.task_names if task is None else (self.check_task(task),)
        for name in tasks:
            yield from self.gates[name].parameters()
            yield from self.towers[name].parameters()


class _CGCLevel(nn.Module):
    """One customised-gate-control level: shared and task-specific experts, gated per task."""

    def __init__(
        self,
        tasks: Sequence[str],
        make_expert: Callable[[int], nn.Module],
        in_features: int,
        shared_experts: int,
        task_experts: int,
        with_shared_gate: bool,
    ) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.shared = nn.ModuleList(make_expert(in_features) for _ in range(shared_experts))
        self.specific: dict[str, nn.ModuleList] = nn.ModuleDict(  # type: ignore[assignment]
            {t: nn.ModuleList(make_expert(in_features) for _ in range(task_experts)) for t in tasks}
        )
        self.gates = nn.ModuleDict(
            {t: nn.Linear(in_features, task_experts + shared_experts) for t in tasks}
        )
        total = shared_experts + task_experts * len(tasks)
        self.shared_gate = nn.Linear(in_features, total) if with_shared_gate else None

    def forward(
        self, task_inputs: Mapping[str, Tensor], shared_input: Tensor
    ) -> tuple[dict[str, Tensor], Tensor]:
        shared_out = [e(shared_input) for e in self.shared]
        specific_out = {t: [e(task_inputs[t]) for e in self.specific[t]] for t in self.tasks}
        outputs = {}
        for t in self.tasks:
            experts = torch.stack(specific_out[t] + shared_out, dim=1)
            weights = torch.softmax(self.gates[t](task_inputs[t]), dim=-1)
            outputs[t] = _mix(weights, experts)
        if self.shared_gate is None:
            return outputs, shared_input
        everything = torch.stack(
            [o for t in self.tasks for o in specific_out[t]] + shared_out, dim=1
        )
        shared_next = _mix(torch.softmax(self.shared_gate(shared_input), dim=-1), everything)
        return outputs, shared_next


class PLE(MultiTaskModel):
    """Progressive layered extraction (Tang et al., RecSys 2020).

    Data flow: ``levels`` customised-gate-control (CGC) levels. At each level every task has
    its own experts and all tasks have shared experts; task ``t``'s gate mixes its own and the
    shared experts' outputs from its own input, and (below the top level) a shared gate mixes
    *all* experts into the next level's shared input::

        level 1:  x -> [task experts t | shared experts] -> gate_t -> u_t^1 ; shared gate -> s^1
        level k:  u_t^(k-1), s^(k-1) -> ... -> u_t^k ; s^k
        top:      u_t^L -> tower_t -> y_t

    Task-specific experts separate what tasks do not share, which limits negative transfer
    and the "seesaw" between tasks. Experts, gates and towers are modules of your choice;
    ``make_expert(in_features)`` builds one expert producing ``expert_features``.

    Per-task gates read their own level input, which depends on lower shared experts without
    passing through one tensor: there is no single shared representation, so use
    ``level="parameters"``. Shared parameters: the shared experts and shared gates of every
    level, and the task-specific experts below the top level (other tasks read them through
    the shared gates). Task ``t``'s gates, top-level experts and tower are its own.

    Args:
        make_expert: ``in_features -> expert module`` (outputs ``expert_features``).
        towers: ``task name -> tower``.
        in_features: input features.
        expert_features: output features of every expert.
        levels: number of CGC levels (>= 1).
        shared_experts: shared experts per level.
        task_experts: task-specific experts per task and level.
    """

    supports_representation = False

    def __init__(
        self,
        make_expert: Callable[[int], nn.Module],
        towers: Mapping[str, nn.Module],
        in_features: int,
        expert_features: int,
        levels: int = 2,
        shared_experts: int = 1,
        task_experts: int = 1,
    ) -> None:
        super().__init__(tuple(towers))
        if (
            levels < 1
            or shared_experts < 0
            or task_experts < 0
            or shared_experts + task_experts == 0
        ):
            raise ValueError("PLE needs levels >= 1 and at least one expert per gate")
        self.levels = nn.ModuleList(
            _CGCLevel(
                self.task_names,
                make_expert,
                in_features if level == 0 else expert_features,
                shared_experts,
                task_experts,
                with_shared_gate=level < levels - 1,
            )
            for level in range(levels)
        )
        self.towers = nn.ModuleDict(dict(towers))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        task_inputs = {t: x for t in self.task_names}
        shared = x
        for level in self.levels:
            task_inputs, shared = level(task_inputs, shared)
        return {t: self.towers[t](task_inputs[t]) for t in self.task_names}

    def _task_owned(self, task: str) -> Iterator[nn.Parameter]:
        # a task's gates only feed that task; its experts below the top level also feed the
        # shared gate (so every task), its top-level experts only itself
        levels = [level for level in self.levels if isinstance(level, _CGCLevel)]
        for level in levels:
            yield from level.gates[task].parameters()
        yield from levels[-1].specific[task].parameters()
        yield from self.towers[task].parameters()

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        owned = {id(p) for t in self.task_names for p in self._task_owned(t)}
        return (p for p in self.parameters() if id(p) not in owned)

    def task_parameters(self, task: str | None = None) -> Iterator[nn.Parameter]:
        tasks = self.task_names if task is None else (self.check_task(task),)
        for name in tasks:
            yield from self._task_owned(name)
