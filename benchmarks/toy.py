"""The two-objective toy benchmark (see :mod:`taskbalance.bench.toy`); same as
``taskbalance bench toy``. Writes ``benchmarks/results/toy/``."""

from taskbalance.bench.toy import main

if __name__ == "__main__":
    raise SystemExit(main())
