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

.PHONY: run serve worker test test-slow test-all lint format bench bench-tools clean bench-web bench-snapshot

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

# The suites run in parallel (pytest-xdist): each worker process has databases, ports and
# folders of its own. Much of the fast suite waits (on `broadside` processes starting, relays,
# retries, clocks), so a third worker on two cores fills that time: 12-13 min in one process,
# about 5 in three. The slow suite's fault and load tests run two at a time, and the one that
# restarts PostgreSQL alone (marker `exclusive`). TEST_WORKERS=0 runs a suite in one process.
TEST_WORKERS ?= 3
SLOW_TEST_WORKERS ?= 2

test: $(DEV)
	$(BIN)/ruff check service tests bench migrations
	$(BIN)/ruff format --check service tests bench migrations
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist worksteal --durations=10

test-slow: $(DEV)
	$(BIN)/python -m pytest -m slow -n $(SLOW_TEST_WORKERS) --dist worksteal --durations=10

test-all: test test-slow

# The send-path benchmark (docs/BENCHMARKS.md): N = 100,000 on SQLite and PostgreSQL, under
# 15 minutes. Options through BENCH_ARGS, e.g. make bench BENCH_ARGS="--million --json out.json".
bench: $(DEV) bench-tools
	$(BIN)/python -m bench.send $(BENCH_ARGS)

# Postfix's smtp-sink and smtp-source (Debian's postfix package), installed when missing; when
# that fails the bench falls back to bench/sink.py (aiosmtpd) and says so. And wrk, for the
# POST /subscribe goal (without it that goal shows "not measured").
bench-tools:
	@test -x /usr/sbin/smtp-sink || command -v smtp-sink >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix; } || \
		echo "warning: could not install postfix (smtp-sink); the bench falls back to bench/sink.py" >&2
	@command -v wrk >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; } || \
		echo "warning: could not install wrk; POST /subscribe is not measured" >&2

# The snapshot alone (goals G4 and G8) at N = 1,000,000 over 400 time zones, both databases,
# without the hour a whole --million run takes. Options through BENCH_ARGS (--readers N).
bench-snapshot: $(DEV)
	$(BIN)/python -m bench.snapshot $(BENCH_ARGS)

bench-web: $(DEV)
	@command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q wrk; }
	$(BIN)/python -m bench.web

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache
