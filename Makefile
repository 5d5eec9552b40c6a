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

.PHONY: help venv e2e-deps test lint typecheck pytest chaos demo demo-worker bench bench-peers clean distclean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

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

e2e-deps: ## the browser tests' system packages: Debian's chromium and chromium-driver (as root)
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "chromium and chromedriver: present"; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "apt-get install chromium chromium-driver"; \
		apt-get update -qq </dev/null; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			chromium chromium-driver </dev/null; \
	else \
		echo "browser tests skipped: sudo apt-get install chromium chromium-driver" >&2; \
	fi

pytest: venv e2e-deps ## the test suite only
	$(BIN)/pytest -q

test: venv e2e-deps ## lint, type-check, then the test suite; fails on the first that fails
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/pytest -q

CHAOS_SECONDS ?= 300
CHAOS_SEED ?=

chaos: venv ## workers SIGKILLed/stopped/restarted on SQLite, Redis, PostgreSQL; every promise checked (CHAOS_SECONDS=300 each, CHAOS_SEED=)
	$(BIN)/python -m tests.chaos --seconds $(CHAOS_SECONDS) $(if $(CHAOS_SEED),--seed $(CHAOS_SEED))

demo: venv ## the FastAPI demo on SQLite: app + dashboard served, driven for you; exits by itself
	$(BIN)/python examples/fastapi_demo.py

demo-worker: venv ## jobs of every kind on an embedded SQLite file, run by an in-process worker
	$(BIN)/python examples/demo.py

bench: venv ## SQLite, Redis and PostgreSQL throughput and latency; saves benchmarks/results/<time>.json
	$(BIN)/python benchmarks/run.py

BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): benchmarks/peers/requirements.txt pyproject.toml
	@if [ ! -x $(BENCH_VENV)/bin/python ]; then $(PYTHON) -m venv $(BENCH_VENV); fi
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --prefer-binary \
		-r benchmarks/peers/requirements.txt -e '.[redis]'
	@touch $@

bench-peers: $(BENCH_STAMP) ## conveyor vs ARQ, SAQ, Taskiq, streaq, Dramatiq, RQ, Celery on one local Redis
	$(BENCH_VENV)/bin/python -m benchmarks.peers.compare

clean: ## remove caches and build output (keeps .venv)
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache src/*.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
	rm -rf conveyor.db conveyor.db-wal conveyor.db-shm conveyor.db-wake

distclean: clean ## clean, and remove .venv too
	rm -rf $(VENV)
