"""Host reads per balancing step (benchmarks/host_syncs.py, taskbalance.engine.host_audit).

Every read of a device value on the host stalls a GPU step. On this CPU machine
:class:`~taskbalance.engine.host_audit.DeviceReadAudit` tells host tensors (copies made by
``engine.host.fetch``) from device tensors and counts transfers and device reads; the
committed counts (``benchmarks/results/host_syncs.json``, on the Performance page) are an
upper bound, and the audit's device mix-ups (a host tensor combined with a device tensor,
an error on a GPU) must be none.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from taskbalance import Balancer, methods, transforms
from taskbalance.engine.host import fetch, to_device
from taskbalance.engine.host_audit import DeviceReadAudit
from taskbalance.engine.needs import Need

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import host_syncs  # noqa: E402

sys.path.remove(str(ROOT / "benchmarks"))
COMMITTED = json.loads((ROOT / "benchmarks" / "results" / "host_syncs.json").read_text())["rows"]


@pytest.mark.parametrize("row", COMMITTED, ids=lambda row: f"{row['method']}-{row['level']}")
def test_host_reads_do_not_grow_and_nothing_mixes_devices(row: dict[str, object]) -> None:
    for key, committed in row.items():
        if key.startswith("T="):
            audit = host_syncs.audit(str(row["method"]), int(key[2:]), str(row["level"]))
            assert audit.mixups == [], audit.mixups[:3]
            assert audit.count <= int(committed), (  # type: ignore[call-overload]
                f"{row['method']} at {row['level']} level, {key}: {audit.count} host syncs "
                f"per step, {committed} committed: {dict(audit.sites)}"
            )


def test_solvers_run_on_the_host_copy() -> None:
    """Every method that needs only the Gram matrix reads no device value: one transfer of
    the Gram matrix (with the losses), one of the update's norm; loss weighting one or two."""
    for row in COMMITTED:
        method = methods.get(str(row["method"]))
        limit = {Need.LOSSES: 2, Need.GRAMIAN: 2, Need.JACOBIAN: 3}[method.needs]
        assert int(row["T=10"]) <= limit, row  # type: ignore[call-overload]
    assert host_syncs.audit("ew", 10).count == 1
    for name in ("upgrad", "mgda", "cagrad", "nash_mtl", "fairgrad", "dualproj"):
        audit = host_syncs.audit(name, 10)
        assert (audit.reads, audit.transfers) == (0, 2), (name, dict(audit.sites))


def test_the_audit_tells_host_copies_from_device_tensors() -> None:
    on_device = torch.arange(4.0)
    with DeviceReadAudit() as audit:
        float(on_device.sum())  # a device read
        bool(on_device[0] > -1)  # another
        on_device.tolist()  # and another
        (on_host,) = fetch(on_device)  # one transfer
        float(on_host.sum())
        on_host.tolist()  # host reads: free
        _ = on_device * on_host[0]  # a host scalar on the device: allowed (CUDA does it)
        assert audit.mixups == []
        _ = on_device + on_host  # a host vector with a device one: a mix-up
        back = to_device(on_host, on_device.device)
        _ = back + on_device  # sent back: fine
    assert (audit.reads, audit.transfers, audit.count) == (3, 1, 4)
    assert len(audit.mixups) == 1
    assert "add" in audit.mixups[0]


@pytest.mark.parametrize(
    "setup",
    [
        {"method": "upgrad", "transforms": [transforms.ClipPerTaskNorm(1.0)]},
        {"method": "ew", "transforms": [transforms.ClipPerTaskNorm(1.0)]},
        {"method": "mgda", "transforms": [transforms.ClipGlobalNorm(0.5)]},
        {"method": "nash_mtl", "update_every": 2},
        {"method": "uw", "level": "parameters"},
        {"method": "pcgrad", "level": "representation", "monitor": True},
        {"method": "moco"},
        {"method": "cagrad", "transforms": [transforms.AutoClipPerTask(), transforms.AGC()]},
        {"method": "famo", "transforms": [transforms.AutoClip()]},
    ],
    ids=lambda s: "-".join(str(v) for v in s.values())[:40],
)
def test_no_device_mixups_with_transforms_caching_and_monitoring(setup: dict) -> None:
    from taskbalance.health import HealthMonitor

    setup = dict(setup)
    monitor = (
        HealthMonitor(every=1, task_gradients=True, warn=False)
        if setup.pop("monitor", False)
        else None
    )
    trunk = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(3))
    balancer = Balancer(setup.pop("method"), trunk.parameters(), monitor=monitor, **setup)
    with DeviceReadAudit() as audit:
        for _ in range(3):
            z = trunk(torch.randn(16, 6))
            balancer.backward([h(z).pow(2).mean() for h in heads], representation=z)
    assert audit.mixups == [], audit.mixups[:3]


def test_a_non_finite_loss_is_still_caught_before_a_stateful_method_sees_it() -> None:
    trunk = nn.Linear(4, 4)
    balancer = Balancer("uw", trunk.parameters())
    z = trunk(torch.randn(8, 4))
    before = {k: v.clone() for k, v in balancer.method.state_dict().items() if torch.is_tensor(v)}
    info = balancer.backward([z.sum(), z.sum() * float("nan")])
    assert info.skipped
    assert "task1" in str(info.reason)
    after = balancer.method.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key])
    assert all(p.grad is None for p in trunk.parameters())


def test_no_device_mixups_with_a_grad_scaler() -> None:
    trunk = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(3))
    balancer = Balancer("upgrad", trunk.parameters())
    scaler = torch.amp.GradScaler("cpu")
    optimizer = torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=0.1)
    with DeviceReadAudit() as audit:
        for _ in range(3):
            with torch.autocast("cpu", torch.float16):
                z = trunk(torch.randn(16, 6))
                losses = [h(z).float().pow(2).mean() for h in heads]
            info = balancer.backward(losses, representation=z, scaler=scaler)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
    assert not info.skipped
    assert audit.mixups == [], audit.mixups[:3]


def test_the_layer_rules_read_nothing_on_the_device() -> None:
    """The Gram-only path with every per-layer rule (embedding, layer norm, linear on 3-D
    input, convolution, batch norm): still one Gram transfer and one norm transfer."""

    class Trunk(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(12, 6, padding_idx=0)
            self.norm = nn.LayerNorm(6)
            self.conv = nn.Conv1d(6, 4, 3, padding=1)
            self.batch_norm = nn.BatchNorm1d(4)
            self.linear = nn.Linear(4, 8)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            h = self.norm(self.embedding(tokens)).transpose(1, 2)  # (B, 6, L)
            h = torch.relu(self.batch_norm(self.conv(h))).transpose(1, 2)  # (B, L, 4)
            return self.linear(h).mean(1)

    trunk = Trunk()
    heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(3))
    balancer = Balancer("upgrad", trunk.parameters(), engine="gramian")
    tokens = torch.randint(0, 12, (5, 7))
    with DeviceReadAudit() as audit:  # two steps: the second one warm-started
        for _ in range(2):
            z = trunk(tokens)
            balancer.backward([h(z).pow(2).mean() for h in heads], representation=z)
    assert audit.mixups == [], audit.mixups[:3]
    assert (audit.reads, audit.transfers) == (0, 4), dict(audit.sites)
