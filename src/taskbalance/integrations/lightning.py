"""Lightning integration (``pip install 'taskbalance[lightning]'``).

:class:`BalancedModule` is a mixin for a ``LightningModule`` that keeps ``training_step``
natural: compute the task losses, hand them to :meth:`BalancedModule.balance`, done. It
switches the module to manual optimisation (the balancer, not Lightning, writes ``.grad``),
and per step it zeroes the gradients, calls :meth:`taskbalance.Balancer.backward` (with the
precision plugin's ``GradScaler`` under ``precision="16-mixed"``, so the plugin's unchanged
``optimizer.step`` unscales once and skips overflowing steps), steps the optimizer (and the
scheduler when asked), and logs the :class:`~taskbalance.StepInfo` through ``self.log``
(task weights, losses, gradient norms, conflict rate). The balancer's state (learned weights,
moving averages, random generators) is saved in Lightning checkpoints and restored from them.

Gradient clipping: Lightning's ``Trainer(gradient_clip_val=...)`` does not apply to manual
optimisation; pass taskbalance transforms instead (``ClipGlobalNorm(v)`` is
``gradient_clip_val=v, gradient_clip_algorithm="norm"``; ``ClipValue(v)`` the ``"value"``
algorithm, except that an overflowed entry stays ``inf`` so the step is skipped), which also
offer per-task clipping. Under ``strategy="ddp"`` the balancer
balances the global batch (:mod:`taskbalance.distributed`): nothing to change.

Example::

    class Net(BalancedModule, lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = HardSharing(trunk, heads)
            self.balancer = Balancer.for_model("pcgrad", self.model)

        def training_step(self, batch, batch_index):
            x, targets = batch
            out = self.model(x)
            return self.balance({t: loss(out[t], targets[t]) for t in out})

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from taskbalance.balancer import Balancer, LossesLike, MetricsLike
from taskbalance.step_info import StepInfo

__all__ = ["BalancedModule"]

_STATE_KEY = "taskbalance_balancer"


class BalancedModule:
    """Mixin for ``lightning.LightningModule`` (list it first among the bases); assign a
    :class:`~taskbalance.Balancer` to ``self.balancer`` in ``__init__``."""

    balancer: Balancer
    #: log the step's StepInfo every this many steps (0: never; None: the Trainer's
    #: ``log_every_n_steps``, as Lightning logs everything else)
    log_balance_every: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False  # the balancer writes .grad

    # ------------------------------------------------------------------ the step
    def balance(
        self,
        losses: LossesLike,
        representation: Tensor | None = None,
        *,
        metrics: MetricsLike | None = None,
        step_scheduler: bool = False,
    ) -> Tensor:
        """Zero the gradients, balance ``losses`` into ``.grad``, step the optimizer; returns
        the sum of the losses (detached) for Lightning's progress bar."""
        module: Any = self
        optimizer = module.optimizers()
        if isinstance(optimizer, list):
            raise ValueError("BalancedModule.balance expects one optimizer")
        optimizer.zero_grad()
        info = self.balancer.backward(
            losses, representation, metrics=metrics, scaler=self._grad_scaler()
        )
        optimizer.step()  # through the precision plugin: the scaler unscales and may skip
        if step_scheduler:
            scheduler = module.lr_schedulers()
            if scheduler is not None:
                scheduler.step()
        self._log_balance(info)
        return info.losses.sum().detach()

    def _grad_scaler(self) -> Any:
        trainer = getattr(self, "_trainer", None)
        plugin = getattr(trainer, "precision_plugin", None) if trainer is not None else None
        scaler = getattr(plugin, "scaler", None)
        return scaler if isinstance(scaler, torch.amp.GradScaler) else None

    def _log_balance(self, info: StepInfo) -> None:
        module: Any = self
        every = self.log_balance_every
        if every is None:
            trainer = getattr(self, "_trainer", None)
            every = getattr(trainer, "log_every_n_steps", 1) if trainer is not None else 1
        if every <= 0 or module.global_step % every:
            return
        values = {
            f"balance/{key}": float(value)
            for key, value in info.as_dict().items()
            if key not in ("step",)
        }
        module.log_dict(values, on_step=True, on_epoch=False, sync_dist=False)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[_STATE_KEY] = self.balancer.state_dict()
        parent = getattr(super(), "on_save_checkpoint", None)
        if callable(parent):
            parent(checkpoint)

    def on_load_checkpoint(self, checkpoint: Mapping[str, Any]) -> None:
        if _STATE_KEY in checkpoint:
            self.balancer.load_state_dict(checkpoint[_STATE_KEY])
        parent = getattr(super(), "on_load_checkpoint", None)
        if callable(parent):
            parent(checkpoint)
