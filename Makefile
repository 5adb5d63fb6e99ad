# make train   - set up .venv if missing, get MNIST, train the default model (ARGS=... adds overrides)
# make test    - set up .venv if missing, run the test suite
# make sweep   - WORKERS asynchronous Optuna sweep workers (ARGS=... adds overrides)
# make bench, make bench-sweeps, make bench-search [QUICK=1] - the benchmarks in benchmarks/
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install train test

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

train: $(INSTALLED)
	$(PY) -m mlp_sweep.train $(ARGS)

test: $(INSTALLED)
	$(PY) -m pytest -q $(PYTEST_ARGS)

.PHONY: sweep
WORKERS ?= 2
sweep: $(INSTALLED)
	$(PY) -m mlp_sweep.workers $(WORKERS) $(ARGS)

.PHONY: bench bench-sweeps bench-search
bench: $(INSTALLED)          ## mlp_sweep against the course's DataLoader pipeline (about 2 minutes)
	$(PY) benchmarks/bench.py

bench-sweeps: $(INSTALLED)   ## pruning and parallel-trial gains of the Optuna sweep (about 6 minutes)
	$(PY) benchmarks/sweep_gains.py

bench-search: $(INSTALLED)   ## what the search presets find in 5-30 minutes, refits included (about 75 minutes; QUICK=1: 13)
	$(PY) benchmarks/search.py $(if $(QUICK),--quick)
