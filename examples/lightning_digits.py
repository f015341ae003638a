"""Balancing inside Lightning: PCGrad on scikit-learn's bundled digits (3 tasks), CPU.

pip install 'taskbalance[lightning,cli]'
python examples/lightning_digits.py --epochs 3
"""

from __future__ import annotations

import argparse
from typing import Any

import lightning
import torch
from torch import nn
from torch.utils.data import DataLoader

from taskbalance import Balancer
from taskbalance.datasets import collate, digits
from taskbalance.integrations.lightning import BalancedModule
from taskbalance.models import HardSharing
from taskbalance.train import Task

TASKS = [
    Task("digit", "cross_entropy", ["accuracy"]),
    Task("parity", "cross_entropy", ["accuracy"]),
    Task("value", "mse", ["mae"]),
]


class DigitsModule(BalancedModule, lightning.LightningModule):
    def __init__(
        self, method: str = "pcgrad", lr: float = 1e-3, hidden: tuple[int, int] = (128, 64)
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        first, second = hidden
        trunk = nn.Sequential(nn.Linear(64, first), nn.ReLU(), nn.Linear(first, second), nn.ReLU())
        heads = {
            "digit": nn.Linear(second, 10),
            "parity": nn.Linear(second, 2),
            "value": nn.Linear(second, 1),
        }
        self.model = HardSharing(trunk, heads)
        self.balancer = Balancer.for_model(method, self.model)
        self.tasks = {task.name: task for task in TASKS}
        self.lr = lr

    def task_losses(self, batch: Any) -> dict[str, torch.Tensor]:
        x, targets = batch
        out = self.model(x)
        losses = {}
        for name, task in self.tasks.items():
            loss = task.compute_loss(out[name], targets[name], None)
            assert loss is not None
            losses[name] = loss
        return losses

    def training_step(self, batch: Any, batch_index: int) -> torch.Tensor:
        return self.balance(self.task_losses(batch))

    def validation_step(self, batch: Any, batch_index: int) -> None:
        losses = self.task_losses(batch)
        self.log_dict({f"val/{name}": loss for name, loss in losses.items()})

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def loaders(batch_size: int = 64) -> tuple[DataLoader[Any], DataLoader[Any]]:
    data = digits(seed=0)
    train = DataLoader(data.train, batch_size=batch_size, shuffle=True, collate_fn=collate)
    val = DataLoader(data.val, batch_size=512, collate_fn=collate)
    return train, val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="pcgrad")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--precision", default="32-true", help="32-true, bf16-mixed, 16-mixed")
    args = parser.parse_args()
    lightning.seed_everything(0)
    train, val = loaders()
    trainer = lightning.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        log_every_n_steps=5,  # the balancer's StepInfo is logged at Lightning's cadence
    )
    trainer.fit(DigitsModule(args.method), train, val)
    print({k: round(float(v), 4) for k, v in trainer.callback_metrics.items()})


if __name__ == "__main__":
    main()
