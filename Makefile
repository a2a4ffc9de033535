# Two commands matter: `make demo` and `make test`. Both install what they
# need into .venv first (idempotent: re-installs only when pyproject changes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SEMANTIC := $(VENV)/.semantic

.PHONY: install system-deps demo test lint unit schema bench soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The semantic comparator's extra, for the tests: torch's CPU build first
# (pinned, so pip never reaches for the CUDA one), then the model.
$(SEMANTIC): $(STAMP)
	$(BIN)/python -m pip install --quiet 'torch==2.13.0'
	$(BIN)/python -m pip install --quiet -e '.[dev,semantic]'
	touch $(SEMANTIC)

# Debian packages the tests and benchmarks need (promtool, nginx + echo, wrk); idempotent.
system-deps:
	bash scripts/system-deps.sh

demo: install
	$(BIN)/shadow-proxy demo $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit -m "not e2e"

test: lint system-deps $(SEMANTIC)
	$(BIN)/pytest

# shadow-proxy, Envoy and nginx side by side; writes docs/benchmarks.md and
# bench/results/latest.json. Options: make bench ARGS="--duration 10 --repeat 5"
bench: install system-deps
	$(BIN)/python -m bench $(ARGS)

# Mixed traffic through the proxy while the agent fails at random (10 min by
# default); checks client errors, the proxy's counters and RSS growth.
# Options: make soak ARGS="--duration 120 --rate 200"
soak: install
	$(BIN)/python -m bench.soak $(ARGS)

schema: install
	$(BIN)/shadow-proxy schema > config/schema.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
