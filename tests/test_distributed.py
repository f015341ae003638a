"""Real torch.distributed processes (gloo, 2 CPU ranks): the Quick start loop with the model
wrapped in DDP must give both ranks identical parameters, equal to one process trained on the
concatenated batches."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import distributed_worker as worker
from taskbalance import Balancer
from taskbalance.distributed import Communicator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(
    tmp_path: Path,
    find_unused: bool = False,
    configs: object = None,
    pass_representation: bool = True,
) -> dict[int, dict[str, list[torch.Tensor]]]:
    mp.spawn(
        worker.run_rank,
        args=(2, free_port(), str(tmp_path), find_unused, configs, pass_representation),
        nprocs=2,
        join=True,
    )
    return {r: torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, list[torch.Tensor]]]:
    return spawn(tmp_path_factory.mktemp("ddp"))


@pytest.mark.parametrize("config", worker.CONFIGS, ids=lambda c: f"{c[0]}@{c[1]}")
def test_ddp_equals_one_process_on_the_global_batch(
    config: tuple[str, str, dict[str, object]], ranks: dict[int, dict[str, list[torch.Tensor]]]
) -> None:
    key = f"{config[0]}@{config[1]}"
    reference = worker.run_single(config)
    for p, q in zip(ranks[0][key], ranks[1][key], strict=True):
        assert torch.equal(p, q), f"{key}: the ranks' parameters differ"
    for p, q in zip(ranks[0][key], reference, strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)


def test_ddp_with_find_unused_parameters(tmp_path: Path) -> None:
    # the Quick start without representation= (DDP's sink hides the trunk output it returns)
    configs = [("mgda", "parameters", {}), ("upgrad", "parameters", {})]
    ranks = spawn(tmp_path, find_unused=True, configs=configs, pass_representation=False)
    for config in configs:
        key = f"{config[0]}@{config[1]}"
        reference = worker.run_single(config, pass_representation=False)
        for p, q, r in zip(ranks[0][key], ranks[1][key], reference, strict=True):
            assert torch.equal(p, q)
            torch.testing.assert_close(p, r, atol=1e-5, rtol=1e-5)


def test_a_representation_hidden_by_ddps_sink_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="sink node"):
        spawn(tmp_path, find_unused=True, configs=[("mgda", "representation", {})])


def test_single_process_has_no_communicator() -> None:
    assert Communicator.resolve("auto") is None
    assert Communicator.resolve("off") is None
    with pytest.raises(ValueError, match=r"needs torch\.distributed to be initialised"):
        Communicator.resolve("global")


def test_distributed_mode_is_validated() -> None:
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="Did you mean 'global'"):
        Balancer("ew", [w], distributed="globl")  # type: ignore[arg-type]


def test_local_mode_keeps_ranks_equal_and_is_an_approximation(tmp_path: Path) -> None:
    mp.spawn(worker.run_local_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    local = [torch.load(tmp_path / f"local{r}.pt", weights_only=True) for r in (0, 1)]
    for p, q in zip(*local, strict=True):
        assert torch.equal(p, q)
    exact = worker.run_single(("mgda", "parameters", {}))
    assert any(not torch.allclose(p, q, atol=1e-6) for p, q in zip(local[0], exact, strict=True))


def test_a_refusal_on_one_rank_in_local_mode_stops_every_rank(tmp_path: Path) -> None:
    # each rank's method sees its own losses: rank 1's are refused, and rank 0 must not be
    # left waiting at the gradients' all-reduce (no torchrun / mp.spawn to kill it)
    context = mp.start_processes(
        worker.run_local_refusal_rank,
        args=(2, free_port(), str(tmp_path)),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("a rank is still waiting: the refusal did not reach every rank")
    refused = (tmp_path / "refusal1.txt").read_text()
    assert refused.startswith("ValueError at step 1"), refused
    assert "needs non-negative losses" in refused
    stopped = (tmp_path / "refusal0.txt").read_text()
    assert stopped.startswith("RuntimeError at step 1"), stopped
    assert "raised on another rank" in stopped


def test_any_runs_on_the_groups_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # NCCL reduces only CUDA tensors: the flag must be made on the group's device (it was
    # always a CPU tensor, so distributed="local" failed at its first step on NCCL)
    import torch.distributed as dist

    class ReducedError(Exception):
        pass

    seen: list[torch.device] = []

    def all_reduce(tensor: torch.Tensor, **_: object) -> None:
        seen.append(tensor.device)
        raise ReducedError

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(Communicator, "device", property(lambda self: torch.device("meta")))
    with pytest.raises(ReducedError):
        Communicator("local", 2).any(True)
    assert seen == [torch.device("meta")]


def test_fsdp_shards_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    mp.spawn(worker.run_fsdp_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        message = (tmp_path / f"fsdp{rank}.txt").read_text()
        assert "FSDP" in message, message


def _trainer(tmp_path: Path, stop: int, resume: bool) -> list[list[torch.Tensor]]:
    mp.spawn(
        worker.run_trainer_rank,
        args=(2, free_port(), str(tmp_path), stop, resume),
        nprocs=2,
        join=True,
    )
    return [torch.load(tmp_path / f"trainer{r}.pt", weights_only=True) for r in (0, 1)]


def test_trainer_under_two_processes_logs_once_and_resumes_exactly(tmp_path: Path) -> None:
    full = _trainer(tmp_path / "full", stop=0, resume=False)
    for p, q in zip(*full, strict=True):
        assert torch.equal(p, q)  # the ranks agree
    _trainer(tmp_path / "cut", stop=5, resume=False)  # mid epoch 2 (4 steps per epoch)
    resumed = _trainer(tmp_path / "cut", stop=0, resume=True)
    for rank in (0, 1):
        for p, q in zip(full[rank], resumed[rank], strict=True):
            assert torch.equal(p, q)
    steps = (tmp_path / "cut" / "run" / "steps.csv").read_text().splitlines()
    assert [int(float(line.split(",")[0])) for line in steps[1:]] == list(range(1, 13))
    assert (tmp_path / "full" / "run" / "steps.csv").read_text() == "\n".join(steps) + "\n"


def test_taskbalance_train_runs_under_torchrun_unchanged(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    config = {
        "name": "ddp",
        "data": {"dataset": "digits", "batch_size": 64},
        "model": {"hidden": [16]},
        "training": {"epochs": 1},
        "methods": [{"name": "mgda"}],
        "output": str(tmp_path / "out"),
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    bin_dir = Path(sys.executable).parent
    launcher = [str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python"]
    result = subprocess.run(
        [*launcher, str(bin_dir / "taskbalance"), "train", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("wrote ") == 1  # rank 0 reports, once
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["runs"][0]["steps"] > 0
    steps = (tmp_path / "out" / "mgda" / "steps.csv").read_text().splitlines()
    assert len(steps) - 1 == summary["runs"][0]["steps"]  # one row per step, one writer


def test_the_column_sharded_jacobian_equals_the_all_reduced_one(tmp_path: Path) -> None:
    mp.spawn(worker.run_shard_check, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        report = torch.load(tmp_path / f"shard{rank}.pt", weights_only=True)
        for scale, errors in report.items():
            assert errors["gramian"] < 1e-12, (scale, errors)
            assert errors["combine"] < 1e-12, (scale, errors)


def test_sparse_embedding_gradients_equal_one_dense_process(tmp_path: Path) -> None:
    # the gradients' all-reduce reshaped each gradient: "reshape is not implemented for
    # sparse tensors" at the first step of a model with nn.Embedding(sparse=True)
    mp.spawn(worker.run_sparse_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"sparse{r}.pt", weights_only=True) for r in (0, 1)]
    for method in worker.SPARSE_METHODS:
        reference = worker.train_embedding(worker.EmbeddingNet(False), method, 0, 1)
        for p, q, r in zip(ranks[0][method], ranks[1][method], reference, strict=True):
            assert torch.equal(p, q), f"{method}: the ranks' parameters differ"
            torch.testing.assert_close(p, r, atol=1e-5, rtol=1e-5)
