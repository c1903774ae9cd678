# Common Operations — every target sets up .venv first, so a fresh clone needs only Python 3.11+.
# The venv is made with the newest of python3.13, python3.12, python3.11 (then python3, if new enough)
# that runs here, or with the one named by PYTHON= (a command or a path); naming another version
# than the venv's remakes it.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYVER  := -c 'import sys; print("%d.%d" % sys.version_info[:2])'

# The first of $(1) that runs a Python >= 3.11, as a path. pyenv keeps a shim for every version it
# has installed, but a shim only runs the versions selected; when $(2) is set, such a version is
# taken from pyenv's own directory (asking for python3.13 by name is selecting it).
define find_python
for c in $(1); do \
  p=$$(command -v "$$c" 2>/dev/null) || continue; \
  if ! "$$p" -c '' 2>/dev/null; then \
    p=; v=$${c##*python}; \
    if [ -n "$(2)" ] && [ -n "$$v" ] && command -v pyenv >/dev/null; then \
      p=$$(ls -d "$$(pyenv root)"/versions/$$v*/bin/python$$v 2>/dev/null | sort -V | tail -n 1); \
    fi; \
  fi; \
  if [ -n "$$p" ] && "$$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
    echo "$$p"; break; \
  fi; \
done
endef

# Evaluated once, when first needed.
ifdef PYTHON
PY = $(eval PY := $(shell $(call find_python,$(PYTHON),fallback)))$(PY)
# Asked for another Python than the venv's: make the venv again (see the $(STAMP) recipe).
ifneq ($(shell $(BIN)/python $(PYVER) 2>/dev/null),$(if $(PY),$(shell $(PY) $(PYVER) 2>/dev/null)))
.PHONY: $(STAMP)
endif
NO_PYTHON := PYTHON=$(PYTHON) is not a Python 3.11 or newer that runs here
else
PY = $(eval PY := $(shell $(call find_python,python3.13 python3.12 python3.11 python3,)))$(PY)
NO_PYTHON := no Python 3.11 or newer found; install one, or name it with PYTHON=...
endif

.PHONY: help install which-python run test test-coverage lint format migrate-up proto docker-build compose-config bench clean

help:
	@echo "make run            start the whole service on the embedded stack (REST :8000, gRPC :9000, Temporal UI :8233)"
	@echo "                    Ctrl-C or SIGTERM stops all of it; PYTHON=python3.12 picks the interpreter"
	@echo "make test           install and run the whole test suite (real Postgres, Temporal)"
	@echo "make lint           ruff + mypy --strict"
	@echo "make migrate-up     apply migrations to DATABASE_URL"
	@echo "make proto          regenerate gRPC stubs from protos/"
	@echo "make test-coverage  tests with a coverage report"
	@echo "make docker-build   build the image used by docker-compose"
	@echo "make bench          run the benchmarks (see bench/README.md)"
	@echo "make histories      record workflow histories for the replay tests (TAG=2026-12-01: a new set)"
	@echo "make which-python   the interpreter a new venv would be made with"

$(STAMP): pyproject.toml
	@[ -n "$(PY)" ] || { echo "$(NO_PYTHON)" >&2; exit 1; }
	@have=$$($(BIN)/python $(PYVER) 2>/dev/null); want=$$($(PY) $(PYVER)); \
	if [ -z "$$have" ] || { [ -n "$(PYTHON)" ] && [ "$$have" != "$$want" ]; }; then \
	  echo "making $(VENV) with Python $$want ($(PY))"; $(PY) -m venv --clear $(VENV); \
	fi
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@# Bytecode up front: with PYTHONDONTWRITEBYTECODE set, the workflow sandbox would otherwise
	@# recompile the workflow module for every workflow run (bench/README.md).
	$(BIN)/python -m compileall -q common_operations
	@touch $@

install: $(STAMP)

which-python:
	@[ -n "$(PY)" ] || { echo "$(NO_PYTHON)" >&2; exit 1; }
	@echo "$(PY) (Python $$($(PY) $(PYVER)))"

run: $(STAMP)
	$(BIN)/common-operations run

test: $(STAMP)
	$(BIN)/pytest

# Record workflow histories for the replay tests (README: Changing the workflow safely). A set that
# exists is never replaced: name a new one with TAG=<date or version>.
.PHONY: histories
histories: $(STAMP)
	$(BIN)/python -m tests.workflows.histories.record $(if $(TAG),--tag $(TAG))

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
	$(BIN)/python -m bench.progress
	$(BIN)/python -m bench.create
	$(BIN)/python -m bench.bulk --rss

clean:
	rm -rf $(VENV) build/venv-* .pytest_cache .mypy_cache .ruff_cache htmlcov .coverage
