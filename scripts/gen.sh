#!/usr/bin/env bash
# Generates Python code for protos/ into generated/ (or, with --check, fails when it is stale).
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

if [ "$check" = 1 ]; then
  if ! diff -r -x __pycache__ "$work/chatd" "$out/chatd" >/dev/null; then
    diff -r -x __pycache__ "$work/chatd" "$out/chatd" | head -20
    echo "generated/ is stale: run 'make gen' and commit the result" >&2
    exit 1
  fi
  echo "generated/ is up to date"
else
  rm -rf "$out/chatd"
  mkdir -p "$out"
  cp -r "$work/chatd" "$out/chatd"
  echo "generated $(find "$out/chatd" -name '*.py*' | wc -l) files in $out/chatd"
fi
