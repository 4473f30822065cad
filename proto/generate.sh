#!/usr/bin/env bash
# Regenerates the Go code for every .proto file under proto/. The generated files are
# committed, so only someone who changes a .proto file needs protoc (Debian's
# protobuf-compiler). The Go plugins come from the pinned tools module.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/.tools/bin"
mkdir -p "$bin"
(cd "$root/tools" && go build -o "$bin/" google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc)

cd "$root/proto"
mapfile -t files < <(find . -name '*.proto' | sed 's#^\./##' | sort)
if [ "${#files[@]}" -eq 0 ]; then
  echo "no .proto files under $root/proto" >&2
  exit 1
fi
# Imports from Go modules (the REAPI protos and the googleapis protos they import) come from a
# descriptor set built from the Go packages, since the module cache lacks some of their .proto
# files.
imports=$(mktemp)
trap 'rm -f "$imports"' EXIT
(cd "$root" && go run ./proto/blobcache/importset "$imports")

PATH="$bin:$PATH" protoc --proto_path=. --descriptor_set_in="$imports" \
  --go_out=. --go_opt=paths=source_relative \
  --go-grpc_out=. --go-grpc_opt=paths=source_relative \
  "${files[@]}"
