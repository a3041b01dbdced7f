#!/usr/bin/env bash
# Compiles the Go package generated/go (github.com/chatd/chatd/generated/go) and its example
# offline against Debian's Go packages (`make go-debs`): GOPATH mode, with the module linked
# into a temporary GOPATH beside /usr/share/gocode. Writes the example binary to $1.
set -euo pipefail
out=$(realpath -m "$1")
root=$(cd "$(dirname "$0")/.." && pwd)
gopath=$(mktemp -d)
trap 'rm -rf "$gopath"' EXIT
mkdir -p "$gopath/src/github.com/chatd/chatd/generated"
ln -s "$root/generated/go" "$gopath/src/github.com/chatd/chatd/generated/go"
export GO111MODULE=off GOFLAGS= GOPATH="$gopath:/usr/share/gocode"
go vet github.com/chatd/chatd/generated/go/chatd/v1 github.com/chatd/chatd/generated/go/example
go build -o "$out" github.com/chatd/chatd/generated/go/example
