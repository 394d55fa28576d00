#!/usr/bin/env bash
# Build SeaweedFS's `weed` (an S3-compatible object store, Apache-2.0) from the Go module proxy and
# cache it by version outside the repo, as build-prometheus.sh does, so the test bed serves `s3://`
# from a real S3 server. Prints the directory holding `weed` on its last line. SEAWEEDFS_BINARY may
# name a ready binary instead; then nothing is built.
#
# SeaweedFS publishes no semver tags to the proxy, only pseudo-versions of its main branch. Its
# go.mod has a replace directive, which `go install pkg@version` refuses, so the module is
# downloaded and built from its own go.mod and go.sum (the module cache copy is read-only; building
# reads it and writes only the output binary).
set -euo pipefail
source "$(dirname "$0")/lib/go-cache.sh"

SEAWEEDFS_VERSION=${SEAWEEDFS_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}
SEAWEEDFS_MODULE=github.com/seaweedfs/seaweedfs
CACHE_ROOT=${NORIA_CACHE:-$HOME/.cache/noria}

if [ -n "${SEAWEEDFS_BINARY:-}" ] && [ -x "$SEAWEEDFS_BINARY" ]; then
  dirname "$SEAWEEDFS_BINARY"; exit 0
fi

build_seaweedfs() {
  local src
  src=$(GOFLAGS=-mod=mod go mod download -json "$SEAWEEDFS_MODULE@$SEAWEEDFS_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  (cd "$src" && go build -trimpath -tags netgo -ldflags "-s -w" -o "$1/weed" ./weed)
}
go_cached_build "$CACHE_ROOT/seaweedfs/$SEAWEEDFS_VERSION" \
  "seaweedfs weed (module $SEAWEEDFS_VERSION)" build_seaweedfs weed
