# conveyor: the commands a newcomer needs. `make demo` shows it working, `make test` checks it.
#
# Every target that runs Python depends on `venv`, which builds .venv once and again only when
# pyproject.toml changes (a stamp file records the last install).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINT_PATHS := src tests benchmarks examples

.PHONY: help venv test lint typecheck pytest demo demo-web bench clean distclean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

venv: $(STAMP) ## create .venv and install conveyor with its dev tools (once)
	@:

$(STAMP): pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
		echo "creating $(VENV) with $$($(PYTHON) --version)"; \
		$(PYTHON) -m venv $(VENV); \
	fi
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

lint: venv ## ruff over the code, tests, benchmarks and examples
	$(BIN)/ruff check $(LINT_PATHS)

typecheck: venv ## mypy --strict over src/conveyor (config in pyproject.toml)
	$(BIN)/mypy

pytest: venv ## the test suite only
	$(BIN)/pytest -q

test: venv ## lint, type-check, then the test suite; fails on the first that fails
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/pytest -q

demo: venv ## a live demo: jobs on an embedded SQLite file, run by an in-process worker
	$(BIN)/python examples/demo.py

demo-web: venv ## the FastAPI demo: the welcome-email app served with its dashboard, driven for you
	$(BIN)/python examples/fastapi_demo.py

bench: venv ## SQLite throughput and latency; saves benchmarks/results/<time>.json
	$(BIN)/python benchmarks/run.py

clean: ## remove caches and build output (keeps .venv)
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache src/*.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
	rm -f conveyor.db conveyor.db-wal conveyor.db-shm

distclean: clean ## clean, and remove .venv too
	rm -rf $(VENV)
