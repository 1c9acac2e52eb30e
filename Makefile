# Everything a person does with the studio. `make run` and `make test` set up .venv/ on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
CHROMIUM ?= /usr/bin/chromium

.PHONY: install run api worker migrate test test-slow test-all test-fast lint format typecheck bench browser-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: 2.13.0 is the local CPU wheel here; any other version pulls GBs of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[worker,dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

run: install  ## the studio on the embedded default (SQLite, no other service)
	$(BIN)/studio up

api: install
	$(BIN)/studio api

worker: install
	$(BIN)/studio worker

migrate: install
	$(BIN)/studio migrate

browser-deps:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "Chromium missing: sudo apt-get install chromium (browser tests will be skipped)"; fi; }

test: install browser-deps  ## the default suite (excludes `slow`)
	$(BIN)/pytest -m "not slow and not gpu and not bench"

test-slow: install  ## the slow tests: faults injected for real (tests/reliability), SmolLM2, data parallel
	$(BIN)/pytest -m "slow and not gpu and not bench"

test-all: install browser-deps
	$(BIN)/pytest -m "not bench"

test-fast: install
	$(BIN)/pytest -m "not slow and not gpu and not browser and not bench" tests/api tests/workers tests/test_architecture.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install
	$(BIN)/mypy

bench: install
	$(BIN)/pytest tests/bench -m bench -s -q

clean:
	rm -rf $(VENV) test-output .pytest_cache .ruff_cache .mypy_cache
