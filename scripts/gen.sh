#!/usr/bin/env bash
# Generates code for protos/ into generated/ (or, with --check, fails when it is stale):
# Python stubs in generated/chatd and Go (Debian's protoc-gen-go and protoc-gen-go-grpc, from
# `make go-debs`) in generated/go/chatd.
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
  --python_out="$work" --mypy_out="$work" \
  --grpc_python_out="$work" --mypy_grpc_out="$work" \
  protos/chatd/v1/*.proto
# Only files that define a service need grpc stubs.
for f in "$work"/chatd/v1/*_pb2_grpc.py; do
  grep -q "Stub" "$f" || rm "$f" "${f}i"
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

if [ "$check" = 1 ]; then
  if ! diff -r -x __pycache__ "$work/chatd" "$out/chatd" >/dev/null ||
    ! diff -r "$work/go/chatd" "$out/go/chatd" >/dev/null; then
    diff -r -x __pycache__ "$work/chatd" "$out/chatd" | head -20 || true
    diff -r "$work/go/chatd" "$out/go/chatd" | head -20 || true
    echo "generated/ is stale: run 'make gen' and commit the result" >&2
    exit 1
  fi
  echo "generated/ is up to date"
else
  rm -rf "$out/chatd"
  mkdir -p "$out"
  cp -r "$work/chatd" "$out/chatd"
  echo "generated $(find "$out/chatd" -name '*.py*' | wc -l) files in $out/chatd"
  rm -rf "$out/go/chatd"
  mkdir -p "$out/go"
  cp -r "$work/go/chatd" "$out/go/chatd"
  echo "generated $(find "$out/go/chatd" -name '*.go' | wc -l) files in $out/go/chatd"
fi
