# make train   - set up .venv if missing (the runtime only: no tracker, storage driver or S3 client),
#                get MNIST, train the default model (ARGS=... adds overrides)
# make test    - set up .venv if missing, add what the tests need, run every test
# make test-fast - the tests not marked slow: no network, small data (the loop after an edit)
# make sweep   - WORKERS asynchronous Optuna sweep workers (ARGS=... adds overrides)
# make bench, make bench-sweeps, make bench-search [QUICK=1], make bench-peers [QUICK=1]
#              [WHOLE=1 REGIME=full|small RESUME=1 MINUTES=60],
#              make bench-warm-start, make bench-precision, make bench-fused, make bench-checkpoints,
#              make bench-workers -
#              the benchmarks in benchmarks/ (bench-peers and the tests
#              also install the bench extra)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.installed-test

.PHONY: install train test test-fast

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

# The trackers, storage drivers, S3 and the peers the tests run (the test and bench extras)
$(TEST_INSTALLED): $(INSTALLED)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $@

train: $(INSTALLED)
	$(PY) -m mlp_sweep.train $(ARGS)

# Two test processes, one per core of a laptop or a CI runner, given the tests in the order
# tests/conftest.py sorts them (the longest first).
TEST_PROCESSES ?= 2

test: $(TEST_INSTALLED)
	$(PY) -m pytest -q -n $(TEST_PROCESSES) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: $(TEST_INSTALLED)
	$(PY) -m pytest -q -n $(TEST_PROCESSES) --dist loadgroup --no-loadscope-reorder -m "not slow" $(PYTEST_ARGS)

.PHONY: sweep
WORKERS ?= 2
sweep: $(INSTALLED)
	$(PY) -m mlp_sweep.workers $(WORKERS) $(ARGS)

.PHONY: bench bench-sweeps bench-search bench-peers bench-warm-start bench-precision bench-fused bench-workers \
        bench-checkpoints
bench: $(INSTALLED)          ## mlp_sweep against the course's DataLoader pipeline (about 2 minutes)
	$(PY) benchmarks/bench.py

bench-sweeps: $(INSTALLED)   ## pruning and parallel-trial gains of the Optuna sweep (about 6 minutes)
	$(PY) benchmarks/sweep_gains.py

bench-search: $(INSTALLED)   ## what the search presets find in 5-30 minutes, 3 seeds, refits included (about 2.5 hours; QUICK=1: 25)
	$(PY) benchmarks/search.py $(if $(QUICK),--quick)

bench-precision: $(INSTALLED) ## trainer.precision=bf16 against fp32: epoch times and refit accuracy, 3 seeds (about 30 minutes)
	$(PY) benchmarks/precision.py

bench-workers: $(INSTALLED)  ## one process with every core against one one-thread worker per core, per kind of trial (about 10 minutes)
	$(PY) benchmarks/workers.py

bench-fused: $(INSTALLED)    ## the training loop for one model against a bare loop, K stacked against K alone, 8 trials fused against alone (about 12 minutes)
	$(PY) benchmarks/fused.py

bench-checkpoints: $(INSTALLED) ## a checkpoint after every epoch: its cost per epoch, and a real kill with and without (about 18 minutes)
	$(PY) benchmarks/checkpoints.py

bench-warm-start: $(INSTALLED) ## a 5-minute search cold and warm-started from an earlier one, 2 seeds (about 27 minutes)
	$(PY) benchmarks/warm_start.py

bench-peers: $(TEST_INSTALLED) ## the default search against Ray Tune, SMAC3, the stock sweeper, random (about 2 hours; QUICK=1: about 20)
	$(PY) benchmarks/peers.py $(if $(QUICK),--quick) $(if $(WHOLE),--whole-machine --regime $(or $(REGIME),full)) \
	    $(if $(RESUME),--resume) $(if $(MINUTES),--max-minutes $(MINUTES))
# WHOLE=1 [REGIME=full|small]: each method on every core, one search at a time (full: 30 searches,
# about 5.5 hours; small: 15, about 2.7); in parts: MINUTES=60 starts nothing that cannot end
# within 60 minutes, RESUME=1 keeps what the results file holds
