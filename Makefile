# The two commands a new user types: `make run` and `make test`. Both set up .venv from the pinned locks.
SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	if $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then echo $$p; break; fi; done)
VENV := .venv
BIN := $(VENV)/bin
CATALOG ?= examples/quickstart/amber.yaml
export AMBER_DEMO_PG_URL ?= postgresql://postgres@127.0.0.1:5432/amber_demo
GATEWAY_PORT ?= 6432

.PHONY: run test lint fmt bench install dev clean services

$(BIN)/activate:
	@test -n "$(PYTHON)" || { echo "amber needs Python 3.11 or newer on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"

$(VENV)/.installed: $(BIN)/activate requirements.lock pyproject.toml
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.lock
	$(BIN)/pip install -q -r requirements-dev.lock
	@touch $@

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

run: install
	@$(BIN)/amber demo setup || echo "amber: the demo database could not be prepared (is PostgreSQL on 127.0.0.1:5432?); starting anyway"
	AMBER_CATALOG=$(CATALOG) AMBER_GATEWAY_PORT=$(GATEWAY_PORT) $(BIN)/amber serve

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
