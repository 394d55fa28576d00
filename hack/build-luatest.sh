#!/usr/bin/env bash
# Build the Lua fixture runner (hack/luatest: gopher-lua, the interpreter Argo CD embeds, from the
# Go module proxy) and cache it outside the repo under a hash of its sources, so an edited runner is
# rebuilt and an unchanged one is not. Prints the directory holding `luatest` on its last line.
set -euo pipefail
source "$(dirname "$0")/lib/go-cache.sh"

SRC=$(cd "$(dirname "$0")/luatest" && pwd)
CACHE_ROOT=${NORIA_CACHE:-$HOME/.cache/noria}
HASH=$(cat "$SRC/go.mod" "$SRC/go.sum" "$SRC"/*.go | sha256sum | cut -c1-16)

build_luatest() {
  (cd "$SRC" && GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$1/luatest" .)
}
go_cached_build "$CACHE_ROOT/luatest/$HASH" "luatest $HASH" build_luatest luatest
