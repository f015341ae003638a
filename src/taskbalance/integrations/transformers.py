"""Hugging Face Transformers integration (``pip install 'taskbalance[transformers]'``).

:class:`BalancedTrainer` is a ``transformers.Trainer`` whose training step hands the task
losses to a :class:`~taskbalance.Balancer` instead of back-propagating their sum: everything
else (data loading, AdamW, schedules, ``max_grad_norm`` clipping of the balanced gradient,
logging, evaluation, checkpoints, resuming) is the Trainer's own.

The model's forward returns, besides ``loss`` (what evaluation reports), ``losses``: a dict
``task -> scalar loss``, and optionally ``representation``: the shared tensor(s) the heads
read (e.g. ``(sequence_output, pooled_output)``) for representation-level balancing. Or pass
``task_losses=`` a function ``(model, inputs) -> (losses, representation)``.

The balancer's state is written to ``taskbalance_balancer.pt`` in every checkpoint folder
and read back by ``train(resume_from_checkpoint=...)``; the step's
:class:`~taskbalance.StepInfo` (weights, norms, conflict rate) joins the Trainer's logs as
``balance/...``. Under ``torchrun`` the balancer balances the global batch
(:mod:`taskbalance.distributed`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
import transformers
from torch import Tensor, nn
from transformers.trainer_utils import get_last_checkpoint

from taskbalance.balancer import Balancer
from taskbalance.step_info import StepInfo
from taskbalance.train.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["BalancedTrainer"]

STATE_FILE = "taskbalance_balancer.pt"
TaskLosses = Callable[[nn.Module, Mapping[str, Any]], tuple[Mapping[str, Tensor], Any]]


def _from_outputs(model: nn.Module, inputs: Mapping[str, Any]) -> tuple[Mapping[str, Tensor], Any]:
    outputs = model(**inputs)
    losses = outputs["losses"] if isinstance(outputs, Mapping) else outputs.losses
    representation = (
        outputs.get("representation")
        if isinstance(outputs, Mapping)
        else getattr(outputs, "representation", None)
    )
    return losses, representation


class _SaveBalancer(transformers.TrainerCallback):
    def __init__(self, trainer: BalancedTrainer) -> None:
        self.trainer = trainer

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.trainer.is_world_process_zero():
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            save_checkpoint(self.trainer.balancer.state_dict(), os.path.join(folder, STATE_FILE))


class BalancedTrainer(transformers.Trainer):
    """``transformers.Trainer`` with multi-task balancing (see the module docstring).

    Args:
        balancer: the :class:`~taskbalance.Balancer` (built on the model's shared parameters).
        task_losses: optional ``(model, inputs) -> (losses, representation)``; default: read
            ``losses`` and ``representation`` from the model's output.
        *args: passed to ``transformers.Trainer``.
        **kwargs: passed to ``transformers.Trainer``.
    """

    def __init__(
        self,
        *args: Any,
        balancer: Balancer,
        task_losses: TaskLosses | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.balancer = balancer
        self.task_losses = task_losses or _from_outputs
        self.last_balance: StepInfo | None = None
        self.add_callback(_SaveBalancer(self))

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> Tensor:
        model.train()
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            losses, representation = self.task_losses(model, inputs)
        accumulation = getattr(
            self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps
        )
        scaler = getattr(self.accelerator, "scaler", None)
        info = self.balancer.backward(
            losses,
            representation,
            scaler=scaler if isinstance(scaler, torch.amp.GradScaler) else None,
            accumulation_steps=int(accumulation),
        )
        self.last_balance = info
        # (the Trainer sums what its micro-batches return: each returns its share)
        return (info.losses.sum() / accumulation).detach().to(self.args.device).float()

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.last_balance is not None and "loss" in logs:
            logs = {
                **logs,
                **{
                    f"balance/{key}": value
                    for key, value in self.last_balance.as_dict().items()
                    if key != "step"
                },
            }
        super().log(logs, *args, **kwargs)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; with ``resume_from_checkpoint`` the balancer's state is restored
        from the checkpoint too."""
        folder = kwargs.get("resume_from_checkpoint", args[0] if args else None)
        if folder is True:
            folder = get_last_checkpoint(self.args.output_dir)  # type: ignore[no-untyped-call]
        if isinstance(folder, str) and os.path.isfile(os.path.join(folder, STATE_FILE)):
            self.balancer.load_state_dict(load_checkpoint(os.path.join(folder, STATE_FILE)))
        return super().train(*args, **kwargs)
