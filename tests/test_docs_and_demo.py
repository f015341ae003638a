"""The README starts with the two commands; aggregate validates; the demo runs end to end."""

import json
from pathlib import Path

import pytest
import torch

from taskbalance import aggregate

ROOT = Path(__file__).resolve().parent.parent


def test_readme_has_the_two_setup_commands_first() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = readme[readme.index("```bash") : readme.index("```", readme.index("```bash") + 3)]
    assert "make demo" in setup
    assert "make test" in setup


def test_aggregate_validates_its_input() -> None:
    with pytest.raises(ValueError, match=r"shape \(T, P\)"):
        aggregate("ew", torch.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        aggregate("mgda", torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(TypeError, match="tensor"):
        aggregate("ew", [[1.0]])  # type: ignore[arg-type]
    # MGDA of two orthogonal unit gradients is (0.5, 0.5): an integer result would read (0, 0)
    with pytest.raises(TypeError, match=r"floating-point tensor, got torch.int64.*double\(\)"):
        aggregate("mgda", torch.tensor([[1, 0], [0, 1]]))
    with pytest.raises(TypeError, match=r"got torch\.complex64"):
        aggregate("pcgrad", torch.ones(2, 2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="2 losses for 3 tasks"):
        aggregate("loss_ratio", torch.ones(3, 2), losses=[1.0, 2.0])
    # uw's first weights do not read the losses: a NaN loss went through unnoticed
    with pytest.raises(ValueError, match="losses must be finite"):
        aggregate("uw", torch.ones(3, 2), losses=[1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match="metrics must be finite"):
        aggregate("dtp", torch.ones(3, 2), losses=[1.0, 1.0, 1.0], metrics=[0.5, float("inf"), 0.2])


def test_demo_runs_and_writes_its_report(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")
    from taskbalance import demo

    assert (
        demo.main(
            [
                "--out",
                str(tmp_path),
                "--epochs",
                "2",
                "--seeds",
                "1",
                "--methods",
                "ew",
                "mgda@repr",
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert [row["method"] for row in results["summary"]] == ["ew", "mgda (repr.)"]
    for row in results["summary"]:
        assert 0.0 <= row["digit"] <= 1.0
        assert row["value"] >= 0.0
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert "| ew |" in (tmp_path / "report.md").read_text()


def test_demo_rejects_unknown_methods() -> None:
    from taskbalance import demo

    with pytest.raises(ValueError, match="Did you mean 'pcgrad'"):
        demo.main(["--methods", "pcgard"])
