# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates the virtual environment from this project's own files when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.actgen-installed
TEST_STAMP := $(VENV)/.actgen-test-installed

.PHONY: demo test test-all test-fast system-deps browser bench-trainer clean-demo

# What the tests need from the system besides Python: Chromium and ChromeDriver (the gallery's
# browser test) and curl (the HTTP streaming tests). Installed with apt-get when we are root or
# may sudo without a password; otherwise make stops at once with the command to run.
SYSTEM_COMMANDS := chromium chromedriver curl
SYSTEM_PACKAGES := chromium chromium-driver curl

# The demo needs the base install only; the tests add the test extras (pytest, moto, s3fs, peft...).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(TEST_STAMP)

demo: $(STAMP)          # needs nothing from the system beyond Python
	$(BIN)/actgen-demo --config demo

test: system-deps $(TEST_STAMP)        # everything but the full-size architecture builds
	$(BIN)/python -m pytest -q -m "not arch"

# The arch tests (one thread each, no Ray, no clocks) run beside the rest in a second pytest
# process: on two cores they take the core the rest mostly leaves idle. Both must pass.
ARCH_LOG := $(VENV)/arch-tests.log
test-all: system-deps $(TEST_STAMP)    # everything (what CI runs)
	@$(BIN)/python -m pytest -q -p no:cacheprovider -m arch --durations=5 > $(ARCH_LOG) 2>&1 & arch=$$!; \
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not arch" --durations=25; rest=$$?; \
	wait $$arch; archrc=$$?; echo "--- the arch tests (second process):"; cat $(ARCH_LOG); \
	test $$rest -eq 0 && test $$archrc -eq 0

test-fast: system-deps $(TEST_STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

system-deps:
	@missing=""; for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make: the tests need$$missing; install them with your package manager (Debian/Ubuntu: apt-get install $(SYSTEM_PACKAGES))" >&2; exit 1; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; else \
	  echo "make: the tests need$$missing; install them with: sudo apt-get update && sudo apt-get install -y $(SYSTEM_PACKAGES)" >&2; exit 1; fi; \
	echo "make: installing$$missing (apt-get: $(SYSTEM_PACKAGES))"; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSTEM_PACKAGES)

browser: system-deps     # the old name of the step above

bench-trainer: $(STAMP)
	$(BIN)/python benchmarks/bench_trainer.py

clean-demo:
	rm -rf runs/demo
