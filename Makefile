# Everyday entry points: make run, make test, make test-slow, make lint, make bench.
# Each one creates .venv and installs what it needs on a fresh machine (Python 3.11+ and make).

# The first interpreter on PATH that really runs and is 3.11 or newer (pyenv shims for
# versions that are not selected exist but fail, so each candidate is tried).
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && command -v $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed

.PHONY: run serve worker test test-slow test-all lint format bench clean

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "Broadside needs Python 3.11 or newer on PATH (or PYTHON=/path/to/python3.11)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@ $(RUNTIME)

run: $(RUNTIME)
	$(BIN)/broadside db upgrade
	$(BIN)/broadside serve

worker: $(RUNTIME)
	$(BIN)/broadside db upgrade
	$(BIN)/broadside worker

lint: $(DEV)
	$(BIN)/ruff check service tests bench migrations
	$(BIN)/ruff format --check service tests bench migrations
	$(BIN)/mypy service

format: $(DEV)
	$(BIN)/ruff format service tests bench migrations
	$(BIN)/ruff check --fix service tests bench migrations

test: $(DEV)
	$(BIN)/ruff check service tests bench migrations
	$(BIN)/ruff format --check service tests bench migrations
	$(BIN)/python -m pytest -m "not slow"

test-slow: $(DEV)
	$(BIN)/python -m pytest -m slow

test-all: test test-slow

bench: $(DEV)
	$(BIN)/python -m bench.send

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache
