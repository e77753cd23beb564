# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates the virtual environment from this project's own files when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.actgen-installed

.PHONY: demo test test-fast browser bench-trainer clean-demo

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

# Debian's Chromium and ChromeDriver, which tests/test_data_browse.py drives (as root, or with sudo).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then echo "chromium: $$(chromium --version)"; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -qq && \
	     DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; fi

bench-trainer: $(STAMP)
	$(BIN)/python benchmarks/bench_trainer.py

clean-demo:
	rm -rf runs/demo
