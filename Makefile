# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates the virtual environment from this project's own files when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.actgen-installed

.PHONY: demo test test-fast bench-trainer clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/actgen-demo --config configs/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench-trainer: $(STAMP)
	$(BIN)/python benchmarks/bench_trainer.py

clean-demo:
	rm -rf runs/demo
