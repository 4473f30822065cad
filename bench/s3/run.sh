#!/usr/bin/env bash
# Runs the S3 blob store benchmark (bench/s3) and prints a Markdown report on stdout, progress
# on stderr. Arguments go to s3bench, for example -runs 7 or -size 268435456. Needs minio in
# .tools/bin, which scripts/install-test-deps builds when it is missing. Peak scratch space is
# about 3 times -size (default 1 GiB) in $TMPDIR (or -work DIR).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

if [ ! -x .tools/bin/minio ]; then
  scripts/install-test-deps
fi

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
# A folder named img/ sits at the repository root, so go build needs -o.
go build -o "$bin/img" ./cmd/img
go build -o "$bin/s3bench" ./bench/s3
"$bin/s3bench" -img "$bin/img" -minio .tools/bin/minio "$@"
