"""Checkpoints that are safe to load, verified, atomic, and random-number-generator state.

A checkpoint file is a ``torch.save`` archive holding an *envelope*::

    {"format": "taskbalance.checkpoint", "version": 2,
     "sha256": <hex digest of payload>, "payload": <uint8 tensor: torch.save of the state>}

Both the envelope and the payload are read with ``torch.load(weights_only=True)``: every
state (Python's, NumPy's and torch's RNG included) is stored as tensors and plain values, so
loading a file never runs code from it. The SHA-256 digest detects a truncated or
bit-flipped file before anything is restored; :func:`atomic_save` writes to a temporary file
in the same folder, fsyncs and renames, so a crash leaves the previous checkpoint intact (the
temporary is removed by :func:`remove_stale_temporaries` on the next start).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "atomic_save",
    "capture_rng",
    "load_checkpoint",
    "loader_generators",
    "remove_stale_temporaries",
    "restore_rng",
    "save_checkpoint",
    "seed_everything",
]

logger = logging.getLogger(__name__)

FORMAT = "taskbalance.checkpoint"
VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or does not fit: truncated, corrupted, written by
    another tool or version, or by a run with another model, method or optimizer."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - user code may use the global RNG
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- RNG state
def loader_generators(loader: Any, prefix: str = "train") -> dict[str, torch.Generator]:
    """The ``torch.Generator`` objects that decide a data loader's sample order.

    Looks at a ``DataLoader``'s own ``generator``, its sampler's and its batch sampler's
    sampler's, and, for a :class:`~taskbalance.train.MultiTaskSampler`, at every task's
    loader. Each generator appears once (a ``DataLoader(shuffle=True, generator=g)`` hands
    ``g`` to its ``RandomSampler``), named by where it was found.
    """
    found: dict[str, torch.Generator] = {}
    seen: set[int] = set()

    def visit(obj: Any, name: str, depth: int) -> None:
        if obj is None or depth > 4:
            return
        if isinstance(obj, torch.Generator):
            if id(obj) not in seen:
                seen.add(id(obj))
                found[name] = obj
            return
        for attribute in ("generator", "sampler", "batch_sampler"):
            visit(getattr(obj, attribute, None), f"{name}.{attribute}", depth + 1)
        loaders = getattr(obj, "loaders", None)
        if isinstance(loaders, Mapping):
            for task, inner in loaders.items():
                visit(inner, f"{name}.loaders[{task}]", depth + 1)

    visit(loader, prefix, 0)
    return found


def capture_rng(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """The state of every random number generator a training step may use, as tensors and
    plain values (loadable with ``weights_only=True``): Python's, NumPy's and torch's global
    generators, CUDA's when present, and the given data-loader ``generators``."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "loaders": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(
    state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None
) -> None:
    """Restore a state from :func:`capture_rng` (and the data-loader ``generators`` it saw:
    a generator the state does not name, or a named one the loader no longer has, is an
    error, since the sample order would silently differ)."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved: Mapping[str, torch.Tensor] = state.get("loaders", {})
    current = dict(generators or {})
    if set(saved) != set(current):
        raise CheckpointError(
            "the training data's random generators differ from the checkpoint's: saved "
            f"{sorted(saved)}, found {sorted(current)}; resume with the same kind of data "
            "loader (a DataLoader with or without its own generator=, the same "
            "MultiTaskSampler tasks)"
        )
    for name, generator in current.items():
        generator.set_state(saved[name])


# ----------------------------------------------------------------------------- files
def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over
    ``path``: a crash mid-write leaves the previous file intact, never a torn file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
    )
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return target


def remove_stale_temporaries(directory: str | Path, names: Iterable[str]) -> list[Path]:
    """Remove the ``.NAME.*.tmp`` files that a process killed inside :func:`atomic_save`
    left behind in ``directory``; returns what was removed."""
    folder = Path(directory)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for name in names:
        for leftover in folder.glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted save", len(removed))
    return removed


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``state`` (tensors and plain values only) atomically, with a SHA-256 digest."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    data = buffer.getvalue()
    envelope = {
        "format": FORMAT,
        "version": VERSION,
        "sha256": hashlib.sha256(data).hexdigest(),
        "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8),
    }
    return atomic_save(envelope, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint` (never unpickles
    code: ``weights_only=True`` throughout).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is truncated, corrupted (digest mismatch), not a taskbalance
            checkpoint, or from an incompatible version; the message says which.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no checkpoint at {source}")
    try:
        envelope = torch.load(source, weights_only=True, map_location="cpu")
    except Exception as error:  # a torn zip, a pickle with code in it, random bytes
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{source} cannot be read as a checkpoint (truncated, corrupted, or not written "
            f"by taskbalance): {type(error).__name__}: {reason}"
        ) from error
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        raise CheckpointError(
            f"{source} is not a taskbalance checkpoint (no verified envelope; files written "
            "by taskbalance before version 2 of the format are not loaded, since they need "
            "an unrestricted unpickler)"
        )
    if envelope.get("version") != VERSION:
        raise CheckpointError(
            f"{source} has checkpoint format version {envelope.get('version')}, this "
            f"taskbalance reads version {VERSION}"
        )
    payload = envelope.get("payload")
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8:
        raise CheckpointError(f"{source} is damaged: its payload is missing")
    data = payload.numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != envelope.get("sha256"):
        raise CheckpointError(
            f"{source} is corrupted: its SHA-256 digest does not match its content "
            "(a bit flip or a partial copy); use an earlier checkpoint"
        )
    try:
        state: dict[str, Any] = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as error:  # pragma: no cover - only reachable with a forged digest
        raise CheckpointError(f"{source} holds a payload that cannot be read: {error}") from error
    return state
