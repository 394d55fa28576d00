#!/usr/bin/env bash
# Build the open-loop load generator (benchmarks/loadgen, standard library only) and cache it outside
# the repo under a hash of its sources, so an edited generator is rebuilt and an unchanged one is not.
# Prints the path of the `loadgen` binary on its last line.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
source "$ROOT/hack/lib/go-cache.sh"

SRC="$ROOT/benchmarks/loadgen"
CACHE_ROOT=${NORIA_CACHE:-$HOME/.cache/noria}
HASH=$(cat "$SRC/go.mod" "$SRC"/*.go | sha256sum | cut -c1-16)

build_loadgen() {
  (cd "$SRC" && go build -trimpath -ldflags "-s -w" -o "$1/loadgen" .)
}
echo "$(go_cached_build "$CACHE_ROOT/loadgen/$HASH" "loadgen $HASH" build_loadgen loadgen | tail -n1)/loadgen"
