"""Config validation (one test per error class), the CLI end to end, and the HTML report."""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("pydantic")
pytest.importorskip("yaml")
pytest.importorskip("sklearn")

from taskbalance.cli import main
from taskbalance.config import ConfigError, load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"trainig": {"epochs": 1}}, r"^trainig: unknown key 'trainig'. Did you mean 'training'\?"),
        ({"training": {"epochs": "many"}}, r"^training\.epochs: Input should be a valid integer"),
        (
            {"training": {"epochs": 0}},
            r"^training\.epochs: Input should be greater than or equal to 1",
        ),
        (
            {"methods": [{"name": "pcgard"}]},
            r"^methods\.0\.name: unknown method 'pcgard'\. Did you mean 'pcgrad'",
        ),
        (
            {"methods": [{"name": "pcgrad", "hparams": {"sed": 1}}]},
            r"^methods\.0: hparams: .*'sed'\. Did you mean 'seed'",
        ),
        (
            {"methods": [{"name": "fixed", "hparams": {"weights": [1, 2]}}]},
            r"methods\.0\.hparams\.weights: 2 weights for 3 tasks",
        ),
        (
            {"tasks": [{"name": "digt"}]},
            r"tasks\.0\.name: dataset 'digits' has no task 'digt'\. Did you mean 'digit'",
        ),
        (
            {"data": {"dataset": "digit"}},
            r"^data\.dataset: unknown dataset 'digit'\. Did you mean 'digits'",
        ),
        (
            {"transforms": [{"name": "clip_global_norm", "max_norm": -1}]},
            r"^transforms\.0: options of 'clip_global_norm': max_norm must be",
        ),
        (
            {"training": {"level": "layer"}},
            r"^training\.level: Input should be 'parameters' or 'representation'",
        ),
        (
            {"methods": [{"name": "cagrad", "c": 0.2}]},
            r"^methods\.0\.c: unknown key 'c'\. 'c' is a hyperparameter of cagrad: write it "
            r"under hparams: \{c: 0\.2\}",
        ),
        (
            {"methods": [{"name": "cagrad", "cc": 0.2}]},
            r"^methods\.0\.cc: unknown key 'cc'\. Valid keys here: name, hparams",
        ),
        (
            {"methods": [{"name": "mgda", "engine": "gram"}]},
            r"^methods\.0\.engine: Input should be 'auto', 'gramian' or 'jacobian'",
        ),
        (
            {"model": {"kind": "ple"}, "methods": [{"name": "mgda", "level": "representation"}]},
            r"methods\.0\.level: the 'ple' model has no single shared representation",
        ),
        (
            {"model": {"kind": "ple"}, "training": {"level": "representation"}},
            r"training\.level: the 'ple' model has no single shared representation",
        ),
        (
            {"model": {"kind": "lenet"}},
            r"model\.kind: 'lenet' is a convolutional trunk for image datasets \(multimnist\)",
        ),
    ],
)
def test_config_errors_name_the_key(config: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as error:
        load_config(config)
    lines = str(error.value).splitlines()
    assert lines[0] == "invalid config config:"
    assert any(__import__("re").search(message, line) for line in lines[1:]), lines


def test_config_files_in_every_format(tmp_path: Path) -> None:
    assert load_config(EXAMPLES / "digits_comparison.yaml").methods[2].display == "mgda@repr"
    assert load_config(EXAMPLES / "digits_clipping.toml").transforms[0].name == "autoclip_per_task"
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"methods": [{"name": "uw"}]}))
    assert load_config(path).methods[0].name == "uw"
    broken = tmp_path / "broken.yaml"
    broken.write_text("methods: [unclosed")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(broken)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_methods_command_lists_every_method(capsys: pytest.CaptureFixture[str]) -> None:
    from taskbalance import methods

    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "family", "needs", "reference"]
    names = [line.split()[0] for line in lines[1:]]
    assert sorted(names) == methods.available()
    assert names[0] == "dtp"  # loss weighting first, then gradient methods, each by name


def test_train_writes_runs_and_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "train",
                str(EXAMPLES / "digits_comparison.yaml"),
                "--epochs",
                "2",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [run["method"] for run in summary["runs"]] == ["ew", "pcgrad", "mgda@repr"]
    for run in summary["runs"]:
        assert 0 <= run["test"]["digit/accuracy"] <= 1
    page = (tmp_path / "report.html").read_text()
    assert "pareto.png" in page
    assert "mgda_repr/figures/loss.png" in page
    for image in [
        "pareto.png",
        "ew/figures/loss.png",
        "pcgrad/figures/cosines.png",
        "pcgrad/figures/grad_norms.png",
    ]:
        assert (tmp_path / image).stat().st_size > 5_000, image
    assert (tmp_path / "ew" / "last.pt").exists()
    assert "method | digit/accuracy" in capsys.readouterr().out
    # the report command re-renders the same page, and works on a single run directory too
    assert main(["report", str(tmp_path)]) == 0
    assert main(["report", str(tmp_path / "ew")]) == 0
    assert "figures/loss.png" in (tmp_path / "ew" / "report.html").read_text()


def test_bad_config_exits_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("methods:\n  - name: pcgard\n")
    assert main(["train", str(path)]) == 2
    assert "methods.0.name: unknown method 'pcgard'" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_affinity_command_recovers_planted_groups(tmp_path: Path) -> None:
    assert (
        main(
            [
                "affinity",
                str(EXAMPLES / "synthetic_groups.yaml"),
                "--budget",
                "2",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    text = (tmp_path / "groups.txt").read_text().splitlines()
    expected = "task0, task2, task4 | task1, task3, task5"
    assert text[1].strip().startswith(expected), text  # best grouping by gradient cosine
    assert (tmp_path / "affinity_lookahead.png").exists()


def test_report_includes_health_curves_and_affinity(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "data: {dataset: synthetic, options: {num_tasks: 4, clusters: 2}}\n"
        "model: {hidden: [16]}\n"
        "training: {epochs: 2, optimizer: {lr: 0.01}}\n"
        "methods: [{name: pcgrad}]\n"
        "monitor: {every: 1}\n"
        f"output: {tmp_path / 'out'}\n"
    )
    assert main(["train", str(config)]) == 0
    assert main(["affinity", str(config), "--budget", "2"]) == 0
    assert main(["report", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    for figure in [
        "pcgrad/figures/layers.png",
        "pcgrad/figures/conflict.png",
        "affinity/affinity_cosine.png",
    ]:
        assert figure in page
        assert (tmp_path / "out" / figure).exists()
    assert "Suggested task groups" in page or "task affinity" in page.lower()


# ------------------------------------------------------- hostile configs and command lines
BASE = {
    "name": "t",
    "data": {"dataset": "digits"},
    "model": {"hidden": [8]},
    "training": {"epochs": 1},
    "methods": [{"name": "ew"}],
}


def _with(change: dict) -> dict:  # type: ignore[type-arg]
    config = json.loads(json.dumps(BASE))
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


@pytest.mark.parametrize(
    ("change", "key", "hint"),
    [
        ({"training": {"optimizer": {"lr": float("inf")}}}, "training.optimizer.lr", "finite"),
        ({"tasks": [{"name": "digit", "weight": float("inf")}]}, "tasks.0.weight", "finite"),
        ({"tasks": [{"name": "digit", "weight": float("nan")}]}, "tasks.0.weight", "finite"),
        ({"tasks": []}, "tasks", "at least 1"),
        ({"tasks": [{"name": "digit"}, {"name": "digit"}]}, "tasks.1.name", "twice"),
        ({"model": {"hidden": [0]}}, "model.hidden.0", "greater than or equal to 1"),
        ({"model": {"hidden": []}}, "model.hidden", "at least 1"),
        ({"model": {"hidden": [-5]}}, "model.hidden.0", "greater than or equal to 1"),
        ({"training": {"epochs": True}}, "training.epochs", "integer"),
        ({"training": {"epochs": 0}}, "training.epochs", "greater than or equal to 1"),
        ({"training": {"epochs": 2.5}}, "training.epochs", "integer"),
        ({"data": {"batch_size": True}}, "data.batch_size", "integer"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"methods": [{"name": "ew", "label": "../../x"}]}, "methods.0.label", "path segments"),
        ({"methods": [{"name": "ew", "label": ""}]}, "methods.0.label", "path segments"),
        ({"output": ""}, "output", "must name a folder"),
        ({"output": "../../x"}, "output", "without '..'"),
        ({"data": {"options": {"bogus": 1}}}, "options.bogus", "unknown option"),
        (
            {"data": {"dataset": "synthetic", "options": {"num_taks": 3}}},
            "options.num_taks",
            "Did you mean 'num_tasks'",
        ),
        (
            {"data": {"dataset": "synthetic", "options": {"num_tasks": 0}}},
            "options.num_tasks",
            ">= 1",
        ),
        (
            {"data": {"dataset": "synthetic", "options": {"seed": 3}}},
            "options.seed",
            "top level",
        ),
        (
            {"training": {"early_stopping": {"monitor": "digit/acc"}}},
            "training.early_stopping.monitor",
            "Did you mean 'digit/accuracy'",
        ),
        (
            {"data": {"dataset": "census"}, "tasks": [{"name": "incme"}]},
            "tasks.0.name",
            "Did you mean 'income'",
        ),
        ({"data": {"dataset": "yeast"}, "tasks": [{"name": "class15"}]}, "tasks.0.name", ""),
    ],
)
def test_hostile_configs_fail_before_training_and_write_nothing(
    change: dict,  # type: ignore[type-arg]
    key: str,
    hint: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    config = _with({**change, "output": change.get("output", str(out))})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert key in err
    assert hint in err
    assert "Traceback" not in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "CONFIG", "--epochs", "0"],
        ["train", "CONFIG", "--epochs", "-2"],
        ["affinity", "CONFIG", "--every", "0"],
        ["affinity", "CONFIG", "--budget", "x"],
    ],
)
def test_bad_numbers_on_the_command_line_exit_2(argv: list[str], tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(BASE))
    with pytest.raises(SystemExit) as exit_:
        main([str(path) if a == "CONFIG" else a for a in argv])
    assert exit_.value.code == 2


def test_a_folder_as_config_and_os_errors_are_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_with({"output": str(blocker / "out")})))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:")
    assert "Traceback" not in err
    with pytest.raises(ConfigError):
        main(["--debug", "train", str(tmp_path)])


def test_a_core_only_install_names_the_extra_to_install(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "config.json"
    path.write_text(json.dumps(BASE))
    code = (
        "import sys; sys.modules['pydantic'] = None\n"
        "from taskbalance.cli import main\n"
        f"raise SystemExit(main(['train', {str(path)!r}]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2
    assert "pip install 'taskbalance[cli]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_described_tasks_match_the_loaded_datasets() -> None:
    from taskbalance.datasets import IMAGE_DATASETS, describe_tasks, load_dataset

    for name, options in (("digits", {}), ("synthetic", {"num_tasks": 4}), ("multimnist", {})):
        data = load_dataset(name, **options)
        assert describe_tasks(name, options) == {t.name: tuple(t.metrics) for t in data.tasks}
        assert ("image_shape" in data.info) == (name in IMAGE_DATASETS)


def test_labels_with_separators_name_a_safe_folder() -> None:
    from taskbalance._validation import run_folder

    config = load_config(_with({"methods": [{"name": "ew", "label": "mmoe / ew"}]}))
    assert config.methods[0].display == "mmoe / ew"
    assert run_folder("mmoe / ew") == "mmoe_ew"
    assert run_folder("mgda@repr") == "mgda_repr"


def test_unknown_config_keys_suggest_the_right_one() -> None:
    with pytest.raises(
        ValueError, match=r"training.epoch: unknown key 'epoch'. Did you mean 'epochs'"
    ):
        load_config({"training": {"epoch": 3}})
    with pytest.raises(ValueError, match=r"Valid keys here: .*epochs"):
        load_config({"training": {"epoch": 3}})
    with pytest.raises(ValueError, match=r"unknown option 'max_nrom'. Did you mean 'max_norm'"):
        load_config({"transforms": [{"name": "clip_per_task_norm", "max_nrom": 1.0}]})


def test_methods_may_be_given_by_name() -> None:
    config = load_config({"methods": ["ew", {"name": "pcgrad"}]})
    assert [m.name for m in config.methods] == ["ew", "pcgrad"]


def test_cli_version_and_help_texts(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from taskbalance import __version__
    from taskbalance.cli import build_parser

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"taskbalance {__version__}"
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if not action.option_strings:  # every positional explains itself
                assert action.help, f"{name} {action.dest}"
        text = sub.format_help()
        if name == "bench":
            assert "(default: 2)" in text  # --jobs
        if name == "data":
            assert "fetch:" in text
            assert "list:" in text


def test_train_picks_one_thread_for_small_models() -> None:
    from taskbalance.run import choose_threads

    before = torch.get_num_threads()
    try:
        assert choose_threads(torch.nn.Linear(64, 64), None) == 1
        assert torch.get_num_threads() == 1
        assert choose_threads(torch.nn.Linear(64, 64), 2) == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"name": "x", "runs": []}', "lists no runs"),
        ('{"name": "x"', "is not valid JSON"),
    ],
)
def test_report_of_a_broken_summary_names_the_file(
    tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "summary.json").write_text(content)
    assert main(["report", str(tmp_path)]) != 0
    error = capsys.readouterr().err
    assert message in error
    assert "summary.json" in error


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ({"val_fraction": 0.0}, "every split needs at least one row"),
        ({"val_fraction": 0.5, "test_fraction": 0.6}, "every split needs at least one row"),
        ({"val_fraction": 1.0}, r"must be in \[0, 1\)"),
        ({"test_fraction": float("nan")}, r"must be in \[0, 1\)"),
    ],
)
def test_dataset_splits_are_never_empty(fractions: dict[str, float], message: str) -> None:
    # an empty training split trained nothing, an empty validation split gave NaN metrics
    from taskbalance.datasets import digits

    with pytest.raises(ValueError, match=message):
        digits(**fractions)
    data = digits()
    assert min(len(data.train), len(data.val), len(data.test)) > 0


@pytest.mark.parametrize("option", ["num_tasks", "clusters", "samples", "features"])
def test_synthetic_dataset_counts_are_validated(option: str) -> None:
    # clusters=0 was a ZeroDivisionError, num_tasks=0 "stack expects a non-empty TensorList"
    from taskbalance.datasets import synthetic

    with pytest.raises(ValueError, match=f"synthetic: {option} must be a whole number"):
        synthetic(**{option: 0})
