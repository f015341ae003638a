"""Lightning integration (optional extra): the BalancedModule mixin gives the plain loop's
result, logs StepInfo, keeps the balancer's state in checkpoints, works with mixed precision
(the precision plugin's GradScaler included), and the example runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

lightning = pytest.importorskip("lightning")

from taskbalance import Balancer  # noqa: E402 - after the optional import
from taskbalance.integrations.lightning import BalancedModule  # noqa: E402
from taskbalance.models import HardSharing  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _model() -> HardSharing:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh())
    return HardSharing(trunk, {"a": nn.Linear(8, 1), "b": nn.Linear(8, 1)})


def _data() -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=generator)
    y = torch.stack([x[:, 0] - x[:, 1], torch.sin(x[:, 2])], 1)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)


def _losses(model: HardSharing, batch: Any) -> dict[str, torch.Tensor]:
    x, y = batch
    out = model(x)
    return {t: ((out[t].squeeze(-1) - y[:, i]) ** 2).mean() for i, t in enumerate("ab")}


class Module(BalancedModule, lightning.LightningModule):  # type: ignore[misc]
    def __init__(self, method: str) -> None:
        super().__init__()
        self.model = _model()
        self.balancer = Balancer.for_model(method, self.model)

    def training_step(self, batch: Any, batch_index: int) -> torch.Tensor:
        return self.balance(_losses(self.model, batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(module: Module, epochs: int = 2, **options: Any) -> Any:
    trainer = lightning.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )
    trainer.fit(module, _data())
    return trainer


@pytest.mark.parametrize("method", ["ew", "mgda", "upgrad", "uw"])
def test_lightning_gives_the_plain_loop_result(method: str) -> None:
    module = Module(method)
    _fit(module)
    model = _model()
    balancer = Balancer.for_model(method, model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        for batch in _data():
            optimizer.zero_grad()
            balancer.backward(_losses(model, batch))
            optimizer.step()
    for p, q in zip(module.model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)


def test_step_info_is_logged() -> None:
    trainer = _fit(Module("mgda"), epochs=1, log_every_n_steps=1)
    metrics = trainer.callback_metrics
    assert "balance/weight/a" in metrics
    assert "balance/conflict_rate" in metrics or "balance/grad_norm" in metrics


def test_the_balancer_state_is_in_lightning_checkpoints(tmp_path: Path) -> None:
    module = Module("uw")  # learned log-variances: state that must survive a checkpoint
    trainer = _fit(module, epochs=1)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    learned = module.balancer.state_dict()["method"]
    restored = Module("uw")
    assert restored.balancer.state_dict()["method"]["log_scales"] is None  # fresh
    checkpoint = torch.load(path, weights_only=True)
    restored.on_load_checkpoint(checkpoint)
    torch.testing.assert_close(
        restored.balancer.state_dict()["method"]["log_scales"], learned["log_scales"]
    )


def test_bf16_mixed_precision_runs() -> None:
    module = Module("mgda")
    _fit(module, epochs=1, precision="bf16-mixed")
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_the_precision_plugins_grad_scaler_is_used() -> None:
    from lightning.pytorch.plugins import MixedPrecision

    scaler = torch.amp.GradScaler("cpu")
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    module = Module("mgda")
    _fit(module, epochs=1, plugins=[plugin])
    assert module._grad_scaler() is scaler
    assert scaler.get_scale() > 0  # the scaler stepped the optimizer (update was called)
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_the_example_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "lightning_digits.py"), "--epochs", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "balance/weight/digit" in result.stdout


def test_ddp_strategy_balances_the_global_batch(tmp_path: Path) -> None:
    module = Module("mgda")
    trainer = lightning.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, _data())  # Lightning shards the data: DistributedSampler, seed 0
    from torch.utils.data import DistributedSampler

    dataset = _data().dataset
    shards = [list(DistributedSampler(dataset, 2, rank, seed=0)) for rank in (0, 1)]
    model = _model()
    balancer = Balancer.for_model("mgda", model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = dataset.tensors  # type: ignore[attr-defined]
    for start in range(0, 32, 16):  # the global batch: both ranks' 16 samples of the step
        index = torch.tensor(shards[0][start : start + 16] + shards[1][start : start + 16])
        optimizer.zero_grad()
        balancer.backward(_losses(model, (x[index], y[index])))
        optimizer.step()
    for p, q in zip(module.model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)
