#!/usr/bin/env bash
# Runs the push benchmarks (bench/pushbench) and prints a Markdown report on stdout,
# progress on stderr. Arguments go to pushbench, for example -runs 3 or -scenarios lazy.
# Needs skopeo and curl on PATH and the pinned tools in .tools/bin, which
# scripts/install-test-deps builds when one is missing. Peak scratch space is about 6 GiB
# in $TMPDIR (or -work DIR).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

for tool in registry crane regctl bazel-remote; do
  if [ ! -x ".tools/bin/$tool" ]; then
    scripts/install-test-deps
    break
  fi
done

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
# A folder named img/ sits at the repository root, so go build needs -o.
go build -o "$bin/img" ./cmd/img
go build -o "$bin/pushbench" ./bench/pushbench
"$bin/pushbench" -img "$bin/img" -tools .tools/bin "$@"
