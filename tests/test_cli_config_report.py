"""Config validation (one test per error class), the CLI end to end, and the HTML report."""

import json
from pathlib import Path

import pytest

pytest.importorskip("pydantic")
pytest.importorskip("yaml")
pytest.importorskip("sklearn")

from taskbalance.cli import main
from taskbalance.config import ConfigError, load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"trainig": {"epochs": 1}}, r"^trainig: Extra inputs are not permitted"),
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
            {"methods": [{"name": "mgda", "engine": "gram"}]},
            r"^methods\.0\.engine: Input should be 'auto', 'gramian' or 'jacobian'",
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
    assert [line.split()[0] for line in lines[1:]] == methods.available()


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
