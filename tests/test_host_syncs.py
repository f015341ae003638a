"""Host synchronisations per balancing step do not grow (benchmarks/host_syncs.py).

Each ``aten._local_scalar_dense`` / ``aten.is_nonzero`` call during ``Balancer.backward`` is a
point where a GPU step would wait for the device. The committed counts
(``benchmarks/results/host_syncs.json``, shown on the Performance page) are an upper bound:
a change that adds a sync to a method's step fails here; one that removes syncs should
re-run the script and commit the lower counts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import host_syncs  # noqa: E402

sys.path.remove(str(ROOT / "benchmarks"))
COMMITTED = json.loads((ROOT / "benchmarks" / "results" / "host_syncs.json").read_text())["rows"]


@pytest.mark.parametrize("row", COMMITTED, ids=lambda row: f"{row['method']}-{row['level']}")
def test_host_syncs_do_not_grow(row: dict[str, object]) -> None:
    for key, committed in row.items():
        if key.startswith("T="):
            counted = host_syncs.count(str(row["method"]), int(key[2:]), str(row["level"]))
            assert counted <= int(committed), (  # type: ignore[call-overload]
                f"{row['method']} at {row['level']} level, {key}: {counted} host syncs per "
                f"step, {committed} committed"
            )


def test_the_counter_sees_a_sync() -> None:
    import torch

    with host_syncs.SyncCounter() as counter:
        float(torch.ones(2).sum())
        bool(torch.ones(1) > 0)
    assert counter.count == 2


def test_loss_weighting_needs_no_solver_syncs() -> None:
    counts = {row["method"]: row["T=10"] for row in COMMITTED if row["level"] == "parameters"}
    assert counts["ew"] <= 3
    assert counts["famo"] == counts["ew"]
