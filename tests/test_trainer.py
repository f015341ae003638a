"""Trainer: exact resume, atomic checkpoints, missing labels, multi-input sampling, AMP on CPU."""

import logging
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from taskbalance.models import HardSharing
from taskbalance.train import CSVLogger, EarlyStopping, MultiTaskSampler, Task, Trainer, atomic_save


def make_model() -> HardSharing:
    trunk = nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 16), nn.ReLU()
    )
    return HardSharing(trunk, {"a": nn.Linear(16, 3), "b": nn.Linear(16, 1)})


def dataset(n: int = 96, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator)
    a = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    b = torch.sin(x[:, 2]) + 0.5 * x[:, 3]
    return TensorDataset(x, a, b)


def collate(rows: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x, a, b = (torch.stack(column) for column in zip(*rows, strict=True))
    return x, {"a": a, "b": b}


def loader(seed: int = 0, shuffle: bool = True) -> DataLoader:  # type: ignore[type-arg]
    return DataLoader(dataset(seed=seed), batch_size=16, shuffle=shuffle, collate_fn=collate)


TASKS = [Task("a", "cross_entropy", ["accuracy"]), Task("b", "mse", ["mae"])]


def trainer_for(method: str, run_dir: Path | None = None, **options: object) -> Trainer:
    torch.manual_seed(123)
    model = make_model()
    return Trainer(
        model,
        TASKS,
        method,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        run_dir=run_dir,
        seed=0,
        **options,
    )  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["dwa", "uw", "famo", "nash_mtl", "moco", "gradvac"])
def test_resuming_mid_epoch_is_bit_identical(method: str, tmp_path: Path) -> None:
    full = trainer_for(method)
    full.fit(loader(), loader(seed=1, shuffle=False), epochs=3)
    interrupted = trainer_for(method, run_dir=tmp_path)
    interrupted.fit(
        loader(), loader(seed=1, shuffle=False), epochs=3, stop_after_steps=9
    )  # mid epoch 2
    assert interrupted.epoch == 1
    assert interrupted.batch_in_epoch == 3
    resumed = trainer_for(method, run_dir=tmp_path)
    resumed.fit(loader(), loader(seed=1, shuffle=False), epochs=3, resume=tmp_path / "last.pt")
    for p, q in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q), method
    assert resumed.global_step == full.global_step == 18
    assert resumed.history == full.history


def test_checkpoint_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    atomic_save({"version": 1}, path)
    original = torch.save

    def crash(obj: object, stream: object) -> None:
        original({"partial": True}, stream)  # type: ignore[arg-type]
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"version": 2}, path)
    monkeypatch.undo()
    assert torch.load(path) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_missing_labels_use_labelled_samples_only() -> None:
    torch.manual_seed(0)
    model = make_model().eval()  # no dropout: compare gradients exactly
    x, a, b = dataset(16).tensors
    mask_b = torch.tensor([True, False] * 8)
    reference = make_model()
    reference.load_state_dict(model.state_dict())
    reference.eval()
    out = reference(x)
    expected = nn.functional.cross_entropy(out["a"], a) + nn.functional.mse_loss(
        out["b"][mask_b].squeeze(-1), b[mask_b]
    )
    grads = torch.autograd.grad(expected, list(reference.parameters()))
    trainer = Trainer(
        model, TASKS, "ew", optimizer=torch.optim.SGD(model.parameters(), lr=1.0), seed=None
    )
    before = [p.detach().clone() for p in model.parameters()]
    model.train = lambda mode=True: model  # type: ignore[method-assign, assignment]  # keep eval mode
    trainer._train_batch((x, {"a": a, "b": b}, {"b": mask_b}))
    for p, old, g in zip(model.parameters(), before, grads, strict=True):
        torch.testing.assert_close(old - p.detach(), g, rtol=1e-5, atol=1e-7)


def test_a_task_without_labels_is_left_out_of_the_step() -> None:
    torch.manual_seed(0)
    model = make_model()
    trainer = Trainer(model, TASKS, "mgda", seed=None, log_every=1)
    x, a, b = dataset(16).tensors
    trainer._train_batch((x, {"a": a, "b": b}, {"b": torch.zeros(16, dtype=torch.bool)}))
    record = trainer.steps[-1]
    assert "loss/b" not in record
    assert record["weight/a"] == 1.0
    assert all(p.grad is None for p in model.heads["b"].parameters())


def test_a_mask_for_a_task_without_targets_is_refused() -> None:
    # a misspelt mask key ("bb") left task b unmasked: its placeholder labels trained as real
    trainer = Trainer(make_model(), TASKS, "ew", seed=None)
    x, a, b = dataset(16).tensors
    batch = (x, {"a": a, "b": b}, {"bb": torch.zeros(16, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"masks for \['bb'\], which have no targets"):
        trainer._train_batch(batch)
    with pytest.raises(ValueError, match=r"masks for \['bb'\], which have no targets"):
        trainer.evaluate([batch])
    with pytest.raises(ValueError, match="not a task"):
        trainer.evaluate([(x, {"a": a, "c": b})])  # (a KeyError before)


def test_trainer_steps_on_the_gram_only_engine_like_on_the_jacobian() -> None:
    updates = []
    for engine in ("gramian", "jacobian"):
        torch.manual_seed(0)
        model = make_model()
        trainer = Trainer(model, TASKS, "upgrad", engine=engine, seed=None)  # type: ignore[arg-type]
        assert trainer.balancer.engine == engine
        x, a, b = dataset(16).tensors
        before = [p.detach().clone() for p in model.parameters()]
        trainer._train_batch((x, {"a": a, "b": b}, {}))
        updates.append(
            [p.detach() - old for p, old in zip(model.parameters(), before, strict=True)]
        )
    for fast, plain in zip(*updates, strict=True):
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("strategy", "expected"), [("proportional", 0.8), ("temperature", 2 / 3), ("round_robin", 0.5)]
)
def test_multi_input_sampling_proportions(strategy: str, expected: float) -> None:
    small = DataLoader(TensorDataset(torch.zeros(100, 1), torch.zeros(100)), batch_size=10)
    large = DataLoader(TensorDataset(torch.ones(400, 1), torch.ones(400)), batch_size=10)
    sampler = MultiTaskSampler(
        {"small": small, "large": large}, strategy=strategy, temperature=2.0, steps_per_epoch=6000
    )  # type: ignore[arg-type]
    assert sampler.probabilities()["large"] == pytest.approx(expected)
    counts = Counter(task for task, _ in sampler)
    assert counts["large"] / 6000 == pytest.approx(expected, abs=0.02)
    for task, (inputs, _) in MultiTaskSampler(
        {"small": small, "large": large}, strategy=strategy, steps_per_epoch=20
    ):  # type: ignore[arg-type]
        assert float(inputs[0, 0]) == (1.0 if task == "large" else 0.0)


def _loader(rows: int, batch_size: int = 4, drop_last: bool = False) -> DataLoader:  # type: ignore[type-arg]
    data = TensorDataset(torch.zeros(rows, 1), torch.zeros(rows))
    return DataLoader(data, batch_size=batch_size, drop_last=drop_last)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": float("nan")}, "temperature must be a finite"),
        ({"temperature": 0.0}, "temperature must be a finite"),
        ({"steps_per_epoch": 0}, "steps_per_epoch must be a positive int"),
        ({"steps_per_epoch": -3}, "steps_per_epoch must be a positive int"),
    ],
)
def test_sampler_settings_are_validated(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MultiTaskSampler({"a": _loader(8)}, **options)  # type: ignore[arg-type]


def test_sampler_refuses_an_empty_loader_and_a_loader_that_cannot_restart() -> None:
    with pytest.raises(ValueError, match=r"task\(s\) \['b'\] are empty"):
        MultiTaskSampler({"a": _loader(8), "b": _loader(0)}, strategy="round_robin")
    # 3 rows, batches of 4 without the last: no batch at all (it was a bare StopIteration)
    sampler = MultiTaskSampler(
        {"a": _loader(8), "b": _loader(3, drop_last=True)}, strategy="round_robin"
    )
    with pytest.raises(ValueError, match="task 'b' gave no batch"):
        list(sampler)
    one_shot = iter([(torch.zeros(2, 1), torch.zeros(2))] * 2)
    sampler = MultiTaskSampler(
        {"a": _loader(8), "b": one_shot}, strategy="round_robin", steps_per_epoch=10
    )
    with pytest.raises(ValueError, match="task 'b' gave no batch"):
        list(sampler)


def test_round_robin_takes_loaders_without_a_length() -> None:
    def stream() -> object:
        class Stream:
            def __iter__(self):  # type: ignore[no-untyped-def]
                return iter([(torch.ones(2, 1), torch.ones(2))] * 3)

        return Stream()

    sampler = MultiTaskSampler(
        {"a": _loader(8), "b": stream()},  # type: ignore[dict-item]
        strategy="round_robin",
        steps_per_epoch=12,
    )
    assert [task for task, _ in sampler] == ["a", "b"] * 6
    with pytest.raises(ValueError, match="works only with strategy='round_robin'"):
        MultiTaskSampler({"a": _loader(8), "b": stream()}, strategy="proportional")  # type: ignore[dict-item]


def test_multi_input_training_runs_with_one_task_per_step() -> None:
    data = dataset(64)
    x, a, b = data.tensors
    loaders = {
        "a": DataLoader(TensorDataset(x, a), batch_size=16, shuffle=True),
        "b": DataLoader(TensorDataset(x, b), batch_size=16, shuffle=True),
    }
    torch.manual_seed(0)
    model = make_model()
    trainer = Trainer(
        model, TASKS, "ew", optimizer=torch.optim.Adam(model.parameters(), lr=1e-2), seed=0
    )
    history = trainer.fit(
        MultiTaskSampler(loaders, "round_robin"), loader(shuffle=False), epochs=10
    )  # type: ignore[arg-type]
    assert history[-1]["a/accuracy"] > 0.5
    assert {"a/loss", "b/loss", "b/mae", "mean_loss", "average_accuracy"} <= set(history[-1])


def test_amp_is_skipped_cleanly_on_cpu(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="taskbalance"):
        trainer = trainer_for("ew", amp=True)
    assert not trainer.amp
    assert any("AMP needs CUDA" in r.message for r in caplog.records)
    trainer.fit(loader(), epochs=1)
    assert trainer.global_step == 6


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"patience": 0}, "patience"),
        ({"patience": 2.5}, "patience"),
        ({"min_delta": float("nan")}, "min_delta"),
        ({"min_delta": -0.1}, "min_delta"),
    ],
)
def test_early_stopping_settings_are_validated(options: dict[str, float], message: str) -> None:
    # a negative patience stopped after the first epoch, a NaN min_delta never improved
    with pytest.raises(ValueError, match=message):
        EarlyStopping("mean_loss", "min", **options)  # type: ignore[arg-type]


def test_early_stopping_restores_the_best_model_and_logs(tmp_path: Path) -> None:
    trainer = trainer_for(
        "ew", run_dir=tmp_path, early_stopping=EarlyStopping("mean_loss", "min", patience=2)
    )
    history = trainer.fit(loader(), loader(seed=1, shuffle=False), epochs=40)
    best_epoch = min(history, key=lambda row: row["mean_loss"])
    assert len(history) < 40  # stopped early
    assert trainer.evaluate(loader(seed=1, shuffle=False))["mean_loss"] == pytest.approx(
        best_epoch["mean_loss"], rel=1e-6
    )
    steps = (tmp_path / "steps.csv").read_text().splitlines()
    assert steps[0].startswith("step,epoch")
    assert "loss/a" in steps[0]
    assert len(steps) > 10
    assert "a/accuracy" in (tmp_path / "epochs.csv").read_text().splitlines()[0]
    assert (tmp_path / "best.pt").exists()
    assert (tmp_path / "last.pt").exists()
    assert isinstance(trainer.callbacks[0], CSVLogger)


def test_gradient_accumulation_matches_a_larger_batch() -> None:
    torch.manual_seed(0)
    model_a, model_b = make_model().eval(), make_model().eval()
    model_b.load_state_dict(model_a.state_dict())
    for model in (model_a, model_b):
        model.train = lambda mode=True, m=model: m  # type: ignore[method-assign, misc]
    x, a, b = dataset(32).tensors
    big = Trainer(
        model_a, TASKS, "ew", optimizer=torch.optim.SGD(model_a.parameters(), lr=0.1), seed=None
    )
    big._train_batch((x, {"a": a, "b": b}))
    small = Trainer(
        model_b,
        TASKS,
        "ew",
        optimizer=torch.optim.SGD(model_b.parameters(), lr=0.1),
        seed=None,
        grad_accumulation=2,
    )
    small._train_batch((x[:16], {"a": a[:16], "b": b[:16]}))
    assert small.global_step == 0
    small._train_batch((x[16:], {"a": a[16:], "b": b[16:]}))
    assert small.global_step == 1
    for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_trainer_validates_its_inputs() -> None:
    with pytest.raises(ValueError, match="not outputs of the model"):
        Trainer(make_model(), [Task("c", "mse")], "ew")
    with pytest.raises(ValueError, match="unknown loss"):
        Task("a", "hinge")
    with pytest.raises(ValueError, match="unknown metrics"):
        Task("a", "mse", ["acc"])
    for name in ("", "a/b"):  # "a/b/accuracy" was read as task "a", metric "b/accuracy"
        with pytest.raises(ValueError, match="without '/'"):
            Task(name, "mse")
    for weight in (-1.0, float("nan"), float("inf")):  # -1 maximised the loss with ew
        with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
            Task("a", "mse", weight=weight)
    with pytest.raises(ValueError, match="shared_params"):
        Trainer(nn.Linear(2, 2), [Task("a", "mse")], "ew")
    from taskbalance.optim import MTAdam

    model = make_model()
    with pytest.raises(ValueError, match="MTAdam balances the loss terms itself"):
        Trainer(model, TASKS, "ew", optimizer=MTAdam(model.parameters()))


def test_float16_loss_scale_policy() -> None:
    trainer = trainer_for("ew", amp="float16")
    assert not trainer.amp
    assert trainer.loss_scale == 1.0
    trainer.amp, trainer.amp_dtype, trainer.loss_scale = True, torch.float16, 2.0**16  # as on CUDA
    trainer._update_loss_scale(skipped=True)
    assert trainer.loss_scale == 2.0**15
    for _ in range(2000):
        trainer._update_loss_scale(skipped=False)
    assert trainer.loss_scale == 2.0**16
    with pytest.raises(ValueError, match="amp must be"):
        trainer_for("ew", amp="fp8")


def test_validation_metrics_feed_metric_based_methods() -> None:
    tasks = [
        Task("a", "cross_entropy", ["accuracy"]),
        Task("b", "binary_cross_entropy", ["accuracy"]),
    ]
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(6, 16), nn.ReLU())
    model = HardSharing(trunk, {"a": nn.Linear(16, 3), "b": nn.Linear(16, 1)})

    def collate_binary(
        rows: list[tuple[torch.Tensor, ...]],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, a, b = (torch.stack(column) for column in zip(*rows, strict=True))
        return x, {"a": a, "b": (b > 0).float()}

    data = DataLoader(dataset(), batch_size=16, collate_fn=collate_binary)
    trainer = Trainer(
        model, tasks, "metric_weighting", method_metrics={"a": "accuracy", "b": "accuracy"}, seed=0
    )
    history = trainer.fit(data, data, epochs=2)
    method = trainer.balancer.method
    assert method.last_metrics is not None  # type: ignore[attr-defined]
    expected = torch.tensor(
        [history[0]["a/accuracy"], history[0]["b/accuracy"]], dtype=torch.float64
    )
    torch.testing.assert_close(method.last_metrics, expected)  # type: ignore[attr-defined]


def test_an_epoch_without_batches_is_an_error_not_a_silent_no_op() -> None:
    empty = DataLoader(dataset(n=0), batch_size=16, collate_fn=collate)
    with pytest.raises(ValueError, match="gave no batch in epoch 1"):
        trainer_for("ew").fit(empty, epochs=2)
    # a one-shot iterator trains its epoch, then the next epoch has nothing left
    trainer = trainer_for("ew")
    with pytest.raises(ValueError, match="gave no batch in epoch 2"):
        trainer.fit(iter(list(loader())), epochs=2)
    assert trainer.global_step == 6


def test_steps_csv_widens_its_header_for_keys_the_first_rows_lacked(tmp_path: Path) -> None:
    # a first step without task b's labels (or a skipped first step: no weights) fixed the
    # columns, and every later "loss/b" / "weight/b" was dropped from the log without a word
    import csv

    trainer = trainer_for("mgda", run_dir=tmp_path, log_every=1)
    x, a, b = dataset(16).tensors
    trainer.callbacks[0].on_fit_start(trainer)
    trainer._train_batch((x, {"a": a, "b": b}, {"b": torch.zeros(16, dtype=torch.bool)}))
    trainer._train_batch((x, {"a": a, "b": b}))
    with (tmp_path / "steps.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 2
    assert rows[0]["loss/b"] == ""  # (no labels for b in the first batch)
    assert float(rows[1]["loss/b"]) > 0
    assert float(rows[1]["weight/b"]) >= 0
    assert float(rows[0]["loss/a"]) > 0
