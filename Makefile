# The two commands a new user types: `make run` and `make test`. Both set up .venv from the pinned locks.
SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	if $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then echo $$p; break; fi; done)
VENV := .venv
BIN := $(VENV)/bin
CATALOG ?= examples/quickstart/amber.yaml
export AMBER_DEMO_PG_URL ?= postgresql://postgres@127.0.0.1:5432/amber_demo
GATEWAY_PORT ?= 6432

.PHONY: run test lint fmt bench install dev clean services locks

$(BIN)/activate:
	@test -n "$(PYTHON)" || { echo "amber needs Python 3.11 or newer on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"

$(VENV)/.installed: $(BIN)/activate requirements.lock pyproject.toml
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.lock
	$(BIN)/pip install -q --require-hashes -r requirements-dev.lock
	@touch $@

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

run: install
	@$(BIN)/amber demo setup || echo "amber: the demo database could not be prepared (is PostgreSQL on 127.0.0.1:5432?); starting anyway"
	AMBER_ENV=development AMBER_CATALOG=$(CATALOG) AMBER_GATEWAY_PORT=$(GATEWAY_PORT) $(BIN)/amber serve

services:
	bash scripts/services.sh

test: dev services
	$(BIN)/pytest

lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_invariants.py
	$(BIN)/python scripts/check_locks.py

fmt: dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install services
	$(BIN)/python bench/time_to_access.py
	$(BIN)/python bench/revocation.py
	$(BIN)/python bench/policy_decide.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/gateway_abuse.py
	$(BIN)/python bench/ledger.py

clean:
	rm -rf $(VENV) .amber build src/*.egg-info

# Regenerate both lock files (exact pins with hashes) from pyproject.toml with pip-tools, in a venv of its own.
# Existing pins are kept unless you pass UPGRADE=--upgrade (or --upgrade-package NAME).
PIP_COMPILE_FLAGS := -q --generate-hashes --allow-unsafe --strip-extras --no-emit-find-links --no-emit-index-url --all-build-deps
locks:
	test -x .venv-tools/bin/pip-compile || { $(PYTHON) -m venv .venv-tools && .venv-tools/bin/pip install -q "pip-tools==7.6.2"; }
	.venv-tools/bin/pip-compile $(PIP_COMPILE_FLAGS) $(UPGRADE) -o requirements.lock pyproject.toml
	.venv-tools/bin/pip-compile $(PIP_COMPILE_FLAGS) $(UPGRADE) --extra dev -c requirements.lock -o requirements-dev.lock pyproject.toml
