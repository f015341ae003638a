"""Benchmarks as a library: ``taskbalance bench NAME`` and :func:`run_benchmark`.

* :mod:`.suite`: the data benchmarks (``multimnist``, ``census``, ``yeast``, ``text``) as run
  configs plus the entries they compare;
* :mod:`.runner`: single-task baselines, entries x seeds, results tables (Delta-m, mean rank,
  step-time ratio), plots;
* :mod:`.toy`: the two-objective toy problem of the CAGrad / Nash-MTL / FAMO papers;
* :mod:`.main_job`: several benchmarks into one HTML report (the README's main job).
"""

from taskbalance.bench.runner import run_benchmark
from taskbalance.bench.suite import BENCHMARKS, BenchmarkSpec, Entry

__all__ = ["BENCHMARKS", "BenchmarkSpec", "Entry", "run_benchmark"]
