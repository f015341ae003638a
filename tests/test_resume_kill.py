"""Resume the way it fails in the field: SIGKILL a training process at random moments (and
right after a checkpoint), start it again from ``last.pt`` until it finishes, and compare the
final parameters and the step log with an uninterrupted run, bit for bit."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from taskbalance.train import load_checkpoint

WORKER = Path(__file__).with_name("resume_worker.py")


def start(run_dir: Path, kind: str, kill_after_save: str = "0") -> subprocess.Popen[str]:
    env = {**os.environ, "KILL_AFTER_SAVE": kill_after_save}
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(run_dir), kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(process: subprocess.Popen[str]) -> int:
    _, err = process.communicate(timeout=120)
    if process.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"worker failed (rc {process.returncode}):\n{err}")
    return process.returncode


def uninterrupted(run_dir: Path, kind: str) -> float:
    """Run to the end; returns how long training took, imports and exit left out (s)."""
    process = start(run_dir, kind)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "training"
    begin = time.perf_counter()
    assert process.stdout.readline().strip() == "done"
    duration = time.perf_counter() - begin
    assert finish(process) == 0
    return duration


def interrupted(run_dir: Path, kind: str, plan: list[str], seed: int, duration: float) -> int:
    """Run the plan of kills ("save:N" = right after the N-th checkpoint of that process,
    "save:epoch" = right after its first epoch-end checkpoint,
    "random" = at a random moment, spread over the ``duration`` of training), then run to
    the end; returns how many processes were killed."""
    rng = random.Random(seed)
    kills = 0
    for action in plan:
        if action.startswith("save:"):
            process = start(run_dir, kind, kill_after_save=action[5:])
        else:
            process = start(run_dir, kind)
            assert process.stdout is not None
            process.stdout.readline()  # "training": imports done, the first step is next
            time.sleep(rng.uniform(0.0, duration / len(plan)))  # spread over the run
            process.send_signal(signal.SIGKILL)
        kills += finish(process) == -signal.SIGKILL
        if (run_dir / "final.pt").exists():
            return kills  # finished before the kill
    assert finish(start(run_dir, kind)) == 0
    return kills


def assert_same_run(reference: Path, resumed: Path) -> None:
    expected = load_checkpoint(reference / "final.pt")["parameters"]
    got = load_checkpoint(resumed / "final.pt")["parameters"]
    assert len(expected) == len(got)
    for p, q in zip(expected, got, strict=True):
        assert torch.equal(p, q)
    # each step logged once, with the same values: no rows of rolled-back steps
    assert (resumed / "steps.csv").read_text() == (reference / "steps.csv").read_text()
    assert (resumed / "epochs.csv").read_text() == (reference / "epochs.csv").read_text()
    assert not list(resumed.glob(".*.tmp"))  # temporaries of killed saves were removed


@pytest.mark.parametrize("kind", ["global", "generator", "sampler"])
def test_sigkill_at_random_moments_and_after_checkpoints_resumes_bit_identically(
    kind: str, tmp_path: Path
) -> None:
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    duration = uninterrupted(reference, kind)
    # right after a step checkpoint, right after an epoch-end checkpoint, at random moments
    plan = ["save:1", "random", "save:epoch", "random"]
    kills = interrupted(resumed, kind, plan, seed=len(kind), duration=duration)
    assert kills >= 3
    assert_same_run(reference, resumed)


@pytest.mark.slow
def test_many_random_kills_resume_bit_identically(tmp_path: Path) -> None:
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    duration = uninterrupted(reference, "generator")
    plan = ["random"] * 12 + ["save:1", "save:epoch", "save:2"] + ["random"] * 12
    kills = interrupted(resumed, "generator", plan, seed=27, duration=duration)
    assert kills >= 20
    assert_same_run(reference, resumed)
