#!/usr/bin/env bash
# Generates code for protos/ into generated/ (or, with --check, fails when it is stale):
#   generated/chatd       Python messages and grpc stubs (grpc_tools, mypy-protobuf), and
#                         Connect code (protoc-gen-connectrpc)
#   generated/go/chatd    Go (Debian's protoc-gen-go and protoc-gen-go-grpc, from `make`)
#   generated/ts/src/gen  TypeScript messages and service descriptors (@bufbuild/protoc-gen-es
#                         from generated/ts/node_modules, installed by `make` with npm ci), with
#                         google.rpc status + error_details from googleapis-common-protos
set -euo pipefail
check=0
if [ "${1:-}" = "--check" ]; then check=1; shift; fi
py=$1
out=$2
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin=$(dirname "$py")
"$py" -m grpc_tools.protoc -Iprotos \
  --plugin=protoc-gen-mypy="$bin/protoc-gen-mypy" --plugin=protoc-gen-mypy_grpc="$bin/protoc-gen-mypy_grpc" \
  --plugin=protoc-gen-connectrpc="$bin/protoc-gen-connectrpc" \
  --python_out="$work" --mypy_out="$work" \
  --grpc_python_out="$work" --mypy_grpc_out="$work" \
  --connectrpc_out=protobuf=google:"$work" \
  protos/chatd/v1/*.proto
# Only files that define a service need grpc stubs and Connect code (connectrpc, on the
# google.protobuf messages above: the HTTP listener's ASGI app and the Python Connect client).
for f in "$work"/chatd/v1/*_pb2_grpc.py; do
  grep -q "Stub" "$f" || rm "$f" "${f}i"
done
for f in "$work"/chatd/v1/*_connect.py; do
  grep -q "ASGIApplication" "$f" || rm "$f"
done
touch "$work/chatd/__init__.py" "$work/chatd/v1/__init__.py" "$work/chatd/py.typed"

# Go: the import path comes from each file's go_package; module= strips the module's own path.
go_module=github.com/chatd/chatd/generated/go
for plugin in protoc-gen-go protoc-gen-go-grpc; do
  command -v "$plugin" >/dev/null || {
    echo "$plugin is missing: 'make go-debs' installs Debian's" >&2
    exit 1
  }
done
mkdir -p "$work/go"
"$py" -m grpc_tools.protoc -Iprotos \
  --plugin=protoc-gen-go="$(command -v protoc-gen-go)" \
  --plugin=protoc-gen-go-grpc="$(command -v protoc-gen-go-grpc)" \
  --go_out="$work/go" --go_opt=module="$go_module" \
  --go-grpc_out="$work/go" --go-grpc_opt=module="$go_module" \
  protos/chatd/v1/*.proto

# TypeScript.
es="$out/ts/node_modules/.bin/protoc-gen-es"
if [ ! -x "$es" ]; then
  echo "$es is missing: run 'make' (it runs npm ci in $out/ts)" >&2
  exit 1
fi
# googleapis-common-protos ships the google/rpc .proto files beside its modules.
rpc_include=$("$py" -c 'import google.rpc.status_pb2 as m, pathlib; print(pathlib.Path(m.__file__).parents[2])')
mkdir -p "$work/ts"
"$py" -m grpc_tools.protoc -Iprotos -I"$rpc_include" \
  --plugin=protoc-gen-es="$es" --es_out="$work/ts" --es_opt=target=ts,import_extension=js \
  protos/chatd/v1/*.proto "$rpc_include/google/rpc/status.proto" "$rpc_include/google/rpc/error_details.proto"

# What is generated (in $work) and where it is committed (in $out).
pairs=("chatd:chatd" "go/chatd:go/chatd" "ts:ts/src/gen")
# The Go output depends on the protoc-gen-go release (each Debian release packages another):
# it is compared only with the release the committed files name, else skipped with a note.
committed_go=$(sed -n 's|^// 	protoc-gen-go \(v[0-9.]*\)$|\1|p' "$out/go/chatd/v1/content.pb.go" 2>/dev/null || true)
installed_go=$(protoc-gen-go --version | awk '{print $2}')
if [ "$check" = 1 ] && [ -n "$committed_go" ] && [ "$committed_go" != "$installed_go" ]; then
  echo "note: generated/go was made by protoc-gen-go $committed_go, this machine has $installed_go: its staleness is not checked here" >&2
  pairs=("chatd:chatd" "ts:ts/src/gen")
fi
if [ "$check" = 1 ]; then
  stale=0
  for pair in "${pairs[@]}"; do
    if ! diff -r -x __pycache__ "$work/${pair%%:*}" "$out/${pair#*:}" >/dev/null; then
      diff -r -x __pycache__ "$work/${pair%%:*}" "$out/${pair#*:}" | head -20 || true
      stale=1
    fi
  done
  if [ "$stale" = 1 ]; then
    echo "generated/ is stale: run 'make gen' and commit the result" >&2
    exit 1
  fi
  echo "generated/ is up to date"
else
  for pair in "${pairs[@]}"; do
    rm -rf "${out:?}/${pair#*:}"
    mkdir -p "$(dirname "$out/${pair#*:}")"
    cp -r "$work/${pair%%:*}" "$out/${pair#*:}"
    echo "generated $(find "$out/${pair#*:}" -type f -not -path '*/__pycache__/*' | wc -l) files in $out/${pair#*:}"
  done
fi
