#!/usr/bin/env bash
# Generates code for protos/ into generated/ (or, with --check, fails when it is stale):
#   generated/chatd       Python messages and grpc stubs (grpc_tools, mypy-protobuf)
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

if [ "$check" = 1 ]; then
  stale=0
  for pair in "chatd:chatd" "ts:ts/src/gen"; do
    if ! diff -r -x __pycache__ "$work/${pair%%:*}" "$out/${pair#*:}" >/dev/null; then
      diff -r -x __pycache__ "$work/${pair%%:*}" "$out/${pair#*:}" | head -20
      stale=1
    fi
  done
  if [ "$stale" = 1 ]; then
    echo "generated/ is stale: run 'make gen' and commit the result" >&2
    exit 1
  fi
  echo "generated/ is up to date"
else
  rm -rf "$out/chatd" "$out/ts/src/gen"
  mkdir -p "$out/ts/src"
  cp -r "$work/chatd" "$out/chatd"
  cp -r "$work/ts" "$out/ts/src/gen"
  echo "generated $(find "$out/chatd" -name '*.py*' | wc -l) files in $out/chatd" \
    "and $(find "$out/ts/src/gen" -name '*.ts' | wc -l) in $out/ts/src/gen"
fi
