"""Checkpoints: never run code from a file, detect damage, say what differs, clean up after
kills, exact resume from every checkpoint the trainer writes (in process; the SIGKILL tests
are in test_resume_kill.py)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from taskbalance.train import (
    CheckpointError,
    MultiTaskSampler,
    Trainer,
    load_checkpoint,
    save_checkpoint,
)
from taskbalance.train.checkpoint import (
    capture_rng,
    loader_generators,
    remove_stale_temporaries,
    restore_rng,
)
from test_trainer import TASKS, collate, dataset, loader, make_model, trainer_for


class Payload:
    """Unpickling this creates a file: what a crafted checkpoint would do."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.write_text, (self.target, "pwned"))


def test_a_pickle_payload_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "created-by-payload"
    crafted = tmp_path / "last.pt"
    torch.save({"model": Payload(marker)}, crafted)  # a plain torch.save with code in it
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(crafted)
    with pytest.raises(CheckpointError):
        trainer_for("ew").fit(loader(), epochs=1, resume=crafted)
    assert not marker.exists()


def test_a_payload_inside_a_valid_envelope_never_runs(tmp_path: Path) -> None:
    import hashlib

    marker = tmp_path / "created-by-payload"
    inner = io.BytesIO()
    torch.save({"model": Payload(marker)}, inner)
    data = inner.getvalue()
    envelope = {
        "format": "taskbalance.checkpoint",
        "version": 2,
        "sha256": hashlib.sha256(data).hexdigest(),  # a forger can compute the digest
        "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8),
    }
    torch.save(envelope, tmp_path / "forged.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "forged.pt")
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_every_trainer_state_loads_with_weights_only(tmp_path: Path) -> None:
    trainer = trainer_for("famo", run_dir=tmp_path, checkpoint_every=2)
    trainer.fit(loader(), loader(seed=1, shuffle=False), epochs=1, stop_after_steps=3)
    envelope = torch.load(tmp_path / "last.pt", weights_only=True)
    state = torch.load(io.BytesIO(envelope["payload"].numpy().tobytes()), weights_only=True)
    assert state["trainer"]["global_step"] == 3
    assert set(state["ranks"][0]["rng"]) >= {"python", "numpy", "torch", "loaders"}


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_a_damaged_checkpoint_is_detected(damage: str, tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"weights": torch.randn(5000)}, path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        position = data.find(b"data/0") + 2000  # inside the payload's bytes
        data[position] ^= 0x10
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"\x00not a checkpoint" * 10)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


def test_a_bit_flip_in_the_payload_is_reported_as_corruption(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"weights": torch.zeros(20000)}, path)
    data = bytearray(path.read_bytes())
    # the payload's zeros: flip one bit in the middle of the longest run of zero bytes
    middle = data.find(bytes(4096)) + 2048
    data[middle] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path)


def test_a_missing_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("method", "method: checkpoint 'famo', this trainer 'uw'"),
        ("optimizer", "optimizer: checkpoint 'Adam', this trainer 'SGD'"),
        ("model", "shape of"),
        ("tasks", "tasks:"),
    ],
)
def test_a_checkpoint_of_another_set_up_says_what_differs(
    change: str, message: str, tmp_path: Path
) -> None:
    trainer_for("famo", run_dir=tmp_path).fit(loader(), epochs=1, stop_after_steps=2)
    if change == "method":
        other = trainer_for("uw")
    elif change == "optimizer":
        model = make_model()
        other = Trainer(model, TASKS, "famo", optimizer=torch.optim.SGD(model.parameters(), 0.1))
    elif change == "model":
        from torch import nn

        from taskbalance.models import HardSharing

        trunk = nn.Sequential(nn.Linear(6, 32), nn.ReLU())
        model = HardSharing(trunk, {"a": nn.Linear(32, 3), "b": nn.Linear(32, 1)})
        other = Trainer(model, TASKS, "famo")
    else:
        other = Trainer(make_model(), TASKS[:1], "famo")
    before = [p.detach().clone() for p in other.model.parameters()]
    with pytest.raises(CheckpointError, match="different run set-up") as error:
        other.load_checkpoint(tmp_path / "last.pt")
    assert message in str(error.value)
    for p, q in zip(before, other.model.parameters(), strict=True):
        assert torch.equal(p, q)  # nothing was changed


def test_leftover_temporaries_are_removed_on_the_next_start(tmp_path: Path) -> None:
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"torn")
    (tmp_path / ".best.pt.x.tmp").write_bytes(b"torn")
    (tmp_path / "keep.tmp").write_bytes(b"not ours")
    trainer_for("ew", run_dir=tmp_path).fit(loader(), epochs=1)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert ".last.pt.abc123.tmp" not in names
    assert ".best.pt.x.tmp" not in names
    assert "keep.tmp" in names
    assert remove_stale_temporaries(tmp_path / "missing", ["last.pt"]) == []


def test_steps_csv_drops_rows_of_rolled_back_steps_and_torn_lines(tmp_path: Path) -> None:
    first = trainer_for("ew", run_dir=tmp_path, checkpoint_every=4)
    first.fit(loader(), epochs=2, stop_after_steps=8)
    reference = (tmp_path / "steps.csv").read_text()
    # a run that went on past the checkpoint and was killed mid-row
    with (tmp_path / "steps.csv").open("a") as stream:
        stream.write("9.0,1.0,0.0,1.0,1.0,0.5,0.5,1.0\n10.0,1.0,0.0,1.")
    resumed = trainer_for("ew", run_dir=tmp_path, checkpoint_every=4)
    resumed.fit(loader(), epochs=2, resume=tmp_path / "last.pt")
    text = (tmp_path / "steps.csv").read_text()
    assert text.startswith(reference)
    steps = [float(line.split(",")[0]) for line in text.splitlines()[1:]]
    assert steps == [float(s) for s in range(1, 13)]


def test_a_fresh_trainer_starts_the_logs_anew(tmp_path: Path) -> None:
    trainer_for("ew", run_dir=tmp_path).fit(loader(), epochs=1)
    trainer_for("ew", run_dir=tmp_path).fit(loader(), epochs=1)
    lines = (tmp_path / "steps.csv").read_text().splitlines()
    assert len(lines) == 1 + 6
    assert len((tmp_path / "epochs.csv").read_text().splitlines()) == 2


def test_step_history_in_memory_is_bounded() -> None:
    trainer = trainer_for("ew", keep_steps=4)
    trainer.fit(loader(), epochs=2)
    assert trainer.global_step == 12
    assert [record["step"] for record in trainer.steps] == [9.0, 10.0, 11.0, 12.0]


def assert_same_parameters(a: Trainer, b: Trainer) -> None:
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)


def generator_loader(seed: int = 5) -> DataLoader:  # type: ignore[type-arg]
    return DataLoader(
        dataset(),
        batch_size=16,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize("make_loader", [loader, generator_loader], ids=["global", "generator"])
@pytest.mark.parametrize("stop", [6, 8, 12])  # epoch end (6 batches/epoch), mid-epoch
def test_resume_from_each_kind_of_checkpoint_is_bit_identical(
    make_loader: object, stop: int, tmp_path: Path
) -> None:
    make = make_loader  # type: ignore[assignment]
    full = trainer_for("famo")
    full.fit(make(), epochs=3)  # type: ignore[operator]
    first = trainer_for("famo", run_dir=tmp_path, checkpoint_every=4)
    first.fit(make(), epochs=3, stop_after_steps=stop)  # type: ignore[operator]
    resumed = trainer_for("famo", run_dir=tmp_path, checkpoint_every=4)
    resumed.fit(make(), epochs=3, resume=tmp_path / "last.pt")  # type: ignore[operator]
    assert_same_parameters(full, resumed)


def test_resume_keeps_gradients_accumulated_across_an_epoch_end(tmp_path: Path) -> None:
    # 6 batches per epoch, 4 per step: epoch 1 ends holding 2 batches of gradient
    full = trainer_for("ew", grad_accumulation=4)
    full.fit(loader(), epochs=2)
    first = trainer_for("ew", run_dir=tmp_path, grad_accumulation=4)
    first.fit(loader(), epochs=1)
    assert first._micro == 2
    resumed = trainer_for("ew", run_dir=tmp_path, grad_accumulation=4)
    resumed.fit(loader(), epochs=2, resume=tmp_path / "last.pt")
    assert_same_parameters(full, resumed)


def test_multitask_sampler_with_generator_loaders_resumes_exactly(tmp_path: Path) -> None:
    def sampler() -> MultiTaskSampler:
        def single(task: str) -> DataLoader:  # type: ignore[type-arg]
            def pick(rows: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
                x, targets = collate(rows)
                return x, targets[task]

            return DataLoader(
                dataset(seed=len(task)),
                batch_size=16,
                shuffle=True,
                collate_fn=pick,
                generator=torch.Generator().manual_seed(ord(task)),
            )

        return MultiTaskSampler({t: single(t) for t in ("a", "b")}, strategy="proportional")

    assert set(loader_generators(sampler())) == {
        "train.loaders[a].generator",
        "train.loaders[b].generator",
    }
    full = trainer_for("rlw")
    full.fit(sampler(), epochs=2)
    first = trainer_for("rlw", run_dir=tmp_path, checkpoint_every=5)
    first.fit(sampler(), epochs=2, stop_after_steps=17)
    resumed = trainer_for("rlw", run_dir=tmp_path)
    resumed.fit(sampler(), epochs=2, resume=tmp_path / "last.pt")
    assert_same_parameters(full, resumed)


def test_resuming_with_another_kind_of_loader_is_refused(tmp_path: Path) -> None:
    trainer_for("ew", run_dir=tmp_path).fit(generator_loader(), epochs=2, stop_after_steps=3)
    with pytest.raises(CheckpointError, match="random generators differ"):
        trainer_for("ew", run_dir=tmp_path).fit(loader(), epochs=2, resume=tmp_path / "last.pt")


def test_rng_state_round_trips_through_weights_only() -> None:
    import random

    import numpy as np

    generator = torch.Generator().manual_seed(3)
    state = capture_rng({"g": generator})
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    def draw() -> tuple[object, ...]:
        numpy_value = np.random.rand()  # noqa: NPY002 - the global state is what is saved
        return random.random(), numpy_value, torch.rand(1), torch.rand(1, generator=generator)

    expected = draw()
    restore_rng(loaded, {"g": generator})
    again = draw()
    assert expected[:2] == again[:2]
    assert torch.equal(expected[2], again[2])
    assert torch.equal(expected[3], again[3])


def test_fit_rejects_a_bad_epoch_count() -> None:
    for bad in (0, -2, True, 1.5):
        with pytest.raises(ValueError, match="epochs must be a positive integer"):
            trainer_for("ew").fit(loader(), epochs=bad)  # type: ignore[arg-type]
