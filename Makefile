# Common Operations — every target sets up .venv first, so a fresh clone needs only Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: help install run test test-coverage lint format migrate-up proto docker-build compose-config bench clean

help:
	@echo "make run            start the whole service on the embedded stack (REST :8000, gRPC :9000, Temporal UI :8233)"
	@echo "make test           install and run the whole test suite (real Postgres, Temporal)"
	@echo "make lint           ruff + mypy --strict"
	@echo "make migrate-up     apply migrations to DATABASE_URL"
	@echo "make proto          regenerate gRPC stubs from protos/"
	@echo "make test-coverage  tests with a coverage report"
	@echo "make docker-build   build the image used by docker-compose"
	@echo "make bench          run the benchmarks (see bench/README.md)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@# Bytecode up front: with PYTHONDONTWRITEBYTECODE set, the workflow sandbox would otherwise
	@# recompile the workflow module for every workflow run (bench/README.md).
	$(BIN)/python -m compileall -q common_operations
	@touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/common-operations run

test: $(STAMP)
	$(BIN)/pytest

test-coverage: $(STAMP)
	$(BIN)/pytest --cov --cov-report=term-missing --cov-report=html

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

migrate-up: $(STAMP)
	$(BIN)/common-operations migrate

proto: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" PYTHON=$(BIN)/python scripts/gen_protos.sh

docker-build:
	docker build -t common-operations:latest .

compose-config:
	docker compose -f docker-compose.yml config -q

bench: $(STAMP)
	$(BIN)/python -m bench.lifecycle
	$(BIN)/python -m bench.api

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache htmlcov .coverage
