# The two commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo
# The demo's numbers depend on the number of CPU threads (the summation order of the convolution
# kernels changes with it), not on the machine's load (benchmarks/RESULTS.md, "Reproducible
# numbers"): pinned, so that every machine computes the numbers of docs/how-to/report.md.
DEMO_THREADS ?= 2
# Tests run in TEST_WORKERS processes (pytest-xdist, one module per worker at a time so module
# fixtures are made once; the session fixtures are shared through tests/conftest.py), each with
# one intra-op thread: on this 2-core machine the suite's wall time is ~0.6x that of one process.
TEST_WORKERS ?= 2

.PHONY: demo test docs venv clean

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

# The documentation site (mkdocs.yml, docs/) is built first, strictly: a broken link or reference, or any
# other warning, fails `make test` (about 3 s).
test: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

demo: $(STAMP)
	OMP_NUM_THREADS=$(DEMO_THREADS) MKL_NUM_THREADS=$(DEMO_THREADS) OPENBLAS_NUM_THREADS=$(DEMO_THREADS) \
		$(VENV)/bin/metricattack benchmark --config configs/quickstart.yaml --out $(DEMO_OUT)

clean:
	rm -rf runs build dist src/*.egg-info .pytest_cache
