# Two commands do all set-up on a fresh machine with Python 3.11+ and make:
#   make demo   create .venv if missing, install, run the demo on a shipped dataset
#   make test   same install, full test suite (notebooks included)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.derivreg-installed
EXTRAS ?= dev,plot,cli,dask
PYTEST_ARGS ?=

.PHONY: install demo test test-slow lint bench clean

$(PY):
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "derivreg needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m derivreg demo

# One BLAS thread per test process: the suite is Monte-Carlo heavy on small matrices, where
# threaded BLAS on 2 cores is slower, not faster.
TEST_ENV := MPLBACKEND=Agg OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

# pytest exits 5 when it collects no test: make treats any non-zero exit as failure.
test: install
	$(PY) -m ruff check derivreg tests benchmarks
	$(TEST_ENV) $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(TEST_ENV) $(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check derivreg tests benchmarks

bench: install
	$(PY) benchmarks/run_all.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info
