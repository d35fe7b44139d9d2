# The two commands: `make demo` (install + run the whole pipeline) and `make test`.
# `make test-fast`: the unit, contract and config tests only (no Spark, no Horovod, no training; < 3 minutes).
VENV ?= .venv
PY := $(VENV)/bin/python
SPARKZOO := $(VENV)/bin/sparkzoo
CONF ?= conf/fashion_mnist_cnn.yaml
PYTEST_ARGS ?=
# pytest-xdist workers; each takes whole test modules (a module's fixtures are built once, in one worker).
# --no-loadscope-reorder: modules go out in the order tests/conftest.py sorts them (longest first), not by
# their number of tests (xdist's default put the slowest module, with 3 tests, last).
# 2 keeps a 2-core machine busy (the tests wait on JVMs, servers and subprocesses); 0 runs in one process.
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
README_NOTE ?=

.PHONY: setup demo readme-figures test test-fast ui run prepare train score baseline zoo-vision zoo-sequence clean

setup:
	bash scripts/setup.sh

demo: setup
	$(SPARKZOO) run -c $(CONF)

# Maintainers: a real `make demo`, then its summary and timings into README.md (scripts/readme_figures.py).
# README_NOTE="..." adds a word on the conditions (a machine busy with other work, say).
readme-figures: demo
	$(PY) scripts/readme_figures.py --note "$(README_NOTE)"

test: setup
	$(PY) -m pytest -m "not gpu" $(XDIST) $(PYTEST_ARGS) tests

# What is slow: tests/conftest.py (heavy fixtures, SLOW_MODULES, @pytest.mark.slow); docs/DEVELOPMENT.md.
test-fast: setup
	$(PY) -m pytest -m "not slow and not gpu" $(XDIST) $(PYTEST_ARGS) tests

ui:
	$(SPARKZOO) ui -c $(CONF)

# Maintainers: every vision family to its full bar (about an hour on 2 CPU cores); rewrites docs/MODEL_ZOO.md.
zoo-vision: setup
	$(PY) scripts/zoo.py --family vision

# Maintainers: every sequence family to its bar (text classifiers, seq2seq, CTC, captioning); docs/MODEL_ZOO.md.
zoo-sequence: setup
	$(PY) scripts/zoo.py --family sequence

prepare train score run baseline:
	$(SPARKZOO) $@ -c $(CONF)

clean:
	rm -rf workspace spark-warehouse metastore_db derby.log
