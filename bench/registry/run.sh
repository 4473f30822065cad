#!/usr/bin/env bash
# Runs the img registry, cas_registry and img bes benchmarks (bench/registry) and prints a
# Markdown report on stdout, progress on stderr. Arguments go to registrybench, for example
# -runs 3, -scenarios push,get or -cas-large-bytes 1073741824. Needs the pinned tools in
# .tools/bin (scripts/install-test-deps builds a missing one) and, with the default sizes,
# about 24 GiB of scratch space in $TMPDIR (or -work DIR).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

for tool in registry crane bazel-remote; do
  if [ ! -x ".tools/bin/$tool" ]; then
    scripts/install-test-deps
    break
  fi
done

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
# A folder named img/ sits at the repository root, so go build needs -o.
go build -o "$bin/img" ./cmd/img
go build -o "$bin/registrybench" ./bench/registry
"$bin/registrybench" -img "$bin/img" -tools .tools/bin "$@"

# The existing Go benchmark of the BES server: replays as fast as the server acknowledges,
# in the test process, with a recording pusher and no remote cache.
echo
echo "### go test -run xxx -bench . ./bes"
echo
echo '```'
go test -run xxx -bench . ./bes 2>&1 | grep -v '^ok\|^PASS'
echo '```'
