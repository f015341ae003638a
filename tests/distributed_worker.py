"""Training runs for the distributed tests: the Quick start loop, with the model wrapped in
DistributedDataParallel, on one rank's half of each global batch (``run_rank``), and the same
loop in one process on the whole batches (``run_single``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from taskbalance import Balancer, methods

STEPS = 5
GLOBAL_BATCH = 16
# (method, level, hyperparameters) trained in each test process
CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("ew", "parameters", {}),
    ("uw", "parameters", {}),
    ("pcgrad", "parameters", {}),
    ("mgda", "parameters", {}),
    ("nash_mtl", "parameters", {}),
    ("upgrad", "parameters", {}),
    ("graddrop", "parameters", {}),
    ("excess_mtl", "parameters", {"robust_step_size": 1.0}),
    ("pcd", "parameters", {"tau": 0.5}),
    ("cr_mogm", "parameters", {"method": "upgrad", "alpha": 0.5}),
    ("ew", "representation", {}),
    ("mgda", "representation", {}),
    ("imtl_g", "representation", {}),
]


class Net(nn.Module):
    """A shared trunk and three heads; ``forward`` returns ``(z, {task: prediction})``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(8, 1) for t in ("a", "b", "c")})

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        z = self.trunk(x)
        return z, {t: head(z).squeeze(-1) for t, head in self.heads.items()}


def batches() -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(1)
    data = []
    for _ in range(STEPS):
        x = torch.randn(GLOBAL_BATCH, 6, generator=generator)
        y = torch.stack([x[:, 0] - x[:, 1], torch.sin(x[:, 2]), -x[:, 0] + 0.5 * x[:, 3]], 1)
        data.append((x, y))
    return data


def train(
    model: nn.Module,
    trunk: nn.Module,
    data: list[tuple[Tensor, Tensor]],
    config: Any,
    pass_representation: bool = True,
) -> None:
    """The Quick start loop (the user's code is the same with or without DDP)."""
    name, level, hparams = config
    optimizer = torch.optim.SGD(trunk.parameters(), lr=0.1)
    heads = [p for n, p in model.named_parameters() if "heads" in n]
    optimizer.add_param_group({"params": heads})
    balancer = Balancer(methods.create(name, **hparams), trunk.parameters(), level=level)
    for x, y in data:
        optimizer.zero_grad()
        z, out = model(x)
        info = balancer.backward(
            task_losses(out, y), representation=z if pass_representation else None
        )
        assert not info.skipped, info.reason
        optimizer.step()


def task_losses(pred: dict[str, Tensor], y: Tensor) -> dict[str, Tensor]:
    return {t: ((pred[t] - y[:, i]) ** 2).mean() for i, t in enumerate(("a", "b", "c"))}


def join_group(rank: int, world: int, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def leave_group() -> None:
    dist.barrier()  # no rank tears down while another still has collectives in flight
    dist.destroy_process_group()


def exit_cleanly() -> None:
    """End a rank that finished its work without the interpreter's teardown: destroying
    gloo's and DDP's C++ objects at exit can meet a thread still joinable and abort
    ("terminate called without an active exception", SIGABRT; seen once in a CI run of
    the find_unused_parameters test after its results were written). Only reached on
    success: a failing rank raises and is reported by ``mp.spawn`` as before."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_single(config: Any, pass_representation: bool = True) -> list[Tensor]:
    net = Net()
    train(net, net.trunk, batches(), config, pass_representation)
    return [p.detach().clone() for p in net.parameters()]


def run_rank(
    rank: int,
    world: int,
    port: int,
    out: str,
    find_unused: bool,
    configs: Any = None,
    pass_representation: bool = True,
) -> None:
    join_group(rank, world, port)
    try:
        results = {}
        share = GLOBAL_BATCH // world
        for config in configs or CONFIGS:
            net = Net()
            model = DistributedDataParallel(net, find_unused_parameters=find_unused)
            local = [
                (x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share])
                for x, y in batches()
            ]
            train(model, net.trunk, local, config, pass_representation)
            results[f"{config[0]}@{config[1]}"] = [p.detach().clone() for p in net.parameters()]
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        leave_group()
    exit_cleanly()


def run_local_rank(rank: int, world: int, port: int, out: str) -> None:
    """``distributed="local"``: each rank balances its own half, the results are averaged."""
    join_group(rank, world, port)
    try:
        net = Net()
        share = GLOBAL_BATCH // world
        balancer = Balancer("mgda", net.trunk.parameters(), distributed="local")
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        for x, y in batches():
            x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
            optimizer.zero_grad()
            z, pred = net(x)
            balancer.backward(task_losses(pred, y), representation=z)
            optimizer.step()
        torch.save([p.detach() for p in net.parameters()], Path(out) / f"local{rank}.pt")
    finally:
        leave_group()
    exit_cleanly()


def run_local_refusal_rank(rank: int, world: int, port: int, out: str) -> None:
    """``distributed="local"`` with ``gls``, rank 1's losses negative at the second step: its
    method refuses them, and rank 0 must stop too instead of waiting at the gradients'
    all-reduce. Each rank writes the error it stopped with."""
    join_group(rank, world, port)
    try:
        net = Net()
        share = GLOBAL_BATCH // world
        balancer = Balancer("gls", net.trunk.parameters(), distributed="local")
        try:
            for step, (x, y) in enumerate(batches()):
                x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
                z, pred = net(x)
                losses = task_losses(pred, y)
                if rank == 1 and step == 1:
                    losses = {t: -loss for t, loss in losses.items()}
                balancer.backward(losses, representation=z)
            message = "finished"
        except Exception as error:  # (what the test reads)
            message = f"{type(error).__name__} at step {balancer.step}: {error}"
        (Path(out) / f"refusal{rank}.txt").write_text(message)
    finally:
        leave_group()
    exit_cleanly()


def run_fsdp_rank(rank: int, world: int, port: int, out: str) -> None:
    """FSDP-sharded shared parameters must be refused with a clear error, before any step."""
    from torch.distributed.fsdp import fully_shard

    join_group(rank, world, port)
    try:
        net = Net()
        fully_shard(net.trunk)
        balancer = Balancer("mgda", net.trunk.parameters())
        x, y = batches()[0]
        z, pred = net(x)
        try:
            balancer.backward(task_losses(pred, y), representation=z)
            message = "no error"
        except ValueError as error:
            message = str(error)
        (Path(out) / f"fsdp{rank}.txt").write_text(message)
    finally:
        leave_group()
    exit_cleanly()


def run_trainer_rank(rank: int, world: int, port: int, out: str, stop: int, resume: bool) -> None:
    """The Trainer under 2 processes: DistributedSampler for training, the whole validation
    set on every rank, a shared run folder; stops after ``stop`` steps or resumes."""
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from taskbalance.models import HardSharing
    from taskbalance.train import Task, Trainer

    join_group(rank, world, port)
    try:
        generator = torch.Generator().manual_seed(3)
        x = torch.randn(64, 6, generator=generator)
        data = TensorDataset(x, x[:, 0] - x[:, 1], torch.sin(x[:, 2]))

        def collate(rows: list[tuple[Tensor, ...]]) -> tuple[Tensor, dict[str, Tensor]]:
            xs, a, b = (torch.stack(c) for c in zip(*rows, strict=True))
            return xs, {"a": a, "b": b}

        sampler = DistributedSampler(data, shuffle=True, seed=5)
        train = DataLoader(data, batch_size=8, sampler=sampler, collate_fn=collate)
        val = DataLoader(data, batch_size=64, collate_fn=collate)
        torch.manual_seed(0)
        trunk = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 8))
        model = HardSharing(trunk, {"a": nn.Linear(8, 1), "b": nn.Linear(8, 1)})
        trainer = Trainer(
            DistributedDataParallel(model),
            [Task("a", "mse"), Task("b", "mse")],
            "mgda",
            optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
            run_dir=Path(out) / "run",
            checkpoint_every=3,
            seed=0,
        )
        last = Path(out) / "run" / "last.pt"
        trainer.fit(
            train,
            val,
            epochs=3,
            resume=last if resume else None,
            stop_after_steps=stop if stop else None,
        )
        torch.save([p.detach() for p in model.parameters()], Path(out) / f"trainer{rank}.pt")
    finally:
        leave_group()
    exit_cleanly()


def run_shard_check(rank: int, world: int, port: int, out: str) -> None:
    """The column-sharded Jacobian (reduce-scatter) against the all-reduced one, with a
    column count the world size does not divide and gradients beyond float64's Gram range."""
    from taskbalance.distributed import Communicator, shard_jacobian
    from taskbalance.engine.task_gradients import TaskGradients

    join_group(rank, world, port)
    try:
        comm = Communicator.resolve("global")
        assert comm is not None
        generator = torch.Generator().manual_seed(10 + rank)
        report = {}
        for scale in (1.0, 1e200):
            blocks = [
                torch.randn(3, 3, 5, generator=generator, dtype=torch.float64) * scale,
                torch.randn(3, 6, generator=generator, dtype=torch.float64) * scale,
            ]  # 21 columns
            sharded = shard_jacobian(comm, blocks)
            full = TaskGradients(comm.global_blocks(blocks))
            weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
            g_sharded, s_sharded = sharded.normalised_gramian()
            g_full, s_full = full.normalised_gramian()
            report[str(scale)] = {
                "gramian": float(
                    (g_sharded * (s_sharded / scale) ** 2 - g_full * (s_full / scale) ** 2)
                    .abs()
                    .max()
                ),
                "combine": max(
                    float(((a - b) / scale).abs().max())
                    for a, b in zip(sharded.combine(weights), full.combine(weights), strict=True)
                ),
            }
        torch.save(report, Path(out) / f"shard{rank}.pt")
    finally:
        leave_group()
    exit_cleanly()


class EmbeddingNet(nn.Module):
    """An embedding (sparse or dense gradients), a trunk and three heads."""

    def __init__(self, sparse: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(20, 6, sparse=sparse)
        self.trunk = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(8, 1) for t in ("a", "b", "c")})

    def forward(self, idx: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        z = self.trunk(self.embedding(idx))
        return z, {t: head(z).squeeze(-1) for t, head in self.heads.items()}


SPARSE_METHODS = ("ew", "mgda", "upgrad")


def train_embedding(net: EmbeddingNet, method: str, rank: int, world: int) -> list[Tensor]:
    """SGD steps on this rank's share of each global batch of indices; the written update
    must be sparse where the embedding's gradient is."""
    generator = torch.Generator().manual_seed(2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    shared = [*net.embedding.parameters(), *net.trunk.parameters()]
    balancer = Balancer(method, shared)
    share = GLOBAL_BATCH // world
    for _ in range(STEPS):
        idx = torch.randint(0, 20, (GLOBAL_BATCH,), generator=generator)
        y = torch.randn(GLOBAL_BATCH, 3, generator=generator)
        optimizer.zero_grad()
        mine = slice(rank * share, (rank + 1) * share)
        z, out = net(idx[mine])
        info = balancer.backward(task_losses(out, y[mine]), representation=z)
        assert not info.skipped, info.reason
        grad = net.embedding.weight.grad
        assert grad is not None
        assert grad.is_sparse == net.embedding.sparse
        optimizer.step()
    return [p.detach().clone() for p in net.parameters()]


def run_sparse_rank(rank: int, world: int, port: int, out: str) -> None:
    """Sparse embedding gradients under ``distributed="global"`` (the default with a group)."""
    join_group(rank, world, port)
    try:
        results = {m: train_embedding(EmbeddingNet(True), m, rank, world) for m in SPARSE_METHODS}
        torch.save(results, Path(out) / f"sparse{rank}.pt")
    finally:
        leave_group()
    exit_cleanly()
