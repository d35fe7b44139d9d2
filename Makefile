# The two commands: `make demo` (install + run the whole pipeline) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
SPARKZOO := $(VENV)/bin/sparkzoo
CONF ?= conf/fashion_mnist_cnn.yaml
PYTEST_ARGS ?=

.PHONY: setup demo test ui run prepare train score baseline zoo-vision zoo-sequence clean

setup:
	bash scripts/setup.sh

demo: setup
	$(SPARKZOO) run --conf $(CONF)

test: setup
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS) tests

ui:
	$(SPARKZOO) ui --conf $(CONF)

# Every vision family to its full bar (about an hour on 2 CPU cores); rewrites docs/MODEL_ZOO.md.
zoo-vision: setup
	$(SPARKZOO) zoo --family vision

# Every sequence family to its bar (text classifiers, seq2seq, CTC, captioning); appends to docs/MODEL_ZOO.md.
zoo-sequence: setup
	$(SPARKZOO) zoo --family sequence

prepare train score run baseline:
	$(SPARKZOO) $@ --conf $(CONF)

clean:
	rm -rf workspace spark-warehouse metastore_db derby.log
