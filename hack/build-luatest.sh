#!/usr/bin/env bash
# Build the Lua fixture runner (hack/luatest: gopher-lua, the interpreter Argo CD embeds, from the
# Go module proxy) and cache it outside the repo under a hash of its sources, so an edited runner is
# rebuilt and an unchanged one is not. Prints the directory holding `luatest` on its last line.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/luatest" && pwd)
CACHE_ROOT=${NORIA_CACHE:-$HOME/.cache/noria}
HASH=$(cat "$SRC/go.mod" "$SRC/go.sum" "$SRC"/*.go | sha256sum | cut -c1-16)
OUT="$CACHE_ROOT/luatest/$HASH"

if [ -x "$OUT/luatest" ]; then echo "$OUT"; exit 0; fi

export CGO_ENABLED=0 GOFLAGS=-mod=mod
export GOTOOLCHAIN=auto
start=$(date +%s)
mkdir -p "$OUT"
tmp=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "building luatest $HASH" >&2
(cd "$SRC" && go build -trimpath -ldflags "-s -w" -o "$tmp/luatest" .)
mv "$tmp/luatest" "$OUT/luatest"  # only a complete binary counts as cached
echo "luatest built in $(( $(date +%s) - start ))s" >&2
echo "$OUT"
